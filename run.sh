#!/usr/bin/env bash
# The main job on a fresh Debian machine: install, then run the bot.
# With Slack settings present it serves Slack; with none it plays the local demo.
set -euo pipefail
cd "$(dirname "$0")"
# Debian's own python3 refuses pip installs into itself (PEP 668, "externally managed"):
# there the package goes into a virtualenv beside the checkout (.venv), and runs from it.
externally_managed() {
    python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
need_apt=()
# not `php -m | grep -q`: under pipefail php gets EPIPE when grep stops early and exits 255
command -v php >/dev/null 2>&1 && php -r 'exit(extension_loaded("pdo_mysql") ? 0 : 1);' 2>/dev/null \
    || need_apt+=(php-cli php-mysql)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)  # for an externally managed python3
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 100); do
        mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
py=python3
if externally_managed; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    py=.venv/bin/python
fi
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[bot]'
exec "$py" -m bot "$@"
