<?php
/*
 * The reference panel's agent side: registration with a single-use install
 * token, and HMAC-signed heartbeats. Included by index.php for every path
 * under /agents/ (after index.php has defined db(), respond(), json_body()
 * and HttpError); it handles the request and its errors itself.
 *
 *   POST /agents/register   {"install_token": T}
 *       T's SHA-256 must be in agent_install_tokens, unused and unexpired. The
 *       token is marked used and the agent gets a fresh agent_token (64 hex),
 *       registered_at and last_seen = now, in one transaction.
 *       200 {"ok":true,"agent_id":N,"agent_token":"..."}; 401 otherwise.
 *
 *   POST /agents/heartbeat  any body; headers
 *       X-Agent-Id   the agent's id
 *       X-Timestamp  unix seconds, within AGENT_MAX_SKEW_S of the panel's clock
 *       X-Nonce      16-64 characters [A-Za-z0-9_-], never seen before for this agent
 *       X-Signature  hex HMAC-SHA256, keyed with the agent_token, of the canonical string
 *                    "POST\n/agents/heartbeat\n<agent id>\n<timestamp>\n<nonce>\n<hex sha256 of body>"
 *       200 {"ok":true} and last_seen = now; 401 {"ok":false,"error":...} for an unknown
 *       agent, a bad signature, an old (or future) timestamp or a replayed nonce.
 *
 * Nonces live in agent_nonces (created here if missing) for twice the allowed
 * skew: a request older than that is refused by its timestamp anyway.
 */

declare(strict_types=1);

const AGENT_MAX_SKEW_S = 300;
const AGENT_HEARTBEAT_PATH = '/agents/heartbeat';

function agents_canonical(string $agentId, string $timestamp, string $nonce, string $body): string
{
    return implode("\n", ['POST', AGENT_HEARTBEAT_PATH, $agentId, $timestamp, $nonce, hash('sha256', $body)]);
}

function agents_register(): void
{
    $token = json_body()['install_token'] ?? null;
    if (!is_string($token) || $token === '') {
        throw new HttpError(400, 'install_token missing');
    }
    $pdo = db();
    $pdo->beginTransaction();
    try {
        $find = $pdo->prepare(
            'SELECT t.id, t.agent_id FROM agent_install_tokens t JOIN agents a ON a.id = t.agent_id'
            . ' WHERE t.token_sha256 = ? AND t.used_at IS NULL AND t.expires_at > UTC_TIMESTAMP(6)'
            . ' FOR UPDATE'
        );
        $find->execute([hash('sha256', $token)]);
        $row = $find->fetch();
        if (!$row) {
            throw new HttpError(401, 'install token unknown, used or expired');
        }
        [$tokenId, $agentId] = $row;
        $agentToken = bin2hex(random_bytes(32));
        $pdo->prepare('UPDATE agent_install_tokens SET used_at = UTC_TIMESTAMP(6) WHERE id = ?')
            ->execute([$tokenId]);
        $pdo->prepare(
            'UPDATE agents SET agent_token = ?, registered_at = UTC_TIMESTAMP(6),'
            . ' last_seen = UTC_TIMESTAMP(6) WHERE id = ?'
        )->execute([$agentToken, $agentId]);
        $pdo->commit();
    } catch (Throwable $e) {
        if ($pdo->inTransaction()) {
            $pdo->rollBack();
        }
        throw $e;
    }
    respond(200, ['ok' => true, 'agent_id' => (int) $agentId, 'agent_token' => $agentToken]);
}

function agents_nonce_table(PDO $pdo): void
{
    $pdo->exec(
        'CREATE TABLE IF NOT EXISTS agent_nonces ('
        . ' agent_id INT NOT NULL, nonce VARCHAR(64) NOT NULL, seen_at DATETIME(6) NOT NULL,'
        . ' PRIMARY KEY (agent_id, nonce), KEY (seen_at)'
        . ') ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin'
    );
}

function agents_heartbeat(): void
{
    $body = (string) file_get_contents('php://input');
    $agentId = (string) ($_SERVER['HTTP_X_AGENT_ID'] ?? '');
    $timestamp = (string) ($_SERVER['HTTP_X_TIMESTAMP'] ?? '');
    $nonce = (string) ($_SERVER['HTTP_X_NONCE'] ?? '');
    $signature = strtolower((string) ($_SERVER['HTTP_X_SIGNATURE'] ?? ''));
    if (preg_match('/^[1-9][0-9]{0,9}$/', $agentId) !== 1) {
        throw new HttpError(401, 'unknown agent');
    }
    if (preg_match('/^[0-9]{1,12}$/', $timestamp) !== 1 || preg_match('/^[A-Za-z0-9_-]{16,64}$/', $nonce) !== 1
        || preg_match('/^[0-9a-f]{64}$/', $signature) !== 1) {
        throw new HttpError(401, 'missing or malformed signature headers');
    }
    $pdo = db();
    $find = $pdo->prepare('SELECT agent_token FROM agents WHERE id = ?');
    $find->execute([(int) $agentId]);
    $token = $find->fetchColumn();
    if ($token === false) {
        throw new HttpError(401, 'unknown agent');
    }
    // Checked before timestamp and nonce, so nobody without the token can fill the nonce table.
    $expected = hash_hmac('sha256', agents_canonical($agentId, $timestamp, $nonce, $body), (string) $token);
    if (!is_string($token) || $token === '' || !hash_equals($expected, $signature)) {
        throw new HttpError(401, 'bad signature');
    }
    if (abs(time() - (int) $timestamp) > AGENT_MAX_SKEW_S) {
        throw new HttpError(401, 'timestamp outside the allowed window');
    }
    agents_nonce_table($pdo);
    $pdo->prepare('DELETE FROM agent_nonces WHERE seen_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND')
        ->execute([2 * AGENT_MAX_SKEW_S]);
    try {
        $pdo->prepare('INSERT INTO agent_nonces (agent_id, nonce, seen_at) VALUES (?, ?, UTC_TIMESTAMP(6))')
            ->execute([(int) $agentId, $nonce]);
    } catch (PDOException $e) {
        if (($e->errorInfo[1] ?? 0) === 1062) {
            throw new HttpError(401, 'nonce already used');
        }
        throw $e;
    }
    $pdo->prepare('UPDATE agents SET last_seen = UTC_TIMESTAMP(6) WHERE id = ?')->execute([(int) $agentId]);
    respond(200, ['ok' => true]);
}

$agentRoutes = [
    'POST /agents/register' => 'agents_register',
    'POST /agents/heartbeat' => 'agents_heartbeat',
];
$agentRoute = ($_SERVER['REQUEST_METHOD'] ?? 'GET') . ' ' . $path;
try {
    if (!isset($agentRoutes[$agentRoute])) {
        throw new HttpError(404, "no route $agentRoute");
    }
    $agentRoutes[$agentRoute]();
} catch (HttpError $e) {
    respond($e->status, ['ok' => false, 'error' => $e->getMessage()]);
} catch (Throwable $e) {
    respond(500, ['ok' => false, 'error' => get_class($e)]);
}
