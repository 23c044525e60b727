#!/usr/bin/env bash
# Everything the tests need on a fresh Debian machine, then the whole suite.
# Usage: ./test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"

# Debian's own python3 refuses pip installs into itself (PEP 668, "externally managed"):
# there the package goes into a virtualenv beside the checkout (.venv), and runs from it.
externally_managed() {
    python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
need_apt=()
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)  # with the mariadb client
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)  # setup-bot-host.sh's venv
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v php >/dev/null 2>&1 || need_apt+=(php-cli php-mysql)
# not `php -m | grep -q`: under pipefail php gets EPIPE when grep stops early and exits 255
php -r 'exit(extension_loaded("pdo_mysql") ? 0 : 1);' 2>/dev/null || need_apt+=(php-mysql)
[ -x /usr/sbin/php-fpm8.2 ] || ls /usr/sbin/php-fpm* >/dev/null 2>&1 || need_apt+=(php-fpm)
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)  # the panel-host setup's forced command
# the container smoke test (tests/deploy/test_container.py): podman with runc, a debootstrap base
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v systemctl >/dev/null 2>&1 || need_apt+=(systemd)  # its systemctl, without systemd running
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
    echo "==> starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 100); do
        mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null
fi

py=python3
if externally_managed; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    py=.venv/bin/python
fi
echo "==> pip install -e .[bot,test] ($py)"
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[bot,test]'

echo "==> ruff"
"$py" -m ruff check engine bot handlers tests bench
echo "==> mypy"
"$py" -m mypy engine bot handlers

echo "==> pytest"
"$py" -m pytest -q "$@"
