#!/bin/bash
# Escrow into 1Password. `op` takes sensitive values from an item JSON template (values
# given as assignment arguments would sit on its command line): the template is built from
# stdin and handed to `op item create --template /dev/stdin`, so the new secret only ever
# travels through pipes. One item per rotation, named by the new key's fingerprint.
#
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/1password.sh"]
#           escrow_label = "1password"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: OP_SERVICE_ACCOUNT_TOKEN=...   (a service account that may write one vault)
#           ESCROW_OP_VAULT=MyOsicam
# Restore:  op item get "myosicam PANEL PANEL_ENCRYPTION_KEY FINGERPRINT" --vault MyOsicam \
#               --fields label=password --reveal
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
fingerprint=${ROTATOR_KEY_FINGERPRINT:-${ROTATOR_PASSWORD_FINGERPRINT:-}}
title="myosicam ${ROTATOR_PANEL:?} $secret $fingerprint"
ESCROW_TITLE=$title python3 -c '
import json, os, sys
value = sys.stdin.read().strip()
print(json.dumps({
    "title": os.environ["ESCROW_TITLE"],
    "category": "PASSWORD",
    "fields": [
        {"id": "password", "type": "CONCEALED", "purpose": "PASSWORD", "label": "password", "value": value},
        {"id": "notesPlain", "type": "STRING", "purpose": "NOTES", "label": "notesPlain",
         "value": "rotation " + os.environ.get("ROTATOR_ROTATION_ID", "")},
    ],
}))' | op item create --vault "${ESCROW_OP_VAULT:?set ESCROW_OP_VAULT in hook_env_file}" \
    --template /dev/stdin >/dev/null
echo "stored in 1password as \"$title\""
