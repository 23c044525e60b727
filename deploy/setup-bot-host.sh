#!/usr/bin/env bash
# Install the MyOsicam Rotator bot on its host, for deploy/myosicam-rotator-bot.service.
# Safe to re-run: each step checks first and changes only what differs.
#
#   deploy/setup-bot-host.sh [options] [--pin HOST[:PORT][=SHA256:FINGERPRINT] ...]   (as root)
#
# What it sets up:
#   * a system user `rotator-bot` (no login shell: systemd runs the bot as it);
#   * the bot in a virtualenv at /opt/myosicam-rotator (from this checkout), the path the
#     unit's ExecStart uses, or an interpreter you already have (--bot-python);
#   * /var/lib/myosicam-rotator-bot (0700 rotator-bot), the state store's folder;
#   * the bot's SSH key /etc/myosicam-rotator/id_ed25519 (0600 rotator-bot), made once;
#     its public half goes to each panel host's setup-panel-host.sh;
#   * /etc/myosicam-rotator/audit.key (0600 rotator-bot), the key that signs the audit log;
#   * /etc/myosicam-rotator/enrollment.key (0600 rotator-bot), the key that seals approvers'
#     TOTP secrets in the store, used once `step_up = "totp"` is turned on;
#   * /etc/myosicam-rotator/known_hosts: each --pin'ed panel host's key, after you have
#     confirmed its fingerprint (compare with what setup-panel-host.sh printed on that
#     host, or give it as =SHA256:… to have it compared for you);
#   * /etc/myosicam-rotator/bot.env (0640 root:rotator-bot, the Slack secrets) and
#     rotator.toml (the bot's settings), as templates to fill in, if absent;
#   * the systemd unit, when systemd is there (not started: fill in the templates first).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: setup-bot-host.sh [options] [--pin HOST[:PORT][=SHA256:FP] ...]

  --pin HOST[:PORT][=SHA256:FP]  pin a panel host's SSH key in known_hosts (repeatable);
                        without =FP the fingerprint is shown and you are asked to confirm
  --user NAME           the bot's user (default rotator-bot)
  --prefix DIR          the bot's virtualenv (default /opt/myosicam-rotator)
  --bot-python PATH     use this interpreter (it has the bot installed) instead of a virtualenv
  --config-dir DIR      key, known_hosts, bot.env, rotator.toml (default /etc/myosicam-rotator)
  --state-dir DIR       the store's folder (default /var/lib/myosicam-rotator-bot)
  --no-unit             do not install the systemd unit
  --dry-run             print what would change, change nothing
  -h, --help            this text
USAGE
}

user=rotator-bot
prefix=/opt/myosicam-rotator
bot_python=""
config_dir=/etc/myosicam-rotator
state_dir=/var/lib/myosicam-rotator-bot
install_unit=1
dry_run=0
pins=()
src=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "setup-bot-host: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --pin) need_value "$@"; pins+=("$2"); shift 2 ;;
        --user) need_value "$@"; user=$2; shift 2 ;;
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --bot-python) need_value "$@"; bot_python=$2; shift 2 ;;
        --config-dir) need_value "$@"; config_dir=$2; shift 2 ;;
        --state-dir) need_value "$@"; state_dir=$2; shift 2 ;;
        --no-unit) install_unit=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

# --- checks, before anything changes ----------------------------------------------------

