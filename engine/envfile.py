"""Reading ``config/.env`` and rewriting one value in it, atomically.

The rewrite changes the bytes of exactly one value: comments, order, quoting,
other keys and the trailing newline stay as they were. It goes through a
temporary file in the same folder (fsync, chown/chmod, rename, fsync of the
folder), so a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

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
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EnvFileError(f"{path} does not exist: check panel_root or env_file in the profile") from None
    except PermissionError:
        raise EnvFileError(
            f"{path} is not readable by this user (run the engine as the panel's owner or root)"
        ) from None
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc.strerror}") from exc


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


def replace_key(data: bytes, key_name: str, new_value: str) -> bytes:
    """``data`` with the value of ``key_name`` replaced and nothing else touched."""
    validate_key_hex(new_value)
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


@dataclass(frozen=True)
class Ownership:
    uid: int
    gid: int
    mode: int

    @classmethod
    def resolve(cls, owner: str, group: str, mode: int) -> Ownership:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise EnvFileError(f"env_owner {owner!r} is not a user on this host") from None
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise EnvFileError(f"env_group {group!r} is not a group on this host") from None
        return cls(uid, gid, mode)

    def describe(self) -> str:
        def user(uid: int) -> str:
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)

        def group(gid: int) -> str:
            try:
                return grp.getgrgid(gid).gr_name
            except KeyError:
                return str(gid)

        return f"{user(self.uid)}:{group(self.gid)} {self.mode:04o}"


def check_writable(path: Path, ownership: Ownership) -> None:
    """Preflight: fail before any change if the rewrite could not finish."""
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EnvFileError(f"cannot write to {folder}: the atomic .env rewrite needs a temp file there")
    if os.geteuid() != 0 and (ownership.uid != os.geteuid() or ownership.gid not in os.getgroups()):
        raise EnvFileError(
            f"cannot give .env the owner {ownership.describe()} without root; "
            "run the engine as root or set env_owner/env_group to this user"
        )


def write_atomic(path: Path, data: bytes, ownership: Ownership) -> None:
    """Temp file beside ``path``, fsync, chown+chmod, rename, fsync the folder."""
    folder = path.parent
    tmp = folder / f".{path.name}.rotator-{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            os.fchown(fd, ownership.uid, ownership.gid)
            os.fchmod(fd, ownership.mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EnvFileError(f"could not write {path}: {exc.strerror}; the previous file is unchanged") from exc


def current_ownership(path: Path) -> Ownership:
    st = path.stat()
    return Ownership(st.st_uid, st.st_gid, st.st_mode & 0o777)
