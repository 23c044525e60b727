#!/usr/bin/env bash
# Install the MyOsicam Rotator bot on its host, for deploy/myosicam-rotator-bot.service.
# Safe to re-run: each step checks first and changes only what differs.
#
#   deploy/setup-bot-host.sh [options]                                    (as root, first)
#   deploy/setup-bot-host.sh --add-panel NAME HOST[:PORT] --pin SHA256:FP  (after each panel host)
#   deploy/setup-bot-host.sh --uninstall [--purge]
#
# What it sets up (its paths are not the panel host's, so both can share one machine):
#   * a system user `rotator-bot` (no login shell: systemd runs the bot as it);
#   * the bot in a virtualenv at /opt/myosicam-rotator-bot (from this checkout; installed
#     again only when the checkout changed), or an interpreter you already have
#     (--bot-python); never into the engine's virtualenv (refused);
#   * /var/lib/myosicam-rotator-bot (0700 rotator-bot), the state store's folder;
#   * the bot's SSH key /etc/myosicam-rotator-bot/id_ed25519 (0600 rotator-bot), made once;
#     its public half goes to each panel host's setup-panel-host.sh;
#   * audit.key (0600 rotator-bot), the key that signs the audit log, and enrollment.key
#     (0600 rotator-bot), the key that seals approvers' TOTP secrets once step-up is on;
#   * known_hosts: each panel host's key, after you have confirmed its fingerprint (what
#     setup-panel-host.sh printed on that host, given as --pin SHA256:…);
#   * bot.env (0640 root:rotator-bot, the Slack secrets) and rotator.toml (0640
#     root:rotator-bot, the bot's settings) as templates to fill in, if absent; each
#     --add-panel writes its [panels.NAME] entry into rotator.toml;
#   * the systemd unit, generated from the options, when systemd is there (not started:
#     fill in the templates first). A unit you edited is never overwritten: keep local
#     changes in a drop-in (`systemctl edit myosicam-rotator-bot`).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: setup-bot-host.sh [options]
       setup-bot-host.sh [options] --add-panel NAME HOST[:PORT] --pin SHA256:FP
       setup-bot-host.sh [options] --uninstall [--purge]

  --add-panel NAME HOST[:PORT]  pin HOST's SSH key and write [panels."NAME"] into
                        rotator.toml (NAME is what people type in /rotate-key)
  --panel-user NAME     the panel host's SSH user for --add-panel (default rotator)
  --pin SHA256:FP       the fingerprint setup-panel-host.sh printed for --add-panel's host;
                        without it the fingerprint is shown and you are asked to confirm
  --pin HOST[:PORT][=SHA256:FP]  only pin a host's key in known_hosts (repeatable)
  --user NAME           the bot's user (default rotator-bot)
  --prefix DIR          the bot's virtualenv (default /opt/myosicam-rotator-bot)
  --bot-python PATH     use this interpreter (it has the bot installed) instead of a virtualenv
  --config-dir DIR      key, known_hosts, bot.env, rotator.toml (default /etc/myosicam-rotator-bot)
  --state-dir DIR       the store's folder (default /var/lib/myosicam-rotator-bot)
  --unit-dir DIR        where the systemd unit goes (default /etc/systemd/system)
  --no-unit             do not install the systemd unit
  --uninstall           remove the user, the unit and the virtualenv; keep the keys,
                        bot.env, rotator.toml and the store (the audit log) unless --purge
  --purge               with --uninstall: remove those as well
  --dry-run             print what would change, change nothing
  -h, --help            this text
USAGE
}

