#!/usr/bin/env bash
# Install the MyOsicam Rotator engine on a panel host, reachable by the bot through one
# forced SSH command. Safe to re-run: each step checks first and changes only what differs.
#
#   deploy/setup-panel-host.sh [options] BOT_KEY.pub          (as root)
#   deploy/setup-panel-host.sh --dry-run BOT_KEY.pub          (prints the plan, changes nothing)
#   deploy/setup-panel-host.sh --uninstall [--purge]
#
# What it sets up (and nothing else):
#   * a system user (default `rotator`) with the login shell /bin/sh: sshd runs a forced
#     command through the user's login shell, so /usr/sbin/nologin would refuse every
#     connection ("This account is currently not available.");
#   * the engine in its own virtualenv (default /opt/myosicam-rotator, from this checkout),
#     or an interpreter you already have (--engine-python);
#   * PREFIX/bin/engine-serve, the one program the bot's key may run, which starts
#     `python -I -u -m engine --profile CONFIG_DIR/panel.toml serve`;
#   * BIN_DIR/myosicam-rotator (default /usr/local/bin), the break-glass command: the
#     engine from its virtualenv, `-I`, with CONFIG_DIR/panel.toml (`sudo myosicam-rotator status`);
#   * CONFIG_DIR/panel.toml (from --profile, or deploy/panel-profile.example.toml) if absent;
#   * STATE_DIR (0700 root), the engine's journal;
#   * a sudoers rule letting the user run exactly engine-serve as root (checked with
#     visudo before it is installed);
#   * the bot's key in ~USER/.ssh/authorized_keys:
#       [from="PATTERNS",]command="sudo -n PREFIX/bin/engine-serve",restrict KEY
#     so a stolen bot key can only ask the engine for its listed operations, and with
#     --from only from the bot's address.
#
# What it needs: root, sshd, sudo (+ visudo), python3 with venv. Missing Debian packages are
# installed with apt-get (--no-install: only name them and stop, before any change).
#
# Why root for the engine: it rewrites config/.env (owned by www-data, 0640), restarts
# php-fpm and reads the panel's database credentials from .env. Nothing else needs root.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: setup-panel-host.sh [options] BOT_KEY.pub
       setup-panel-host.sh [options] --uninstall [--purge]

  --panel-root DIR      the panel's install folder (default /var/www/myosicam)
  --from PATTERNS       only accept the bot's key from these addresses, e.g. 203.0.113.7
                        or "10.0.0.0/8,192.0.2.5" (sshd's from= patterns)
  --user NAME           the SSH user the bot logs in as (default rotator)
  --prefix DIR          the engine's virtualenv and wrapper (default /opt/myosicam-rotator)
  --engine-python PATH  use this interpreter (it has the engine installed) instead of
                        making a virtualenv in PREFIX
  --config-dir DIR      where panel.toml lives (default /etc/myosicam-rotator)
  --profile FILE        install FILE as CONFIG_DIR/panel.toml when there is none yet
  --state-dir DIR       the engine's journal folder (default /var/lib/myosicam-rotator)
  --sudoers FILE        the sudoers rule (default /etc/sudoers.d/myosicam-rotator)
  --bin-dir DIR         where the myosicam-rotator command goes (default /usr/local/bin)
  --host-key FILE       this host's public key as sshd presents it, whose fingerprint is
                        printed for the bot host (default /etc/ssh/ssh_host_ed25519_key.pub)
  --uninstall           remove the user (and the bot's key with it), the sudoers rule, the
                        command and the virtualenv; keep panel.toml and the journal folder
                        (runs.jsonl, unfinished rotations' keys) unless --purge
  --purge               with --uninstall: remove those as well
  --no-install          do not apt-get missing packages; name them and stop
  --dry-run             print what would change, change nothing
  -h, --help            this text
USAGE
}

panel_root=/var/www/myosicam
from_patterns=""
user=rotator
prefix=/opt/myosicam-rotator
engine_python=""
config_dir=/etc/myosicam-rotator
profile_src=""
state_dir=/var/lib/myosicam-rotator
sudoers=/etc/sudoers.d/myosicam-rotator
bin_dir=/usr/local/bin
host_key=/etc/ssh/ssh_host_ed25519_key.pub
uninstall=0
purge=0
install_missing=1
dry_run=0
pubkey=""
src=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "setup-panel-host: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --panel-root) need_value "$@"; panel_root=$2; shift 2 ;;
        --from) need_value "$@"; from_patterns=$2; shift 2 ;;
        --user) need_value "$@"; user=$2; shift 2 ;;
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --engine-python) need_value "$@"; engine_python=$2; shift 2 ;;
        --config-dir) need_value "$@"; config_dir=$2; shift 2 ;;
        --profile) need_value "$@"; profile_src=$2; shift 2 ;;
        --state-dir) need_value "$@"; state_dir=$2; shift 2 ;;
        --sudoers) need_value "$@"; sudoers=$2; shift 2 ;;
        --bin-dir) need_value "$@"; bin_dir=$2; shift 2 ;;
        --host-key) need_value "$@"; host_key=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        --no-install) install_missing=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$pubkey" ] || die "one public key file only (got $pubkey and $1)"; pubkey=$1; shift ;;
    esac