[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $user is not a valid user name"
[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run first)"
[ -z "$bot_python" ] || [ -x "$bot_python" ] || die "--bot-python $bot_python is not executable"
for tool in ssh-keygen ssh-keyscan; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: apt-get install openssh-client; nothing was changed"
done
if [ -z "$bot_python" ]; then
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || die "python3 with venv is missing: apt-get install python3-venv; nothing was changed"
fi
for pin in "${pins[@]}"; do
    [[ "$pin" =~ ^[A-Za-z0-9.:_-]+(:[0-9]+)?(=SHA256:[A-Za-z0-9+/]+)?$ ]] \
        || die "--pin $pin: expected HOST[:PORT][=SHA256:FINGERPRINT]"
done

changes=0
act() {  # act DESCRIPTION -- COMMAND...
    local what=$1; shift; [ "$1" = -- ] && shift
    changes=$((changes + 1))
    if [ "$dry_run" = 1 ]; then echo "would: $what"; else echo "+ $what"; "$@"; fi
}
ensure_dir() {  # ensure_dir MODE OWNER DIR
    local mode=$1 owner=$2 dir=$3
    if [ -d "$dir" ] && [ "$(stat -c '%a %U:%G' "$dir")" = "${mode#0} $owner" ]; then
        echo "ok: $dir/"
    else
        act "folder $dir ($mode $owner)" -- install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$dir"
    fi
}
install_template() {  # install_template MODE OWNER PATH < content: only if PATH is absent
    local mode=$1 owner=$2 path=$3 tmp
    if [ -e "$path" ]; then echo "ok: $path (kept as it is)"; cat >/dev/null; return; fi
    tmp=$(mktemp); cat > "$tmp"
    act "template $path ($mode $owner): fill it in" -- \
        install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
}

# --- user, interpreter, folders ----------------------------------------------------------

if getent passwd "$user" >/dev/null; then
    echo "ok: user $user"
else
    act "user $user" -- useradd --system --no-create-home --home-dir "$state_dir" \
        --shell /usr/sbin/nologin "$user"
fi
group=$user
getent passwd "$user" >/dev/null && group=$(id -gn "$user")

if [ -n "$bot_python" ]; then
    python=$bot_python
    echo "ok: bot interpreter $python (given)"
else
    python=$prefix/bin/python
    [ -x "$python" ] || act "virtualenv $prefix" -- python3 -m venv "$prefix"
    act "install the bot from $src into $prefix" -- "$prefix/bin/pip" install -q --upgrade "$src[bot]"
fi

ensure_dir 0755 root:root "$config_dir"
ensure_dir 0700 "$user:$group" "$state_dir"

# --- the bot's SSH key ---------------------------------------------------------------------

key=$config_dir/id_ed25519
if [ -e "$key" ]; then
    echo "ok: $key (kept)"
else
    act "the bot's SSH key $key" -- ssh-keygen -q -t ed25519 -N '' -C "rotator-bot@$(hostname)" -f "$key"
fi
if [ "$dry_run" = 0 ]; then
    chown "$user:$group" "$key" && chmod 0600 "$key"
    chmod 0644 "$key.pub"
fi

# --- keys kept outside the store: the audit key (signs the audit log) and the enrollment
# --- key (seals approvers' TOTP secrets once step_up = "totp" is on) -----------------------

# secret_key WHAT PATH: 32 random bytes as hex, 0600 for the bot's user, made once and kept
secret_key() {
    local what=$1 path=$2
    if [ -e "$path" ]; then
        echo "ok: $path (kept)"
    elif [ "$dry_run" = 1 ]; then
        changes=$((changes + 1)); echo "would: the $what $path"
    else
        act "the $what $path" -- "$python" -I -m bot audit keygen "$path"
    fi
    if [ "$dry_run" = 0 ]; then
        chown "$user:$group" "$path" && chmod 0600 "$path"
    fi
}
audit_key=$config_dir/audit.key
enrollment_key=$config_dir/enrollment.key
secret_key "audit key" "$audit_key"
secret_key "enrollment key" "$enrollment_key"

# --- pin each panel's host key -------------------------------------------------------------

known=$config_dir/known_hosts
[ "$dry_run" = 1 ] || [ -e "$known" ] || install -m 0644 /dev/null "$known"
for pin in "${pins[@]}"; do
    target=${pin%%=*}
    expected=""; [ "$target" = "$pin" ] || expected=${pin#*=}
    host=${target%%:*}; port=22
    [ "$host" = "$target" ] || port=${target#*:}
    name=$host; [ "$port" = 22 ] || name="[$host]:$port"
    scanned=$(ssh-keyscan -T 10 -p "$port" -t ed25519 "$host" 2>/dev/null | grep -v '^#' | head -n 1 || true)
    [ -n "$scanned" ] || die "$host port $port did not answer with an ed25519 host key (is sshd running there?)"
    line="$name $(echo "$scanned" | cut -d' ' -f2,3)"
    fingerprint=$(echo "$line" | ssh-keygen -lf - | awk '{print $2}')
    if [ -e "$known" ] && grep -qxF "$line" "$known"; then
        echo "ok: $name pinned ($fingerprint)"
        continue
    fi
    if [ -e "$known" ] && ssh-keygen -F "$name" -f "$known" >/dev/null; then
        die "$name is pinned with another key; it now shows $fingerprint. If the host key changed on purpose, remove the old line with: ssh-keygen -R '$name' -f $known"
    fi
    echo "$name shows the host key $fingerprint"
    if [ -n "$expected" ]; then
        [ "$fingerprint" = "$expected" ] || die "$name: expected $expected but it shows $fingerprint; not pinned"
    elif [ "$dry_run" = 0 ]; then
        [ -t 0 ] || die "$name: confirm the fingerprint: re-run with --pin '$target=$fingerprint' once you have compared it with the panel host's"
        read -r -p "Is this the fingerprint setup-panel-host.sh printed on $host? [y/N] " answer
        [ "$answer" = y ] || [ "$answer" = yes ] || die "$name: not pinned"
    fi
    act "pin $name ($fingerprint) in $known" -- sh -c 'echo "$1" >> "$2"' sh "$line" "$known"
done

# --- settings templates and the unit -------------------------------------------------------

install_template 0640 "root:$group" "$config_dir/bot.env" <<ENV
# Read by systemd (EnvironmentFile=) for $user. Fill in every value; the bot refuses to
# start with any of them missing, and names it.
SLACK_BOT_TOKEN=
SLACK_SIGNING_SECRET=
# Socket Mode (recommended: no public URL). Leave empty only for HTTP mode.
SLACK_APP_TOKEN=
ROTATOR_CONFIG=$config_dir/rotator.toml
ROTATOR_AUDIT_KEY_FILE=$audit_key
# Read only once step_up = "totp" is on (rotator.toml): it seals approvers' TOTP secrets.
ROTATOR_ENROLLMENT_KEY_FILE=$enrollment_key
ENV

panels=""
for pin in "${pins[@]}"; do
    target=${pin%%=*}; host=${target%%:*}; port=22; [ "$host" = "$target" ] || port=${target#*:}
    panels+="
[panels.\"$host\"]            # rename: the name people type in /rotate-key
host = \"$host\"
port = $port
user = \"rotator\"
key_file = \"$key\"
known_hosts = \"$known\"
"
done
install_template 0644 root:root "$config_dir/rotator.toml" <<TOML
# The bot's settings (bot/settings.py explains each). Fill in channels and approvers.
# channels = ["C0123ROTATE"]
# approvers = ["S0SECOPS"]
approvals_required = 1
expiry_minutes = 30
store = "sqlite://$state_dir/rotator.db"
$panels
TOML

if [ "$install_unit" = 1 ] && [ -d /etc/systemd/system ]; then
    unit=/etc/systemd/system/myosicam-rotator-bot.service
    if [ -e "$unit" ] && cmp -s "$src/deploy/myosicam-rotator-bot.service" "$unit"; then
        echo "ok: $unit"
    else
        act "systemd unit $unit" -- install -m 0644 "$src/deploy/myosicam-rotator-bot.service" "$unit"
    fi
fi

if [ "$dry_run" = 1 ]; then
    echo "dry run: $changes change(s) to make; nothing was changed"
    exit 0
fi
echo
echo "Done ($changes change(s)). The bot's public key, for setup-panel-host.sh on each panel host:"
echo "  $(cat "$key.pub")"
echo "Next: fill in $config_dir/bot.env and $config_dir/rotator.toml, then"
echo "  sudo -u $user env \$(grep -v '^#' $config_dir/bot.env | xargs) $python -m bot doctor"
echo "  systemctl daemon-reload && systemctl enable --now myosicam-rotator-bot"