user=rotator-bot
prefix=/opt/myosicam-rotator-bot
bot_python=""
config_dir=/etc/myosicam-rotator-bot
state_dir=/var/lib/myosicam-rotator-bot
unit_dir=/etc/systemd/system
unit_name=myosicam-rotator-bot.service
install_unit=1
dry_run=0
uninstall=0
purge=0
pins=()
add_name=""
add_target=""
add_fp=""
panel_user=rotator
src=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "setup-bot-host: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --add-panel) [ $# -ge 3 ] && [ -n "$2" ] && [ -n "$3" ] || die "--add-panel needs NAME and HOST[:PORT] (see --help)"
            add_name=$2; add_target=$3; shift 3 ;;
        --panel-user) need_value "$@"; panel_user=$2; shift 2 ;;
        --pin) need_value "$@"
            case "$2" in SHA256:*) add_fp=$2 ;; *) pins+=("$2") ;; esac; shift 2 ;;
        --unit-dir) need_value "$@"; unit_dir=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
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
[[ "$panel_user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--panel-user $panel_user is not a valid user name"
for dir_var in prefix config_dir state_dir unit_dir; do
    case "${!dir_var}" in /*) ;; *) die "--${dir_var//_/-} must be an absolute path" ;; esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge goes with --uninstall"
[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run first)"
if [ -n "$add_fp" ] && [ -z "$add_name" ]; then
    die "--pin $add_fp: a bare fingerprint goes with --add-panel NAME HOST (or give --pin HOST=$add_fp)"
fi
if [ -n "$add_name" ]; then
    [[ "$add_name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--add-panel $add_name: a panel name is letters, digits, . _ -"
    pins+=("$add_target${add_fp:+=$add_fp}")
fi
# The panel host's engine runs as root from its own virtualenv (setup-panel-host.sh marks it
# with bin/engine-serve): the bot's Slack SDK and web server must never be installed there.
if [ -e "$prefix/bin/engine-serve" ] || [ -e "$prefix/.engine-installed-from" ]; then
    die "$prefix is the panel engine's virtualenv (setup-panel-host.sh); the bot goes into its own: --prefix /opt/myosicam-rotator-bot"
fi
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

unit=$unit_dir/$unit_name

# --- uninstall: what the install made, except what holds history or secrets ----------------

if [ "$uninstall" = 1 ]; then
    remove() {  # remove PATH...: each that exists
        local path
        for path in "$@"; do
            [ -e "$path" ] || [ -L "$path" ] || continue
            act "remove $path" -- rm -rf -- "$path"
        done
    }
    if [ -e "$unit" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        act "stop and disable $unit_name" -- systemctl disable --now "$unit_name"
    fi
    remove "$unit" "$unit.d"
    [ -n "$bot_python" ] || remove "$prefix"
    if [ "$purge" = 1 ]; then
        remove "$config_dir" "$state_dir"
    else
        for kept in "$config_dir" "$state_dir"; do
            [ -e "$kept" ] && echo "kept: $kept (keys, settings, the store and its audit log; --purge removes it)"
        done
    fi
    if getent passwd "$user" >/dev/null; then
        act "user $user" -- userdel "$user"
    fi
    if [ "$dry_run" = 1 ]; then echo "dry run: $changes change(s) to make; nothing was changed"; exit 0; fi
    echo "Uninstalled ($changes change(s))."
    exit 0
fi

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
    # what was installed is remembered by a digest of the source: a re-run with the same
    # checkout installs nothing, a changed checkout is installed again
    digest=$(cd "$src" && find pyproject.toml engine bot handlers -type f \( -name '*.py' -o -name '*.toml' \
        -o -name '*.json' -o -name '*.yaml' -o -name '*.php' -o -name '*.sql' \) -not -path '*/__pycache__/*' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
    stamp=$prefix/.bot-installed-from
    if [ -x "$python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$src $digest" ]; then
        echo "ok: bot installed from $src (source $digest, unchanged)"
    else
        act "install the bot from $src into $prefix" -- sh -c \
            '"$1/bin/pip" install -q --upgrade "$2[bot]" && echo "$2 $3" > "$1/.bot-installed-from"' sh "$prefix" "$src" "$digest"
    fi
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
        # keygen's own message speaks of the audit key; this step names the key it makes
        act "the $what $path" -- sh -c '"$1" -I -m bot audit keygen "$2" >/dev/null' sh "$python" "$path"
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

install_template 0640 "root:$group" "$config_dir/rotator.toml" <<TOML
# The bot's settings (bot/settings.py explains each). Fill in channels and approvers:
# docs/operations.md says how to find their ids. Panels: setup-bot-host.sh --add-panel.
# channels = ["C0123ROTATE"]
# approvers = ["S0SECOPS"]
approvals_required = 1
expiry_minutes = 30
store = "sqlite://$state_dir/rotator.db"
TOML
# it may hold the store's password: never readable by other users (the bot refuses it then)
toml=$config_dir/rotator.toml
if [ -e "$toml" ] && [ "$dry_run" = 0 ] && [ "$(stat -c '%a %U:%G' "$toml")" != "640 root:$group" ]; then
    act "$toml: 0640 root:$group (it may hold the store's password)" -- \
        sh -c 'chown "root:$2" "$1" && chmod 0640 "$1"' sh "$toml" "$group"
fi

if [ -n "$add_name" ]; then
    host=${add_target%%:*}; port=22; [ "$host" = "$add_target" ] || port=${add_target#*:}
    entry="[panels.\"$add_name\"]
host = \"$host\"
port = $port
user = \"$panel_user\"
key_file = \"$key\"
known_hosts = \"$known\""
    if [ -e "$toml" ] && grep -qxF "[panels.\"$add_name\"]" "$toml"; then
        current=$(awk -v head="[panels.\"$add_name\"]" '$0 == head {on=1; print; next} /^\[/ {on=0} on && NF' "$toml")
        [ "$current" = "$entry" ] || die "$toml already has [panels.\"$add_name\"], with other values; edit it there, or choose another name"
        echo "ok: panel $add_name in $toml"
    else
        act "panel $add_name ($host port $port, user $panel_user) in $toml" -- \
            sh -c 'printf "\n%s\n" "$2" >> "$1"' sh "$toml" "$entry"
    fi
fi

# --- the systemd unit, from the options --------------------------------------------------

env_file=$config_dir/bot.env
unit_body() {
    cat <<UNIT
[Unit]
Description=MyOsicam Rotator Slack bot
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$user
Group=$group
# SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, SLACK_APP_TOKEN, ROTATOR_CONFIG, ROTATOR_AUDIT_KEY_FILE
EnvironmentFile=$env_file
# \`serve\`: never the demo; a missing setting stops start-up and is named in the journal.
# Socket Mode when SLACK_APP_TOKEN is set; for HTTP mode add (systemctl edit): --http --port 3000
ExecStart=$python -I -m bot serve
Restart=on-failure
RestartSec=5
WorkingDirectory=$state_dir
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=$state_dir
UMask=0077

[Install]
WantedBy=multi-user.target
UNIT
}
if [ "$install_unit" = 1 ] && [ -d "$unit_dir" ]; then
    body=$(unit_body)
    body_sum=$(printf '%s\n' "$body" | sha256sum | cut -c1-16)
    generated="# Generated by deploy/setup-bot-host.sh from its options (body $body_sum).
# Keep local changes in a drop-in: systemctl edit ${unit_name%.service}
# (an edited copy of this file is never overwritten by a re-run).
$body"
    if [ -e "$unit" ] && [ "$(cat "$unit")" = "$generated" ]; then
        echo "ok: $unit"
    elif [ -e "$unit" ] && {
        claimed=$(sed -n '1s/.*(body \([0-9a-f]*\)).*/\1/p' "$unit")
        [ -z "$claimed" ] || [ "$(tail -n +4 "$unit" | sha256sum | cut -c1-16)" != "$claimed" ]
    }; then
        echo "kept: $unit was edited here, so it is not replaced. Move your changes into a drop-in"
        echo "      (systemctl edit ${unit_name%.service}) and remove the file to have it generated again."
    else
        act "systemd unit $unit (runs $python as $user)" -- \
            sh -c 'printf "%s\n" "$2" > "$1.rotator-new" && chmod 0644 "$1.rotator-new" && mv -f "$1.rotator-new" "$1"' \
            sh "$unit" "$generated"
    fi
fi

if [ "$dry_run" = 1 ]; then
    echo "dry run: $changes change(s) to make; nothing was changed"
    exit 0
fi
echo
echo "Done ($changes change(s)). The bot's public key, for setup-panel-host.sh on each panel host:"
echo "  $(cat "$key.pub")"
echo "Next: on each panel host, deploy/setup-panel-host.sh --from THIS_HOST_IP $key.pub;"
echo "then here: deploy/setup-bot-host.sh --add-panel NAME HOST --pin SHA256:… (the fingerprint it printed)."
echo "Fill in $env_file and $toml, then check everything (the file is read by the shell, no value on argv):"
echo "  sudo -u $user sh -c 'set -a; . $env_file; exec $python -I -m bot doctor'"
echo "  systemctl daemon-reload && systemctl enable --now ${unit_name%.service}"
