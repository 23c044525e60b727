"""Reading ``config/.env`` and rewriting one value in it, atomically.

The rewrite changes the bytes of exactly one value: comments, order, quoting,
other keys and the trailing newline stay as they were. It goes through a
temporary file in the same folder (fsync, chown/chmod, rename, fsync of the
folder), so a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from engine import faults
from engine.cipher import validate_key_hex
from engine.errors import EnvFileError

_LINE = re.compile(
    rb"^(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    rb"(?P<eq>[ \t]*=[ \t]*)(?P<rest>.*?)(?P<eol>\r?\n?)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class EnvValue:
    raw: bytes  # the bytes after '=' up to the end of line, excluding the newline
    value: str
    quote: str  # '', '"' or "'"


def _parse_rest(rest: bytes) -> EnvValue:
    text = rest.decode("utf-8", errors="replace")
    stripped = text.rstrip()
    if stripped[:1] in ("'", '"'):
        quote = stripped[0]
        end = stripped.find(quote, 1)
        if end == -1:
            raise EnvFileError("a quoted value in .env has no closing quote")
        return EnvValue(rest, stripped[1:end], quote)
    value = re.split(r"[ \t]+#", stripped, maxsplit=1)[0].strip()
    return EnvValue(rest, value, "")


def parse(data: bytes) -> dict[str, list[EnvValue]]:
    """Every ``NAME=value`` line, in order; comments and blank lines ignored."""
    out: dict[str, list[EnvValue]] = {}
    for line in data.splitlines(keepends=True):
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name = match.group("name").decode()
        out.setdefault(name, []).append(_parse_rest(match.group("rest")))
    return out


def read(path: Path) -> bytes:
    """The bytes of ``.env``; a symlinked ``.env`` or folder is refused."""
    dir_fd = _open_dir(path.parent)
    try:
        _check_env_entry(dir_fd, path, None)
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise EnvFileError(f"{path} does not exist: check panel_root or env_file in the profile") from None
    except PermissionError:
        raise EnvFileError(
            f"{path} is not readable by this user (run the engine as the panel's owner or root)"
        ) from None
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)


def values(path: Path) -> dict[str, str]:
    """Simple name -> value view (last one wins, as PHP dotenv loaders do)."""
    return {name: vals[-1].value for name, vals in parse(read(path)).items()}


def read_key(path: Path, key_name: str) -> str:
    parsed = parse(read(path))
    found = parsed.get(key_name, [])
    if not found:
        raise EnvFileError(f"{path} has no {key_name} line")
    if len(found) > 1:
        raise EnvFileError(f"{path} sets {key_name} {len(found)} times; leave exactly one line")
    return validate_key_hex(found[0].value)


def read_value(path: Path, name: str) -> str:
    """The value of ``name``, which ``.env`` must set exactly once."""
    found = parse(read(path)).get(name, [])
    if len(found) != 1:
        raise EnvFileError(f"{path} must set {name} exactly once (found {len(found)})")
    return found[0].value


def replace_key(data: bytes, key_name: str, new_value: str) -> bytes:
    """``data`` with the value of ``key_name`` replaced and nothing else touched."""
    validate_key_hex(new_value)
    return replace_value(data, key_name, new_value)


def replace_value(data: bytes, key_name: str, new_value: str) -> bytes:
    """``data`` with the value of ``key_name`` replaced by ``new_value`` (which the caller
    made safe for the line's quoting) and nothing else touched."""
    out: list[bytes] = []
    hits = 0
    for line in data.splitlines(keepends=True):
        match = _LINE.match(line) if not line.lstrip().startswith(b"#") else None
        if match and match.group("name").decode() == key_name:
            hits += 1
            parsed = _parse_rest(match.group("rest"))
            old = parsed.value.encode()
            rest = match.group("rest")
            start = rest.find(old) if old else (1 if parsed.quote else 0)
            new_rest = rest[:start] + new_value.encode() + rest[start + len(old) :]
            line = match.group("lead") + match.group("name") + match.group("eq") + new_rest + match.group("eol")
        out.append(line)
    if hits != 1:
        raise EnvFileError(f".env must set {key_name} exactly once (found {hits})")
    return b"".join(out)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class Ownership:
    """What the rewritten ``.env`` gets, and who may own it and its folder.

    ``allowed_uids``: owners of ``.env`` and of its folder the engine accepts
    (root and the profile's ``env_owner``); anything else is refused before a
    change. ``note`` says why the mode or group differs from the file's
    (tightened to the profile's hygiene), for the step line.
    """

    uid: int
    gid: int
    mode: int
    allowed_uids: frozenset[int] = frozenset({0})
    note: str = ""

    @classmethod
    def resolve(cls, owner: str, group: str, mode: int) -> Ownership:
        uid, gid = resolve_ids(owner, group)
        return cls(uid, gid, mode, frozenset({0, uid}))

    def describe(self) -> str:
        text = f"{_name(self.uid)}:{_group_name(self.gid)} {self.mode:04o}"
        return f"{text} ({self.note})" if self.note else text


def resolve_ids(owner: str, group: str) -> tuple[int, int]:
    try:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise EnvFileError(f"env_owner {owner!r} is not a user on this host") from None
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise EnvFileError(f"env_group {group!r} is not a group on this host") from None
    return uid, gid


def kept_ownership(path: Path, owner: str, group: str, hygiene_mode: int) -> Ownership:
    """Keep ``.env``'s owner, group and mode; tighten only a file looser than the hygiene.

    Looser means a permission bit outside ``hygiene_mode`` (default 0640: e.g. a
    world-readable 0644). Such a file gets ``hygiene_mode`` and the group
    ``group``, so the panel's workers still read it through the group.
    """
    allowed_uid, hygiene_gid = resolve_ids(owner, group)
    allowed = frozenset({0, allowed_uid})
    st = inspect(path, allowed)
    mode = st.st_mode & 0o777
    if mode & ~hygiene_mode:
        note = f"tightened from {mode:04o}" + (
            f" and group {_group_name(st.st_gid)}" if st.st_gid != hygiene_gid else ""
        )
        return Ownership(st.st_uid, hygiene_gid, hygiene_mode, allowed, note)
    return Ownership(st.st_uid, st.st_gid, mode, allowed, "kept")


# --- safe access to a folder another user may write -------------------------------------


def _open_dir(folder: Path) -> int:
    """An fd on ``folder`` itself; refused when the folder is a symbolic link."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise EnvFileError(f"{folder} does not exist: check panel_root or env_file in the profile") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and folder.is_symlink():
            raise EnvFileError(
                f"{folder} is a symbolic link; the engine refuses to write through it "
                "(point panel_root or env_file at the real folder)"
            ) from None
        raise EnvFileError(f"cannot open {folder}: {exc.strerror}") from exc


def _check_owner(what: Path, st: os.stat_result, allowed: frozenset[int]) -> None:
    if st.st_uid not in allowed:
        names = " or ".join(sorted(_name(uid) for uid in allowed))
        raise EnvFileError(
            f"{what} is owned by {_name(st.st_uid)}, not {names}; refusing to touch it "
            "(fix its owner, or set env_owner in the profile)"
        )


def _check_env_entry(dir_fd: int, path: Path, allowed: frozenset[int] | None) -> os.stat_result:
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise EnvFileError(f"{path} does not exist: check panel_root or env_file in the profile") from None
    if stat.S_ISLNK(st.st_mode):
        raise EnvFileError(f"{path} is a symbolic link; the engine refuses to read or replace it")
    if not stat.S_ISREG(st.st_mode):
        raise EnvFileError(f"{path} is not a regular file")
    if allowed is not None:
        _check_owner(path, st, allowed)
        if st.st_nlink != 1:
            raise EnvFileError(f"{path} has {st.st_nlink} hard links; the engine refuses to replace it")
    return st


def inspect(path: Path, allowed: frozenset[int]) -> os.stat_result:
    """Refuse a symlinked or foreign-owned ``.env`` or folder; the stat of ``.env``."""
    dir_fd = _open_dir(path.parent)
    try:
        _check_owner(path.parent, os.fstat(dir_fd), allowed)
        return _check_env_entry(dir_fd, path, allowed)
    finally:
        os.close(dir_fd)


def check_writable(path: Path, ownership: Ownership) -> None:
    """Preflight: fail before any change if the rewrite could not finish, or is unsafe."""
    inspect(path, ownership.allowed_uids)
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EnvFileError(f"cannot write to {folder}: the atomic .env rewrite needs a temp file there")
    if os.geteuid() != 0 and (ownership.uid != os.geteuid() or ownership.gid not in os.getgroups()):
        raise EnvFileError(
            f"cannot give .env the owner {ownership.describe()} without root; "
            "run the engine as root or as the owner of .env"
        )


#: The name ``create_exclusive`` gives a temporary file: only the engine makes such names.
TEMP_NAME = re.compile(r"\A\.(?P<stem>.+)\.rotator-[0-9a-f]{16}\.tmp\Z")


def remove_stale_temps(directory: Path, stem: str | None = None) -> list[str]:
    """Remove the engine's own temporary files (``.<stem>.rotator-<hex>.tmp``) from ``directory``,
    as a crash between their write and their rename leaves them: they may hold a key, a password
    or a token. Only call it holding the panel's lock (no run of this engine is writing one).
    ``stem``: only those of this file name (in a folder the engine shares, such as ``.env``'s).
    Returns the names removed; symlinks are unlinked, never followed."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    removed = []
    try:
        for name in os.listdir(dir_fd):
            found = TEMP_NAME.match(name)
            if found is None or (stem is not None and found["stem"] != stem):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
        if removed:
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return removed


def create_exclusive(dir_fd: int, stem: str, mode: int = 0o600) -> tuple[str, int]:
    """A new file under a random name in the folder ``dir_fd``: (name, fd).

    ``O_EXCL|O_NOFOLLOW`` relative to the folder's fd, so nothing another user
    planted (a symlink, a file, a renamed folder) is ever followed or reused.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(16):
        name = f".{stem}.rotator-{secrets.token_hex(8)}.tmp"
        try:
            return name, os.open(name, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_in(dir_fd: int, final_name: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace ``final_name`` in the folder ``dir_fd`` with ``data``, atomically and durably.

    A new file under a random name (``create_exclusive``), written, chowned (when
    ``owner`` is given) and chmodded through its own fd, fsynced, renamed over the old
    one, and the folder fsynced; on any error the temporary file is removed.
    """
    name: str | None = None
    try:
        name, fd = create_exclusive(dir_fd, final_name)
        try:
            write_all(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.checkpoint(f"write:{final_name}")  # a crash here leaves the temporary file
        os.rename(name, final_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        name = None
        os.fsync(dir_fd)
    finally:
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)


def write_atomic(path: Path, data: bytes, ownership: Ownership) -> None:
    """Replace ``path`` with ``data``: new file beside it, fsync, chown+chmod, rename, fsync the folder.

    Every step goes through one fd on the folder, after refusing a symlinked
    or foreign-owned folder or ``.env``, so a folder the panel's user can write
    (``config/`` is often www-data's) cannot redirect the write elsewhere.
    """
    dir_fd = _open_dir(path.parent)
    try:
        _check_owner(path.parent, os.fstat(dir_fd), ownership.allowed_uids)
        _check_env_entry(dir_fd, path, ownership.allowed_uids)
        replace_in(dir_fd, path.name, data, ownership.mode, (ownership.uid, ownership.gid))
    except OSError as exc:
        raise EnvFileError(f"could not write {path}: {exc.strerror}; the previous file is unchanged") from exc
    finally:
        os.close(dir_fd)
