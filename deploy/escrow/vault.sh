#!/bin/bash
# Escrow into HashiCorp Vault (KV v2). The new secret arrives on stdin and goes to
# `vault kv put ... value=-`, which reads it from stdin: never on a command line.
#
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/vault.sh"]
#           escrow_label = "vault"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: VAULT_ADDR=https://vault.example.net:8200
#           VAULT_TOKEN=...      (a token whose policy may only write this path)
#           ESCROW_VAULT_MOUNT=secret         (optional, default "secret")
#           ESCROW_VAULT_PREFIX=myosicam      (optional)
# Stored:   MOUNT/PREFIX/PANEL/SECRET  with fields value, fingerprint, rotation
#           (KV v2 keeps earlier versions: an interrupted rotation's old key stays reachable)
# Restore:  vault kv get -mount=secret -field=value myosicam/PANEL/PANEL_ENCRYPTION_KEY
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
fingerprint=${ROTATOR_KEY_FINGERPRINT:-${ROTATOR_PASSWORD_FINGERPRINT:-}}
path="${ESCROW_VAULT_PREFIX:-myosicam}/${ROTATOR_PANEL:?}/$secret"
tr -d '\n' | vault kv put -mount="${ESCROW_VAULT_MOUNT:-secret}" "$path" value=- \
    fingerprint="$fingerprint" rotation="${ROTATOR_ROTATION_ID:?}" >/dev/null
echo "stored in vault at $path"
