#!/usr/bin/env bash
# Install the MyOsicam Rotator engine on a panel host, locked to one forced command.
#
#   sudo deploy/setup-panel-host.sh /path/to/bot_key.pub [/var/www/myosicam]
#
# What it does (and nothing else):
#   * a system user `rotator` that owns nothing of the panel;
#   * the engine in its own virtualenv at /opt/myosicam-rotator (from this checkout);
#   * /etc/myosicam-rotator/panel.toml (from deploy/panel-profile.example.toml, if absent);
#   * /var/lib/myosicam-rotator (0700), the journal;
#   * the bot's public key in ~rotator/.ssh/authorized_keys with
#       command="sudo -n /opt/myosicam-rotator/bin/engine-serve",restrict
#     so a stolen bot key can only ask the engine for its listed operations;
#   * a sudoers rule letting `rotator` run exactly that wrapper as root.
#
# Why root: the engine rewrites config/.env (owned by www-data, 0640), restarts
# php-fpm (systemctl) and reads the panel's database credentials from .env.
# Those three need root or the panel owner; nothing else does. If your php-fpm can be
# restarted by www-data (e.g. a sudo rule of its own), run the wrapper as www-data
# instead and set env_owner/env_group to that user.
set -euo pipefail
pubkey=${1:?usage: setup-panel-host.sh BOT_KEY.pub [PANEL_ROOT]}
panel_root=${2:-/var/www/myosicam}
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/myosicam-rotator

id rotator >/dev/null 2>&1 || useradd --system --create-home --shell /usr/sbin/nologin rotator
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q "$src"

install -d -m 0700 -o root -g root /var/lib/myosicam-rotator
install -d -m 0755 /etc/myosicam-rotator
if [ ! -e /etc/myosicam-rotator/panel.toml ]; then
    sed "s|^panel_root = .*|panel_root = \"$panel_root\"|" "$src/deploy/panel-profile.example.toml" \
        > /etc/myosicam-rotator/panel.toml
    chmod 0644 /etc/myosicam-rotator/panel.toml
fi

cat > "$prefix/bin/engine-serve" <<WRAP
#!/bin/sh
# The one thing the bot's SSH key may run. SSH_ORIGINAL_COMMAND is logged, never run.
exec $prefix/bin/python -u -m engine --profile /etc/myosicam-rotator/panel.toml serve
WRAP
chmod 0755 "$prefix/bin/engine-serve"

echo "rotator ALL=(root) NOPASSWD: $prefix/bin/engine-serve" > /etc/sudoers.d/myosicam-rotator
chmod 0440 /etc/sudoers.d/myosicam-rotator
visudo -cf /etc/sudoers.d/myosicam-rotator >/dev/null

home=$(getent passwd rotator | cut -d: -f6)
install -d -m 0700 -o rotator -g rotator "$home/.ssh"
line="command=\"sudo -n $prefix/bin/engine-serve\",restrict $(cat "$pubkey")"
grep -qxF "$line" "$home/.ssh/authorized_keys" 2>/dev/null || echo "$line" >> "$home/.ssh/authorized_keys"
chown rotator:rotator "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"

echo "Installed. Check it read-only with:"
echo "  sudo $prefix/bin/python -m engine --profile /etc/myosicam-rotator/panel.toml probe"
echo "Pin this host key in the bot's known_hosts:"
for f in /etc/ssh/ssh_host_ed25519_key.pub; do [ -e "$f" ] && echo "  $(hostname -f) $(cut -d' ' -f1,2 "$f")"; done
