<?php
/*
 * The panel's crypto, done the way a PHP panel does it: openssl_encrypt /
 * openssl_decrypt with 'aes-256-gcm' and OPENSSL_RAW_DATA, in every layout and
 * key reading the engine knows (engine/cipher.py). Tests use it as the
 * independent judge of what the engine writes.
 *
 * Key readings:
 *   hex      hex2bin(PANEL_ENCRYPTION_KEY): 32 bytes.
 *   ascii32  the 64-character string itself handed to openssl; PHP silently
 *            keeps its first 32 characters. We do not truncate it ourselves,
 *            so the test relies on PHP's own behaviour, as the panel would.
 *
 * CLI: `php crypto.php` reads one JSON object on stdin
 *   {"op": "encrypt"|"decrypt", "scheme": "iv12_tag_ct/hex", "key": "<64 hex>",
 *    "values": [...]}
 * encrypt: values are base64 of plaintext bytes or null -> stored strings/null.
 * decrypt: values are stored strings or null -> base64 plaintext, false when the
 *          value does not open, null for null.
 * The key travels on stdin only, never on argv. Errors go to stderr (without
 * the key) with exit status 2.
 */

declare(strict_types=1);

const MR_CIPHER = 'aes-256-gcm';
const MR_TAG_LEN = 16;
const MR_LAYOUTS = ['iv12_tag_ct', 'iv12_ct_tag', 'iv16_tag_ct', 'json_envelope'];
const MR_KEY_READINGS = ['hex', 'ascii32'];

/** [layout, key reading] from "layout/reading" (reading defaults to hex). */
function mr_parse_scheme(string $scheme): array
{
    $parts = explode('/', $scheme, 2);
    $layout = $parts[0];
    $reading = $parts[1] ?? 'hex';
    if (!in_array($layout, MR_LAYOUTS, true) || !in_array($reading, MR_KEY_READINGS, true)) {
        throw new InvalidArgumentException("unknown ciphertext scheme '$scheme'");
    }
    return [$layout, $reading];
}

/** The key material handed to openssl for this key reading. */
function mr_key_for(string $keyHex, string $reading): string
{
    if (preg_match('/^[0-9a-fA-F]{64}$/', $keyHex) !== 1) {
        throw new InvalidArgumentException(
            'key must be 64 hex characters, got ' . strlen($keyHex) . ' characters'
        );
    }
    // ascii32: the string as is; openssl_encrypt truncates it to 32 bytes.
    return $reading === 'hex' ? hex2bin($keyHex) : $keyHex;
}

function mr_encrypt(string $plaintext, string $keyHex, string $scheme): string
{
    [$layout, $reading] = mr_parse_scheme($scheme);
    $key = mr_key_for($keyHex, $reading);
    $iv = random_bytes($layout === 'iv16_tag_ct' ? 16 : 12);
    $tag = '';
    $ct = openssl_encrypt($plaintext, MR_CIPHER, $key, OPENSSL_RAW_DATA, $iv, $tag, '', MR_TAG_LEN);
    if ($ct === false) {
        throw new RuntimeException('openssl_encrypt failed: ' . (openssl_error_string() ?: '?'));
    }
    switch ($layout) {
        case 'iv12_ct_tag':
            return base64_encode($iv . $ct . $tag);
        case 'json_envelope':
            return base64_encode(json_encode(
                ['iv' => base64_encode($iv), 'value' => base64_encode($ct), 'tag' => base64_encode($tag)],
                JSON_UNESCAPED_SLASHES
            ));
        default:
            return base64_encode($iv . $tag . $ct);
    }
}

/** The plaintext, or false when this key and scheme do not open $stored. */
function mr_decrypt(string $stored, string $keyHex, string $scheme): string|false
{
    [$layout, $reading] = mr_parse_scheme($scheme);
    $key = mr_key_for($keyHex, $reading);
    $raw = base64_decode($stored, true);
    if ($raw === false) {
        return false;
    }
    if ($layout === 'json_envelope') {
        $env = json_decode($raw, true);
        if (!is_array($env) || !is_string($env['iv'] ?? null) || !is_string($env['value'] ?? null)
            || !is_string($env['tag'] ?? null)) {
            return false;
        }
        $iv = base64_decode($env['iv'], true);
        $ct = base64_decode($env['value'], true);
        $tag = base64_decode($env['tag'], true);
        if ($iv === false || $ct === false || $tag === false) {
            return false;
        }
    } else {
        $n = $layout === 'iv16_tag_ct' ? 16 : 12;
        if (strlen($raw) < $n + MR_TAG_LEN) {
            return false;
        }
        $iv = substr($raw, 0, $n);
        if ($layout === 'iv12_ct_tag') {
            $ct = substr($raw, $n, -MR_TAG_LEN);
            $tag = substr($raw, -MR_TAG_LEN);
        } else {
            $tag = substr($raw, $n, MR_TAG_LEN);
            $ct = substr($raw, $n + MR_TAG_LEN);
        }
    }
    if (!in_array(strlen($iv), [12, 16], true) || strlen($tag) !== MR_TAG_LEN) {
        return false;
    }
    return openssl_decrypt($ct, MR_CIPHER, $key, OPENSSL_RAW_DATA, $iv, $tag);
}

/** First 16 hex of SHA-256 of the key's hex text, as the engine reports keys. */
function mr_fingerprint(string $keyHex): string
{
    return substr(hash('sha256', $keyHex), 0, 16);
}

function mr_cli_main(): int
{
    $request = json_decode((string) stream_get_contents(STDIN), true);
    if (!is_array($request) || !is_array($request['values'] ?? null)
        || !is_string($request['scheme'] ?? null) || !is_string($request['key'] ?? null)) {
        fwrite(STDERR, "crypto.php: stdin must be one JSON object with op, scheme, key, values\n");
        return 2;
    }
    $op = $request['op'] ?? '';
    $scheme = $request['scheme'];
    $key = $request['key'];
    $out = [];
    try {
        foreach ($request['values'] as $value) {
            if ($value === null) {
                $out[] = null;
            } elseif ($op === 'encrypt') {
                $plain = base64_decode((string) $value, true);
                if ($plain === false) {
                    throw new InvalidArgumentException('encrypt values must be base64 or null');
                }
                $out[] = mr_encrypt($plain, $key, $scheme);
            } elseif ($op === 'decrypt') {
                $plain = mr_decrypt((string) $value, $key, $scheme);
                $out[] = $plain === false ? false : base64_encode($plain);
            } else {
                throw new InvalidArgumentException("op must be encrypt or decrypt");
            }
        }
    } catch (Throwable $e) {
        fwrite(STDERR, 'crypto.php: ' . $e->getMessage() . "\n");
        return 2;
    }
    echo json_encode($out, JSON_UNESCAPED_SLASHES), "\n";
    return 0;
}

if (PHP_SAPI === 'cli' && isset($argv[0]) && realpath($argv[0]) === __FILE__) {
    exit(mr_cli_main());
}
