<?php
/*
 * The reference panel's second agent side ("edge nodes"): another panel's idea of
 * agent enrolment, on the tables of ../../schema_nodes.sql. Included by index.php
 * for every path under /api/nodes/; it handles the request and its errors itself.
 *
 *   POST /api/nodes/enrol   {"code": T}
 *       T's SHA-256 must be in node_enrolments (secret_digest), not consumed and
 *       valid_until in the future. The enrolment is consumed and the node gets a
 *       fresh api_secret, a UUID (version 4), in one transaction. enrolled_at is set;
 *       pinged_at is NOT (this panel only moves it on a ping). With keep_previous = 1
 *       the node's earlier secret stays valid (previous_secret), as some panels do
 *       for a grace period.
 *       200 {"node": N, "secret": "<uuid>"}; 403 {"error": ...} otherwise.
 *
 *   POST /api/nodes/ping    any body; header
 *       Authorization: Node <node id>:<unix seconds>:<hex HMAC-SHA256 of "<unix seconds>.<body>">
 *       keyed with the node's api_secret (or previous_secret when kept).
 *       204 and pinged_at = now; 403 {"error": ...} for an unknown node, a bad MAC
 *       or a timestamp more than NODES_MAX_SKEW_S away.
 */

declare(strict_types=1);

const NODES_MAX_SKEW_S = 300;

function nodes_uuid4(): string
{
    $b = random_bytes(16);
    $b[6] = chr((ord($b[6]) & 0x0f) | 0x40);
    $b[8] = chr((ord($b[8]) & 0x3f) | 0x80);
    return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($b), 4));
}

function nodes_enrol(): void
{
    $code = json_body()['code'] ?? null;
    if (!is_string($code) || $code === '') {
        throw new HttpError(400, 'code missing');
    }
    $pdo = db();
    $pdo->beginTransaction();
    try {
        $find = $pdo->prepare(
            'SELECT e.enrol_id, e.node_ref FROM node_enrolments e JOIN edge_nodes n ON n.node_id = e.node_ref'
            . ' WHERE e.secret_digest = ? AND e.consumed_at IS NULL AND e.valid_until > UTC_TIMESTAMP(6)'
            . ' FOR UPDATE'
        );
        $find->execute([hash('sha256', $code)]);
        $row = $find->fetch();
        if (!$row) {
            throw new HttpError(403, 'enrolment code not valid');
        }
        [$enrolId, $nodeId] = $row;
        $secret = nodes_uuid4();
        $pdo->prepare('UPDATE node_enrolments SET consumed_at = UTC_TIMESTAMP(6) WHERE enrol_id = ?')
            ->execute([$enrolId]);
        $pdo->prepare(
            'UPDATE edge_nodes SET previous_secret = IF(keep_previous = 1, api_secret, NULL), api_secret = ?,'
            . ' enrolled_at = UTC_TIMESTAMP(6) WHERE node_id = ?'
        )->execute([$secret, $nodeId]);
        $pdo->commit();
    } catch (Throwable $e) {
        if ($pdo->inTransaction()) {
            $pdo->rollBack();
        }
        throw $e;
    }
    respond(200, ['node' => (int) $nodeId, 'secret' => $secret]);
}

function nodes_ping(): void
{
    $body = (string) file_get_contents('php://input');
    $auth = (string) ($_SERVER['HTTP_AUTHORIZATION'] ?? '');
    if (preg_match('/^Node ([1-9][0-9]{0,9}):([0-9]{1,12}):([0-9a-f]{64})$/', $auth, $m) !== 1) {
        throw new HttpError(403, 'missing or malformed Authorization');
    }
    [, $nodeId, $timestamp, $mac] = $m;
    $find = db()->prepare('SELECT api_secret, previous_secret FROM edge_nodes WHERE node_id = ?');
    $find->execute([(int) $nodeId]);
    $row = $find->fetch();
    if (!$row) {
        throw new HttpError(403, 'unknown node');
    }
    $good = false;
    foreach ($row as $secret) {
        if (is_string($secret) && $secret !== ''
            && hash_equals(hash_hmac('sha256', $timestamp . '.' . $body, $secret), $mac)) {
            $good = true;
        }
    }
    if (!$good) {
        throw new HttpError(403, 'bad MAC');
    }
    if (abs(time() - (int) $timestamp) > NODES_MAX_SKEW_S) {
        throw new HttpError(403, 'stale timestamp');
    }
    db()->prepare('UPDATE edge_nodes SET pinged_at = UTC_TIMESTAMP(6) WHERE node_id = ?')->execute([(int) $nodeId]);
    http_response_code(204);
}

$nodeRoutes = [
    'POST /api/nodes/enrol' => 'nodes_enrol',
    'POST /api/nodes/ping' => 'nodes_ping',
];
$nodeRoute = ($_SERVER['REQUEST_METHOD'] ?? 'GET') . ' ' . $path;
try {
    if (!isset($nodeRoutes[$nodeRoute])) {
        throw new HttpError(404, "no route $nodeRoute");
    }
    $nodeRoutes[$nodeRoute]();
} catch (HttpError $e) {
    respond($e->status, ['error' => $e->getMessage()]);
} catch (Throwable $e) {
    respond(500, ['error' => get_class($e)]);
}
