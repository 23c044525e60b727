#!/bin/bash
# Escrow into a file encrypted with OpenPGP to a recipient whose private key is kept
# elsewhere. gpg encrypts what it reads on stdin. Copy the folder off the host with your
# backups.
#
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/gpg-file.sh"]
#           escrow_label = "gpg file"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: GNUPGHOME=/etc/myosicam-rotator/gnupg   (holds the recipient's PUBLIC key only)
#           ESCROW_GPG_RECIPIENT=security@example.net
#           ESCROW_DIR=/var/backups/myosicam-escrow
# Stored:   ESCROW_DIR/PANEL-SECRET-FINGERPRINT.gpg
# Restore:  gpg --decrypt ESCROW_DIR/PANEL-PANEL_ENCRYPTION_KEY-FINGERPRINT.gpg
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
fingerprint=${ROTATOR_KEY_FINGERPRINT:-${ROTATOR_PASSWORD_FINGERPRINT:?}}
dir=${ESCROW_DIR:?set ESCROW_DIR in hook_env_file}
out="$dir/${ROTATOR_PANEL:?}-$secret-$fingerprint.gpg"
umask 077
gpg --batch --yes --trust-model always --encrypt \
    --recipient "${ESCROW_GPG_RECIPIENT:?set ESCROW_GPG_RECIPIENT in hook_env_file}" --output "$out.tmp"
mv -f "$out.tmp" "$out"
echo "stored in $out"
