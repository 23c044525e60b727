<?php
/*
 * Reference panel: the smallest PHP panel that behaves like MyOsicam where
 * the rotation is concerned. Router script for `php -S`, or SCRIPT_FILENAME
 * for php-fpm behind nginx (bot/fakes/panel/ctl.py starts either).
 *
 * Like php-fpm workers, it takes its configuration from the environment it
 * was started with (set by the launcher from config/.env): a changed .env
 * only counts after a restart.
 *   PANEL_ENCRYPTION_KEY  64 hex chars
 *   PANEL_CIPHER_SCHEME   e.g. iv12_tag_ct/hex (see ../crypto.php)
 *   DB_HOST DB_PORT DB_DATABASE DB_USERNAME DB_PASSWORD
 *
 * Endpoints (JSON in and out):
 *   GET  /health       200 {"ok":true,"total":N,"decrypted":N,"key_fingerprint":F} when every
 *                      stored value (not NULL, not '') opens; else 500 with ok=false, "failed"
 *                      and "failures": ["table.column#id", ...]. Missing tables are skipped.
 *   GET  /credentials  {"table.column#id": plaintext | null (NULL or '') | false (does not open)}
 *   POST /credentials  {"table","column","id","plaintext"}: a user saving a password; the
 *                      worker encrypts with the key it holds (plaintext null stores NULL).
 *   /agents/...        agent registration and signed heartbeats: see agents.php.
 *   /api/nodes/...     the same, as another panel does it (other tables, UUID tokens,
 *                      its own signature): see nodes.php.
 */

declare(strict_types=1);

require_once __DIR__ . '/../crypto.php';

const PANEL_COLUMNS = [
    ['oscam_installs', 'webif_password'],
    ['saved_servers', 'ssh_credential_encrypted'],
    ['email_settings', 'smtp_password'],
    ['email_settings', 'mailgun_api_key'],
    ['email_configurations', 'smtp_password'],
    ['email_configurations', 'mailgun_api_key'],
];

final class HttpError extends Exception
{
    public function __construct(public int $status, string $message)
    {
        parent::__construct($message);
    }
}

function respond(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    header('Cache-Control: no-store');
    echo json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE);
}

function env_value(string $name, ?string $default = null): ?string
{
    $value = getenv($name);
    return $value === false ? $default : $value;
}

function panel_key(): string
{
    $key = env_value('PANEL_ENCRYPTION_KEY');
    if ($key === null || preg_match('/^[0-9a-fA-F]{64}$/', $key) !== 1) {
        throw new HttpError(500, 'PANEL_ENCRYPTION_KEY is missing or not 64 hex characters');
    }
    return $key;
}

function panel_scheme(): string
{
    return env_value('PANEL_CIPHER_SCHEME', 'iv12_tag_ct/hex');
}

function db(): PDO
{
    static $pdo = null;
    if ($pdo === null) {
        $dsn = sprintf(
            'mysql:host=%s;port=%d;dbname=%s;charset=utf8mb4',
            env_value('DB_HOST', '127.0.0.1'),
            (int) env_value('DB_PORT', '3306'),
            env_value('DB_DATABASE', '')
        );
        try {
            $pdo = new PDO($dsn, env_value('DB_USERNAME', 'root'), env_value('DB_PASSWORD', ''), [
                PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
                PDO::ATTR_DEFAULT_FETCH_MODE => PDO::FETCH_NUM,
            ]);
        } catch (PDOException $e) {
            throw new HttpError(503, 'database unavailable: ' . $e->getMessage());
        }
    }
    return $pdo;
}

/** The configured columns whose table exists, as [table, column] pairs. */
function present_columns(): array
{
    $tables = db()->query(
        'SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()'
    )->fetchAll(PDO::FETCH_COLUMN);
    return array_values(array_filter(PANEL_COLUMNS, fn ($c) => in_array($c[0], $tables, true)));
}

/** Yields ["table.column#id", stored] for every row of every present column. */
function stored_values(): Generator
{
    foreach (present_columns() as [$table, $column]) {
        $rows = db()->query("SELECT id, `$column` FROM `$table` ORDER BY id");
        foreach ($rows as [$id, $stored]) {
            yield ["$table.$column#$id", $stored];
        }
    }
}

function health(): void
{
    $key = panel_key();
    $scheme = panel_scheme();
    $total = 0;
    $failures = [];
    foreach (stored_values() as [$label, $stored]) {
        if ($stored === null || $stored === '') {
            continue;
        }
        $total++;
        if (mr_decrypt($stored, $key, $scheme) === false) {
            $failures[] = $label;
        }
    }
    $body = [
        'ok' => !$failures,
        'total' => $total,
        'decrypted' => $total - count($failures),
        'key_fingerprint' => mr_fingerprint($key),
        'scheme' => $scheme,
    ];
    if ($failures) {
        $body['failed'] = count($failures);
        $body['failures'] = $failures;
    }
    respond($failures ? 500 : 200, $body);
}

function credentials(): void
{
    $key = panel_key();
    $scheme = panel_scheme();
    $out = [];
    foreach (stored_values() as [$label, $stored]) {
        $out[$label] = ($stored === null || $stored === '') ? null : mr_decrypt($stored, $key, $scheme);
    }
    respond(200, $out);
}

function json_body(): array
{
    $body = json_decode((string) file_get_contents('php://input'), true);
    if (!is_array($body)) {
        throw new HttpError(400, 'body must be a JSON object');
    }
    return $body;
}

function save_credential(): void
{
    $body = json_body();
    $pair = [$body['table'] ?? null, $body['column'] ?? null];
    if (!in_array($pair, PANEL_COLUMNS, true)) {
        throw new HttpError(400, 'unknown table/column');
    }
    [$table, $column] = $pair;
    $id = $body['id'] ?? null;
    $plaintext = $body['plaintext'] ?? null;
    if (!is_int($id) || !($plaintext === null || is_string($plaintext))) {
        throw new HttpError(400, 'id must be an integer and plaintext a string or null');
    }
    $key = panel_key();
    $exists = db()->prepare("SELECT COUNT(*) FROM `$table` WHERE id = ?");
    $exists->execute([$id]);
    if ((int) $exists->fetchColumn() === 0) {
        throw new HttpError(404, "no row $table#$id");
    }
    $stored = $plaintext === null ? null : mr_encrypt($plaintext, $key, panel_scheme());
    db()->prepare("UPDATE `$table` SET `$column` = ? WHERE id = ?")->execute([$stored, $id]);
    respond(200, ['ok' => true, 'key_fingerprint' => mr_fingerprint($key)]);
}

$routes = [
    'GET /health' => 'health',
    'GET /credentials' => 'credentials',
    'POST /credentials' => 'save_credential',
];
$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH) ?: '/';
if (str_starts_with($path, '/agents/')) {
    require __DIR__ . '/agents.php'; // agent registration and signed heartbeats
    return;
}
if (str_starts_with($path, '/api/nodes/')) {
    require __DIR__ . '/nodes.php'; // a second agent scheme ("edge nodes"), see ../../schema_nodes.sql
    return;
}
$route = ($_SERVER['REQUEST_METHOD'] ?? 'GET') . ' ' . $path;
try {
    if (!isset($routes[$route])) {
        throw new HttpError(404, "no route $route");
    }
    $routes[$route]();
} catch (HttpError $e) {
    respond($e->status, ['ok' => false, 'error' => $e->getMessage()]);
} catch (Throwable $e) {
    respond(500, ['ok' => false, 'error' => get_class($e) . ': ' . $e->getMessage()]);
}
