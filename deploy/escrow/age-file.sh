#!/bin/bash
# Escrow into a file encrypted with age to recipients whose private keys are kept
# elsewhere (offline, or with the security team). age reads the plaintext from stdin.
# Copy the folder off the host with your backups: a key escrowed only beside the panel is
# lost with the panel.
#
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/age-file.sh"]
#           escrow_label = "age file"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: ESCROW_AGE_RECIPIENTS=/etc/myosicam-rotator/escrow-recipients.txt  (age1... lines)
#           ESCROW_DIR=/var/backups/myosicam-escrow
# Stored:   ESCROW_DIR/PANEL-SECRET-FINGERPRINT.age
# Restore:  age -d -i your-identity.txt ESCROW_DIR/PANEL-PANEL_ENCRYPTION_KEY-FINGERPRINT.age
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
fingerprint=${ROTATOR_KEY_FINGERPRINT:-${ROTATOR_PASSWORD_FINGERPRINT:?}}
dir=${ESCROW_DIR:?set ESCROW_DIR in hook_env_file}
out="$dir/${ROTATOR_PANEL:?}-$secret-$fingerprint.age"
umask 077
age -R "${ESCROW_AGE_RECIPIENTS:?set ESCROW_AGE_RECIPIENTS in hook_env_file}" -o "$out.tmp"
mv -f "$out.tmp" "$out"
echo "stored in $out"
