"""Which MySQL accounts a database password opens, and by which routes.

An account is ``user@host``, and one login name often has two: ``'u'@'localhost'``
(reached through the Unix socket) and ``'u'@'127.0.0.1'`` or ``'u'@'%'`` (reached over
TCP), with the same password. PHP treats ``DB_HOST=localhost`` as "use the socket";
PyMySQL dials TCP unless told the socket. A rotation that changes only the account
its own connection lands on leaves the twin with the leaked password.

So before any change the engine tries the password on every route a process on
this host could use (the socket, 127.0.0.1, ::1 and the configured host) and asks
each accepting one ``SELECT CURRENT_USER()``. The distinct accounts found are the
ones to rotate; each is changed through a route that lands on it (a login may set
only its own password). A route that refuses the password, or where nothing
listens, is not a way in and needs nothing.

A loopback port is not privileged: where the server listens on 127.0.0.1 only, any
local user may listen on ``[::1]:3306``, and PyMySQL hands a password to whoever asks
for it (``mysql_clear_password``). So a loopback route is tried only when its listener
belongs to the database server's user (``/proc/net/tcp``, compared with the owner of
the server's socket file); another's listener is reported and never sent a password.

Limit: without admin rights nothing shows an account no route from here reaches
(for example ``'u'@'%'`` shadowed by ``'u'@'127.0.0.1'`` but open to other hosts).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.db import ConnectionSettings, PanelDB, is_local
from engine.errors import CredentialsRefusedError, DatabaseError

#: Where Debian, Ubuntu and RHEL put the server's socket. Not /tmp/mysql.sock: any local
#: user could listen there and collect the password the engine tries.
DEFAULT_SOCKETS = (
    "/run/mysqld/mysqld.sock",
    "/var/run/mysqld/mysqld.sock",
    "/var/lib/mysql/mysql.sock",
)
ACCEPTS, REFUSED, UNREACHABLE = "accepts", "refused", "unreachable"
#: Refusals besides 1045: 1130, no account for this client host at all; 1698, the
#: account that matched authenticates another way (unix_socket, seen on a shared server).
REFUSALS = (1130, 1698)


@dataclass(frozen=True)
class Route:
    """One way to reach the server: ``socket`` (``address`` is the path) or ``tcp``."""

    kind: str
    address: str
    port: int = 0

    @property
    def label(self) -> str:
        if self.kind == "socket":
            return f"socket {self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def settings(self, base: ConnectionSettings, password: str) -> ConnectionSettings:
        """``base``'s login over this route, with ``password`` and no database selected
        (a twin account may have no rights on the panel's database)."""
        if self.kind == "socket":
            return dataclasses.replace(base, host="localhost", unix_socket=self.address, password=password, name="")
        return dataclasses.replace(
            base, host=self.address, port=self.port, unix_socket=None, password=password, name=""
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        return cls(kind=str(data["kind"]), address=str(data["address"]), port=int(data.get("port") or 0))


@dataclass(frozen=True)
class Probe:
    """What one password does on one route: ``accepts`` (as ``account``), ``refused`` or
    ``unreachable`` (nothing listens there; ``note`` says why)."""

    route: Route
    outcome: str
    account: str | None = None
    read_only: bool = False
    note: str = ""

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route.label, "outcome": self.outcome}
        if self.account:
            out["account"] = self.account
        if self.note:
            out["note"] = self.note
        return out


def _proc_address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as ``/proc/net/tcp{,6}`` writes it (32-bit words in host order)."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.IPv4Address(words) if len(raw) == 4 else ipaddress.IPv6Address(words)


def listener_uid(host: str, port: int) -> int | None:
    """The uid owning the TCP socket that listens for ``host:port`` on this machine, None
    when nothing does. ``OSError`` when the kernel's tables can't be read."""
    target = ipaddress.ip_address(host)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            for line in list(rows)[1:]:
                fields = line.split()
                if len(fields) < 8 or fields[3] != "0A":  # 0A: LISTEN
                    continue
                addr_hex, _, port_hex = fields[1].partition(":")
                if int(port_hex, 16) != port:
                    continue
                addr = _proc_address(addr_hex)
                mapped = getattr(addr, "ipv4_mapped", None)
                dual_stack = addr.version == 6 and addr.is_unspecified  # "::" takes IPv4 too, unless v6only
                if addr == target or mapped == target or dual_stack or (
                    addr.is_unspecified and addr.version == target.version
                ):
                    return int(fields[7])
    return None


def server_uid(base: ConnectionSettings) -> int | None:
    """The database server's uid: the owner of its socket file (only the server creates
    it, in a directory only it may write), else of the listener the panel is configured
    for; None when neither can be told."""
    for path in (base.unix_socket, *DEFAULT_SOCKETS):
        try:
            info = os.stat(path) if path else None
        except OSError:
            continue
        if info is not None and stat.S_ISSOCK(info.st_mode):
            return info.st_uid
    if _loopback(base.host) and base.host != "localhost":
        try:
            return listener_uid(base.host, base.port)
        except OSError:
            return None
    return None


def _untrusted_listener(route: Route, base: ConnectionSettings) -> str | None:
    """Why ``route`` must not be sent a password (a loopback port held by someone other
    than the database server, or nothing listening), or None to go ahead."""
    if route.kind != "tcp" or not _loopback(route.address) or route.address == "localhost":
        return None
    expected = server_uid(base)
    try:
        owner = listener_uid(route.address, route.port)
    except OSError:
        return None  # no /proc: the connection itself decides
    if owner is None:
        return "nothing listens there"
    if expected is not None and owner != expected:
        return (
            f"not tried: the port is held by uid {owner}, the database server runs as uid {expected} "
            "(another process listening there would be sent the password)"
        )
    return None


def probe(route: Route, base: ConnectionSettings, password: str) -> Probe:
    """Log in over ``route`` with ``password`` and ask which account that is; a loopback
    port held by another user than the server's is reported and never sent it."""
    untrusted = _untrusted_listener(route, base)
    if untrusted is not None:
        return Probe(route, UNREACHABLE, note=untrusted)
    try:
        db = PanelDB(route.settings(base, password))
    except CredentialsRefusedError:
        return Probe(route, REFUSED)
    except DatabaseError as exc:
        if getattr(exc, "mysql_code", None) in REFUSALS:
            return Probe(route, REFUSED)
        return Probe(route, UNREACHABLE, note=exc.message)
    try:
        account, read_only = db.account()
    finally:
        db.close()
    return Probe(route, ACCEPTS, account=account, read_only=read_only)


def server_socket(route: Route, base: ConnectionSettings, password: str) -> str | None:
    """The server's own socket path (``@@socket``), read over ``route``."""
    try:
        db = PanelDB(route.settings(base, password))
    except DatabaseError:
        return None
    try:
        rows = db.query("SELECT @@socket", doing="reading the server's socket path")
    except DatabaseError:
        return None
    finally:
        db.close()
    value = rows[0][0] if rows else None
    return str(value) if value else None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _unique_sockets(paths: Iterable[str | None]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for path in paths:
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        out.append(path)
    return out


@dataclass
class AccountMap:
    """Every route tried with one password, and the route the panel itself uses."""

    panel_route: Route
    probes: list[Probe]

    def on(self, route: Route) -> Probe:
        return next(p for p in self.probes if p.route == route)

    @property
    def panel_account(self) -> str | None:
        return self.on(self.panel_route).account

    def accounts(self) -> dict[str, list[Route]]:
        """Account -> the routes that land on it; the panel's account first."""
        found: dict[str, list[Route]] = {}
        panel = self.on(self.panel_route)
        if panel.outcome == ACCEPTS and panel.account:
            found[panel.account] = [self.panel_route]
        for p in self.probes:
            if p.outcome == ACCEPTS and p.account:
                routes = found.setdefault(p.account, [])
                if p.route not in routes:
                    routes.append(p.route)
        return found

    def describe(self) -> str:
        """``u@localhost (socket …, panel), u@127.0.0.1 (127.0.0.1:3306)``."""
        parts = []
        for account, routes in self.accounts().items():
            labels = [r.label + (", the panel's" if r == self.panel_route else "") for r in routes]
            parts.append(f"{account} ({'; '.join(labels)})")
        return ", ".join(parts)

    def public(self) -> dict[str, Any]:
        return {
            "panel_route": self.panel_route.label,
            "accounts": [
                {"account": a, "routes": [r.label for r in rs]} for a, rs in self.accounts().items()
            ],
            "routes": [p.public() for p in self.probes],
        }


def candidate_routes(base: ConnectionSettings) -> tuple[Route, list[Route]]:
    """(the panel's route, the TCP routes to try). The socket routes are added by
    ``discover`` once a login has told the server's socket path."""
    tcp: list[Route] = []
    host = base.host
    local = is_local(base)
    if local:
        tcp += [Route("tcp", "127.0.0.1", base.port), Route("tcp", "::1", base.port)]
    if host != "localhost" and not any(r.address == host for r in tcp):
        tcp.append(Route("tcp", host, base.port))
    if base.unix_socket:
        panel = Route("socket", base.unix_socket)
    elif host == "localhost":  # PHP's mysqli and PDO: the socket; the path comes later
        panel = Route("socket", "")
    else:
        panel = Route("tcp", host, base.port)
    return panel, tcp


def discover(base: ConnectionSettings, password: str) -> AccountMap:
    """Try ``password`` on every route and name the account each accepting one lands on."""
    panel, tcp = candidate_routes(base)
    probes = [probe(r, base, password) for r in tcp]
    sockets: list[str] = []
    if is_local(base) or _loopback(base.host):
        told = next(
            (s for p in probes if p.outcome == ACCEPTS if (s := server_socket(p.route, base, password))),
            None,
        )
        sockets = _unique_sockets([base.unix_socket, told, *(p for p in DEFAULT_SOCKETS if os.path.exists(p))])
    for path in sockets:
        probes.append(probe(Route("socket", path), base, password))
    if panel.kind == "socket" and not panel.address:
        if not sockets:
            raise DatabaseError(
                "DB_HOST is localhost, so PHP connects through the server's Unix socket, and the engine "
                "found none: set database.unix_socket in the profile to the path PHP uses; nothing was changed"
            )
        panel = Route("socket", sockets[0])
    if not any(p.route == panel for p in probes):
        probes.insert(0, probe(panel, base, password))
    return AccountMap(panel_route=panel, probes=probes)


def reprobe(routes: Iterable[Route], base: ConnectionSettings, password: str) -> list[Probe]:
    return [probe(r, base, password) for r in routes]
