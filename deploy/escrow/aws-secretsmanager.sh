#!/bin/bash
# Escrow into AWS Secrets Manager. The new secret arrives on stdin and reaches
# `aws secretsmanager put-secret-value --secret-string file:///dev/stdin` (the AWS CLI reads
# a parameter from a file:// URL): never on a command line.
#
# Create the secret once:  aws secretsmanager create-secret --name myosicam/prod-eu/PANEL_ENCRYPTION_KEY
# Profile:  escrow_command = ["/opt/myosicam-rotator/escrow/aws-secretsmanager.sh"]
#           escrow_label = "aws secrets manager"
#           hook_env_file = "/etc/myosicam-rotator/hook.env"   # root:root 0600
# hook.env: AWS_REGION=eu-central-1, and AWS_PROFILE (with AWS_CONFIG_FILE and
#           AWS_SHARED_CREDENTIALS_FILE) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
#           of a principal that may only PutSecretValue on that secret;
#           ESCROW_AWS_PREFIX=myosicam (optional)
# Each rotation is a new version (AWSCURRENT; the one before becomes AWSPREVIOUS).
# Restore:  aws secretsmanager get-secret-value --secret-id myosicam/PANEL/PANEL_ENCRYPTION_KEY \
#               --query SecretString --output text
set -euo pipefail
secret=${ROTATOR_SECRET:-PANEL_ENCRYPTION_KEY}
id="${ESCROW_AWS_PREFIX:-myosicam}/${ROTATOR_PANEL:?}/$secret"
tr -d '\n' | aws secretsmanager put-secret-value --secret-id "$id" \
    --client-request-token "${ROTATOR_ROTATION_ID:?}-$secret" \
    --secret-string file:///dev/stdin >/dev/null
echo "stored in aws secrets manager as $id"
