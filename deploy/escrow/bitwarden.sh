#!/bin/bash
# Escrow into Bitwarden. `bw create item` reads the encoded item from stdin when it is not
# given as an argument: the item JSON is built from stdin, encoded by `bw encode` (stdin to
# stdout) and piped on, so the new secret never sits on a command line. One login item per
# rotation, named by the new key's fingerprint.
#
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/bitwarden.sh"]
#           escrow_label = "bitwarden"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: BW_SESSION=...  (from `bw unlock --raw` of an account that may write the folder)
#           BITWARDENCLI_APPDATA_DIR=/var/lib/myosicam-rotator/bw (optional)
#           ESCROW_BW_FOLDER_ID=..., ESCROW_BW_ORGANIZATION_ID=... (optional)
# Restore:  bw get password "myosicam PANEL PANEL_ENCRYPTION_KEY FINGERPRINT"
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
fingerprint=${ROTATOR_KEY_FINGERPRINT:-${ROTATOR_PASSWORD_FINGERPRINT:-}}
name="myosicam ${ROTATOR_PANEL:?} $secret $fingerprint"
ESCROW_NAME=$name python3 -c '
import json, os, sys
value = sys.stdin.read().strip()
print(json.dumps({
    "type": 1,
    "name": os.environ["ESCROW_NAME"],
    "folderId": os.environ.get("ESCROW_BW_FOLDER_ID") or None,
    "organizationId": os.environ.get("ESCROW_BW_ORGANIZATION_ID") or None,
    "notes": "rotation " + os.environ.get("ROTATOR_ROTATION_ID", ""),
    "login": {"username": os.environ.get("ROTATOR_SECRET", "PANEL_ENCRYPTION_KEY"), "password": value},
}))' | bw encode | bw create item >/dev/null
echo "stored in bitwarden as \"$name\""