done

# --- checks: everything that could stop us, before anything changes ---------------------

for dir_var in prefix config_dir state_dir bin_dir; do
    case "${!dir_var}" in /*) ;; *) die "--${dir_var//_/-} must be an absolute path" ;; esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge goes with --uninstall"
if [ "$uninstall" = 1 ]; then
    [ -z "$pubkey" ] || die "--uninstall takes no key file"
    [ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run first)"
    [[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $user is not a valid user name"
    changes=0
    act() {
        local what=$1; shift; [ "$1" = -- ] && shift
        changes=$((changes + 1))
        if [ "$dry_run" = 1 ]; then echo "would: $what"; else echo "+ $what"; "$@"; fi
    }
    remove() { local path; for path in "$@"; do
        [ -e "$path" ] || [ -L "$path" ] || continue; act "remove $path" -- rm -rf -- "$path"; done; }
    # an unfinished rotation keeps both keys in the journal: never purge that by accident
    if [ "$purge" = 1 ] && compgen -G "$state_dir/*.json" >/dev/null; then
        die "$state_dir holds an unfinished rotation's journal: run \`myosicam-rotator recover\` first; nothing was changed"
    fi
    remove "$sudoers" "$bin_dir/myosicam-rotator"
    if [ -z "$engine_python" ]; then remove "$prefix"; else remove "$prefix/bin/engine-serve"; fi
    if [ "$purge" = 1 ]; then
        remove "$config_dir" "$state_dir"
    else
        for kept in "$config_dir" "$state_dir"; do
            [ -e "$kept" ] && echo "kept: $kept (the profile, the journal and runs.jsonl; --purge removes it)"
        done
    fi
    if getent passwd "$user" >/dev/null; then
        act "user $user, its home and the bot's key in it" -- userdel --remove "$user"
    fi
    if [ "$dry_run" = 1 ]; then echo "dry run: $changes change(s) to make; nothing was changed"; exit 0; fi
    echo "Uninstalled ($changes change(s))."
    exit 0
fi

[ -n "$pubkey" ] || { usage >&2; exit 2; }
[ -r "$pubkey" ] || die "cannot read the bot's public key $pubkey"
key_line=$(grep -v '^[[:space:]]*\(#\|$\)' "$pubkey" | head -n 1 || true)
[ "$(grep -cv '^[[:space:]]*\(#\|$\)' "$pubkey")" = 1 ] || die "$pubkey must hold exactly one public key"
case "$key_line" in
    ssh-ed25519\ *|ssh-rsa\ *|ecdsa-sha2-*\ *|sk-*\ *) ;;
    *) die "$pubkey is not an OpenSSH public key (ssh-ed25519 AAAA…); give the .pub file" ;;
esac
key_type=$(echo "$key_line" | awk '{print $1}')
key_blob=$(echo "$key_line" | awk '{print $2}')
key_comment=$(echo "$key_line" | cut -d' ' -f3-)
[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $user is not a valid user name"
if [ -n "$from_patterns" ]; then
    [[ "$from_patterns" =~ ^[A-Za-z0-9.:/*?!,_-]+$ ]] || die "--from takes sshd patterns such as 203.0.113.7 or 10.0.0.0/8,192.0.2.5"
fi
if [ -e "$prefix/.bot-installed-from" ]; then
    die "$prefix is the bot's virtualenv (setup-bot-host.sh); the engine goes into its own: --prefix /opt/myosicam-rotator"
fi
for dir_var in panel_root prefix config_dir state_dir; do
    case "${!dir_var}" in /*) ;; *) die "--${dir_var//_/-} must be an absolute path" ;; esac
done
[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run first)"
[ -z "$profile_src" ] || [ -r "$profile_src" ] || die "cannot read --profile $profile_src"
[ -z "$engine_python" ] || [ -x "$engine_python" ] || die "--engine-python $engine_python is not executable"
[ -d "$panel_root" ] || echo "note: $panel_root does not exist yet; panel.toml points there"
case "$(basename "$sudoers")" in
    *.*|*~) die "--sudoers $sudoers: sudo skips files in sudoers.d whose name has a dot or ends in ~" ;;
esac
[ "$(dirname "$sudoers")" = /etc/sudoers.d ] \
    || echo "note: $sudoers is outside /etc/sudoers.d; make sure your sudoers includes it"

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sudo >/dev/null 2>&1 && command -v visudo >/dev/null 2>&1 || missing+=(sudo)
if [ -z "$engine_python" ]; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
fi

changes=0
say() { echo "$*"; }
act() {  # act DESCRIPTION -- COMMAND...: run it (or, in a dry run, only say it)
    local what=$1; shift; [ "$1" = -- ] && shift
    changes=$((changes + 1))
    if [ "$dry_run" = 1 ]; then say "would: $what"; else say "+ $what"; "$@"; fi
}

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$install_missing" = 0 ]; then
        die "missing: ${missing[*]} (apt-get install ${missing[*]}); nothing was changed"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing: ${missing[*]}, and no apt-get to install them; nothing was changed"
    act "apt-get install ${missing[*]}" -- sh -c \
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(printf '%q ' "${missing[@]}") >/dev/null"
fi

# install_file MODE OWNER PATH: write stdin to PATH if it differs (atomic rename), else say so
install_file() {
    local mode=$1 owner=$2 path=$3 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path" \
        && [ "$(stat -c '%a %U:%G' "$path")" = "${mode#0} $owner" ]; then
        say "ok: $path"
        rm -f "$tmp"
        return
    fi
    if [ "$dry_run" = 1 ]; then
        changes=$((changes + 1)); say "would: write $path ($mode $owner)"; rm -f "$tmp"; return
    fi
    act "write $path ($mode $owner)" -- install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path.rotator-new"
    mv -f "$path.rotator-new" "$path"
    rm -f "$tmp"
}

ensure_dir() {  # ensure_dir MODE OWNER DIR
    local mode=$1 owner=$2 dir=$3
    if [ -d "$dir" ] && [ "$(stat -c '%a %U:%G' "$dir")" = "${mode#0} $owner" ]; then
        say "ok: $dir/"
    else
        act "folder $dir ($mode $owner)" -- install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$dir"
    fi
}

# --- the user --------------------------------------------------------------------------

if ! getent passwd "$user" >/dev/null; then
    act "user $user (login shell /bin/sh)" -- useradd --system --create-home --shell /bin/sh "$user"
else
    shell=$(getent passwd "$user" | cut -d: -f7)
    if [ "$shell" != /bin/sh ] && [ "$shell" != /bin/bash ]; then
        act "login shell of $user: $shell -> /bin/sh (sshd runs the forced command through it)" -- \
            usermod --shell /bin/sh "$user"
    else
        say "ok: user $user ($shell)"
    fi
fi
# useradd leaves the password field "!" (locked); sshd without PAM then refuses even a key.
# "*" means: no password can ever match, the account is not locked.
if [ "$dry_run" = 0 ] || getent passwd "$user" >/dev/null; then
    if [ "$(getent shadow "$user" 2>/dev/null | cut -d: -f2)" = "!" ]; then
        act "unlock $user for key logins (password field '*': no password works)" -- usermod -p '*' "$user"
    fi
fi

# --- the engine ------------------------------------------------------------------------

if [ -n "$engine_python" ]; then
    python=$engine_python
    say "ok: engine interpreter $python (given)"
else
    python=$prefix/bin/python
    if [ ! -x "$python" ]; then
        act "virtualenv $prefix" -- python3 -m venv "$prefix"
    fi
    # what was installed is remembered by a digest of the source, so a re-run with the same
    # checkout changes nothing and a changed checkout is installed again
    digest=$(cd "$src" && find pyproject.toml engine bot handlers -type f \( -name '*.py' -o -name '*.toml' \
        -o -name '*.php' -o -name '*.sql' \) -not -path '*/__pycache__/*' | LC_ALL=C sort \
        | xargs sha256sum | sha256sum | cut -c1-16)
    stamp=$prefix/.installed-from
    if [ -x "$python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$src $digest" ]; then
        say "ok: engine installed from $src (source $digest, unchanged)"
    else
        act "install the engine from $src into $prefix" -- sh -c \
            '"$1/bin/pip" install -q --upgrade "$2" && echo "$2 $3" > "$1/.installed-from"' sh "$prefix" "$src" "$digest"
    fi
fi
if [ "$dry_run" = 0 ]; then
    "$python" -I -c 'import engine' 2>/dev/null || die "$python cannot import the engine"
fi

ensure_dir 0755 root:root "$prefix/bin"
wrapper=$prefix/bin/engine-serve
install_file 0755 root:root "$wrapper" <<WRAP
#!/bin/sh
# The one program the bot's SSH key may run (setup-panel-host.sh). sshd passes the client's
# requested command in SSH_ORIGINAL_COMMAND; it is never run. -I: no code from the
# current folder, PYTHONPATH or user site is imported as root.
exec $python -I -u -m engine --profile $config_dir/panel.toml serve
WRAP

# the break-glass command on the PATH: what the README, the docs and the engine's own hints say
ensure_dir 0755 root:root "$bin_dir"
install_file 0755 root:root "$bin_dir/myosicam-rotator" <<CMD
#!/bin/sh
# The engine on this panel host (setup-panel-host.sh): its own virtualenv, -I (nothing from
# the current folder, PYTHONPATH or user site), the default profile. A later --profile wins.
exec $python -I -m engine --profile $config_dir/panel.toml "\$@"
CMD

ensure_dir 0700 root:root "$state_dir"
ensure_dir 0755 root:root "$config_dir"
if [ -e "$config_dir/panel.toml" ]; then
    say "ok: $config_dir/panel.toml (kept as it is)"
elif [ -n "$profile_src" ]; then
    install_file 0644 root:root "$config_dir/panel.toml" < "$profile_src"
else
    install_file 0644 root:root "$config_dir/panel.toml" < <(
        sed -e "s|^panel_root = .*|panel_root = \"$panel_root\"|" \
            -e "s|^journal_dir = .*|journal_dir = \"$state_dir\"|" \
            "$src/deploy/panel-profile.example.toml")
fi

# --- sudo: exactly the wrapper, as root ------------------------------------------------

rule="$user ALL=(root) NOPASSWD: $wrapper"
if [ "$dry_run" = 1 ]; then
    if [ -f "$sudoers" ] && [ "$(cat "$sudoers")" = "$rule" ]; then say "ok: $sudoers"; else
        changes=$((changes + 1)); say "would: write $sudoers: $rule"; fi
else
    install -d -m 0755 "$(dirname "$sudoers")"
    check=$(mktemp)
    echo "$rule" > "$check"
    visudo -cqf "$check" >/dev/null || { rm -f "$check"; die "visudo refused the rule: $rule"; }
    rm -f "$check"
    install_file 0440 root:root "$sudoers" <<<"$rule"
fi

# --- the bot's key ---------------------------------------------------------------------

options="command=\"sudo -n $wrapper\",restrict"
[ -z "$from_patterns" ] || options="from=\"$from_patterns\",$options"
entry="$options $key_type $key_blob${key_comment:+ $key_comment}"
if getent passwd "$user" >/dev/null; then
    home=$(getent passwd "$user" | cut -d: -f6)
    group=$(id -gn "$user")
else
    home=/home/$user; group=$user   # dry run before the user exists
fi
ensure_dir 0700 "$user:$group" "$home/.ssh"
keys=$home/.ssh/authorized_keys
install_file 0600 "$user:$group" "$keys" < <(
    # every other key stays; this key's line (any options) is replaced by the current one
    if [ -f "$keys" ]; then grep -vF " $key_type $key_blob" "$keys" | grep -v "^$key_type $key_blob" || true; fi
    echo "$entry"
)

# --- done ------------------------------------------------------------------------------

if [ "$dry_run" = 1 ]; then
    echo "dry run: $changes change(s) to make; nothing was changed"
    exit 0
fi
echo
echo "Done ($changes change(s)). Check it read-only with:"
echo "  sudo myosicam-rotator probe"
if [ -r "$host_key" ]; then
    fingerprint=$(ssh-keygen -lf "$host_key" | awk '{print $2}')
    echo "This host's SSH key: $fingerprint"
    echo "On the bot host (compare the fingerprint out of band if you copy it by hand):"
    echo "  deploy/setup-bot-host.sh --add-panel NAME $(hostname -f 2>/dev/null || hostname) --pin $fingerprint"
else
    echo "note: no $host_key to print the fingerprint of (--host-key FILE names sshd's)"
fi
exit 0
