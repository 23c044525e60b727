"""Database password rotation: the panel's own DB login gets a new password.

PREFLIGHT -> STAGED -> DB_CHANGED -> ENV_WRITTEN -> RESTARTED -> VERIFIED
-> BACKED_UP -> DONE, or ROLLING_BACK -> ROLLED_BACK; its own journal
(engine/ops/db_password/journal.py), the panel's one lock.

* preflight: the password in ``.env`` is tried on every route to the server (the Unix
  socket, 127.0.0.1, ::1, the configured host: ``engine/ops/db_password/accounts.py``); it must work
  on the route the panel uses (``DB_HOST=localhost`` is the socket, as for PHP), every
  account it opens must be the panel's user (twins such as ``u@localhost`` and
  ``u@127.0.0.1`` are all rotated), the server is not read-only, ``.env`` is writable,
  the restart target exists. Otherwise a refusal naming the accounts, before any change.
* stage: a new password from ``secrets``, in the journal and escrow before any change.
* change: each account sets its own password through a route that lands on it
  (``PanelDB.set_own_password``): no admin credentials. MariaDB keeps one password
  per account, so from here until the
  restart the panel's new connections are refused: the window is the ``.env``
  write plus the restart.
* write_env: ``DB_PASSWORD`` rewritten atomically, every other byte as it was.
* verify: on every route the old password opened, a fresh login with the password
  read back from ``.env`` lands on the same account; the old password is refused on
  every route; the panel check passes. A route that no longer answers is a failure
  to verify, never a pass.

On a failure the old password is set back through whichever password the server
accepts, ``.env`` is restored and the panel restarted and verified. The engine
reads its own DB login from ``.env``, so after a crash the journal is what says
which passwords to try: ``recover`` finds the one the server accepts and converges
forward (from DB_CHANGED on) or back. Passwords never leave the journal and the
escrow hook's stdin: events, results and errors carry fingerprints only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from engine import __version__, envfile, faults, hooks, restart
from engine.context import Context
from engine.db import ConnectionSettings, PanelDB, resolve_settings
from engine.errors import (
    CredentialsRefusedError,
    DatabaseError,
    EngineError,
    EnvFileError,
    HookError,
    ProfileError,
    RollbackFailedError,
    UnfinishedRotationError,
    VerificationError,
)
from engine.ops.db_password.accounts import ACCEPTS, UNREACHABLE, AccountMap, Route, discover, probe
from engine.ops.db_password.journal import FORWARD_STATES, PasswordJournal, PasswordRecord
from engine.ops.journaled import JournaledRotation, converge, panel_lock, unfinished
from engine.ops.key.verify import panel_check
from engine.profile import engine_command

#: Characters of a new password: safe unquoted or quoted in any dotenv dialect and in SQL.
_ALPHABET = string.ascii_letters + string.digits
_SPECIALS = "-_."
PASSWORD_LENGTH = 32


def new_password() -> str:
    """32 characters from ``secrets``, with an upper- and lower-case letter, a digit and
    one of ``-_.`` (what password-policy plugins such as simple_password_check ask)."""
    chars = [
        secrets.choice(string.ascii_uppercase),
        secrets.choice(string.ascii_lowercase),
        secrets.choice(string.digits),
        secrets.choice(_SPECIALS),
        *(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH - 4)),
    ]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def password_fingerprint(password: str, user: str, host: str) -> str:
    """16 hex characters naming a password. A slow hash (scrypt) salted with the login,
    so a weak password chosen by a person cannot be found from its fingerprint by a
    quick dictionary run, and equal passwords of two logins look different."""
    salt = f"myosicam-rotator db-password {user}@{host}".encode()
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=8)
    return digest.hex()


# -- preflight (also the whole of `plan --db-password`) ------------------------------------


@dataclass
class PasswordPreflight:
    env_bytes: bytes = dataclasses.field(repr=False)
    settings: ConnectionSettings
    password_key: str
    fingerprint: str
    account: str
    routes: AccountMap

    @property
    def password(self) -> str:
        return self.settings.password

    def summary(self, panel: str) -> dict[str, Any]:
        return {
            "panel": panel,
            "db_user": self.settings.user,
            "db_host": self.settings.host,
            "account": self.account,
            **self.routes.public(),
            "env_key": self.password_key,
            "password_fingerprint": self.fingerprint,
            "engine_version": __version__,
        }


def _password_key(ctx: Context) -> str:
    db = ctx.profile.database
    if db.password is not None:
        raise ProfileError(
            "the profile sets database.password, so the panel's password is not the one in .env: "
            "rotate-db-password changes the .env value; remove database.password from the profile"
        )
    key = db.env_keys.get("password", "")
    if not key:
        raise ProfileError("database.env_keys has no password entry: name the .env key (e.g. DB_PASSWORD)")
    return key


def settings_from_env(ctx: Context) -> tuple[bytes, ConnectionSettings, str]:
    """(.env bytes, the login as ``.env`` gives it, the password's key name)."""
    profile = ctx.profile
    key = _password_key(ctx)
    env_bytes = envfile.read(profile.env_path)
    envfile.read_value(profile.env_path, key)  # set exactly once, or a clear refusal
    settings = resolve_settings(profile.database, envfile.values(profile.env_path))
    return env_bytes, settings, key


def rewrite_env(env_bytes: bytes, key: str, password: str) -> bytes:
    """``.env`` with ``key`` set to ``password``; refuses (``EnvFileError``) a line whose
    quoting the rewrite cannot keep: it must read back as ``password`` with every other
    value as it was."""
    new_bytes = envfile.replace_value(env_bytes, key, password)
    before, after = envfile.parse(env_bytes), envfile.parse(new_bytes)
    kept = {n: [v.value for v in vs] for n, vs in before.items() if n != key}
    whole_line = re.compile(
        rb"^[ \t]*(?:export[ \t]+)?" + re.escape(key.encode()) + rb"[ \t]*=[ \t]*(['\"]?)"
        + re.escape(password.encode()) + rb"\1(?:[ \t]+#[^\r\n]*)?[ \t]*\r?\n?$"
    )
    lines = [line for line in new_bytes.splitlines(keepends=True) if password.encode() in line]
    if (
        [v.value for v in after.get(key, [])] != [password]
        or kept != {n: [v.value for v in vs] for n, vs in after.items() if n != key}
        or len(lines) != 1
        or not whole_line.match(lines[0])
    ):
        raise EnvFileError(
            f"the {key} line of .env is written in a way the engine cannot rewrite safely "
            f"(quotes or escapes inside the value): write it as {key}=\"...\" by hand first; nothing was changed"
        )
    return new_bytes


def password_preflight(ctx: Context, *, write_checks: bool) -> PasswordPreflight:
    profile = ctx.profile
    with ctx.step("db_preflight", "checking the panel's database login, .env and the restart target") as out:
        env_bytes, settings, key = settings_from_env(ctx)
        rewrite_env(env_bytes, key, new_password())  # the line can be rewritten, or a refusal now
        if profile.escrow_command and not profile.db_password_escrow_command:
            raise ProfileError(
                "escrow_command is set (for the encryption key) but db_password_escrow_command is not: "
                "set it, so the new database password is escrowed without overwriting the escrowed key "
                "(it gets the password on stdin and ROTATOR_SECRET=DB_PASSWORD); nothing was changed"
            )
        if write_checks:
            envfile.check_writable(profile.env_path, ctx.ownership())
            restart.check_target(profile)
            hooks.team_environment(profile)  # a loose hook_env_file refuses here, not at escrow
        routes = discover(settings, settings.password)
        account = _rotatable(routes, settings.user)
        pre = PasswordPreflight(
            env_bytes=env_bytes,
            settings=settings,
            password_key=key,
            fingerprint=password_fingerprint(settings.password, settings.user, settings.host),
            account=account,
            routes=routes,
        )
        out.detail = (
            f"the password in .env ({pre.fingerprint}) opens {_plural(len(routes.accounts()), 'account')}: "
            f"{routes.describe()}"
        )
        out.data = pre.summary(profile.name)
    return pre


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _rotatable(routes: AccountMap, user: str) -> str:
    """The panel's account, or a refusal (nothing changed yet) naming what the engine
    would not be able to rotate and verify."""
    panel = routes.on(routes.panel_route)
    if panel.outcome != ACCEPTS or panel.account is None:
        why = "refuses" if panel.outcome != UNREACHABLE else f"does not answer ({panel.note}) with"
        raise CredentialsRefusedError(
            f"the route the panel uses, {routes.panel_route.label}, {why} the password in .env; "
            "nothing was changed"
        )
    accounts = routes.accounts()
    foreign = [a for a in accounts if a.rpartition("@")[0] != user]
    if foreign:
        raise DatabaseError(
            f"the password in .env logs {user} in as {', '.join(foreign)} "
            f"({routes.describe()}): a password change would set that account's, not the panel's; "
            "the engine rotates only the panel user's own accounts; nothing was changed"
        )
    read_only = [p.route.label for p in routes.probes if p.outcome == ACCEPTS and p.read_only]
    if read_only:
        raise DatabaseError(
            f"the database server is read-only (seen on {', '.join(read_only)}): the accounts "
            f"{', '.join(accounts)} cannot change their password; nothing was changed"
        )
    return panel.account


# -- helpers shared by the run, the rollback and recover -------------------------------------


def _scrub(text: str, record: PasswordRecord) -> str:
    for secret in (record.new_password, record.old_password):
        if secret:
            text = text.replace(secret, "[password]")
    return text


def _hook(ctx: Context, what: str, argv: list[str], record: PasswordRecord, *, stdin: bytes | None = None,
          timeout_s: float | None = None, team: bool = True) -> str:
    """A hook with the documented environment; what it says is cleared of both passwords."""
    env = {
        "ROTATOR_PANEL": ctx.profile.name,
        "ROTATOR_ROTATION_ID": record.rotation_id,
        "ROTATOR_SECRET": "DB_PASSWORD",
        "ROTATOR_DB_USER": record.db_user,
        "ROTATOR_PASSWORD_FINGERPRINT": record.new_fingerprint,
        "ROTATOR_ENV_FILE": str(ctx.profile.env_path),
    }
    try:
        said = hooks.run_command(
            what, argv, timeout_s=timeout_s or ctx.profile.hook_timeout_s, stdin=stdin, env=env,
            team_env=hooks.team_environment(ctx.profile) if team else None,
        )
    except HookError as exc:
        exc.message = _scrub(exc.message, record)
        exc.args = (exc.message,)
        raise
    return _scrub(said, record)


def _restart(ctx: Context, record: PasswordRecord) -> str:
    command = ctx.profile.restart_command
    said = _hook(ctx, "restart", command, record, timeout_s=ctx.profile.restart_timeout_s, team=False)
    return f"{hooks.describe(command)} ok" + (f" · {said}" if said else "")


def _legacy_route(settings: ConnectionSettings) -> Route:
    """The route an engine before twin-account handling used: PyMySQL's own choice."""
    if settings.unix_socket:
        return Route("socket", settings.unix_socket)
    return Route("tcp", settings.host, settings.port)


def record_accounts(record: PasswordRecord, settings: ConnectionSettings) -> list[tuple[str, Route]]:
    """(account, the route to log in to it) for every account the rotation changes."""
    if record.accounts:
        return [(str(a["account"]), Route.from_json(a["route"])) for a in record.accounts]
    return [(f"{record.db_user}@{record.db_host}", _legacy_route(settings))]


def _record_routes(record: PasswordRecord, settings: ConnectionSettings) -> list[tuple[Route, str, str | None]]:
    """(route, outcome before the change, account it landed on) for every route tried."""
    if record.routes:
        return [
            (Route.from_json(r["route"]), str(r["outcome"]), r.get("account"))
            for r in record.routes
        ]
    return [(route, ACCEPTS, account) for account, route in record_accounts(record, settings)]


def accepted_on(route: Route, settings: ConnectionSettings, record: PasswordRecord) -> str | None:
    """``"new"``, ``"old"`` or ``None``: which of the journal's passwords ``route`` takes
    (unreachable: ``DatabaseError``, since then nothing can be decided)."""
    for name, password in (("new", record.new_password), ("old", record.old_password)):
        seen = probe(route, settings, password)
        if seen.outcome == UNREACHABLE:
            raise DatabaseError(f"{route.label} does not answer ({seen.note}): nothing can be decided there")
        if seen.outcome == ACCEPTS:
            return name
    return None


def _set_password(settings: ConnectionSettings, record: PasswordRecord, *, to: str) -> str:
    """Make every account of the rotation hold the ``to`` ("new"/"old") password, each
    through its own route; returns what was done."""
    target = record.new_password if to == "new" else record.old_password
    other = record.old_password if to == "new" else record.new_password
    done: list[str] = []
    for n, (account, route) in enumerate(record_accounts(record, settings), start=1):
        now = accepted_on(route, settings, record)
        if now == to:
            done.append(f"{account} already takes the {to} password")
            continue
        if now is None:
            raise DatabaseError(
                f"{account} ({route.label}) takes neither the old nor the new password of this rotation; "
                "set its password by hand and put it in .env"
            )
        db = PanelDB(route.settings(settings, other))
        try:
            landed, _ = db.account()
            if landed != account:
                raise DatabaseError(
                    f"{route.label} now logs in as {landed}, not {account}: its password was not changed"
                )
            method = db.set_own_password(target)
        finally:
            db.close()
        record.method = record.method or method
        done.append(f"{account}: {method}, takes the {to} password")
        faults.checkpoint(f"db_account:{to}:{n}")
    return " · ".join(done)


def _env_to(ctx: Context, record: PasswordRecord, key: str, *, to: str, backup: bytes | None) -> bool:
    """Make ``.env`` hold the ``to`` password; True if it was rewritten."""
    path = ctx.profile.env_path
    target = record.new_password if to == "new" else record.old_password
    if envfile.read_value(path, key) == target:
        return False
    if to == "old" and backup is not None and envfile.parse(backup).get(key, [None])[-1] is not None:
        data = backup  # byte for byte the file as it was
    else:
        data = rewrite_env(envfile.read(path), key, target)
    envfile.write_atomic(path, data, ctx.ownership())
    if envfile.read_value(path, key) != target:
        raise VerificationError(f"{ctx.profile.env_display} does not read back with the {to} password")
    return True


def _verify_step(ctx: Context, record: PasswordRecord, key: str) -> str:
    """The ``db_verify`` step: the new password works from ``.env``, the old one is refused;
    returns the panel check's result ("" when none is configured)."""
    with ctx.step("db_verify", "a fresh login with the new password; the old one refused on every route") as out:
        check, facts = _verify(ctx, record, key, expect="new")
        accounts = list(dict.fromkeys(str(r["account"]) for r in facts if r.get("account")))
        refused = [str(r["route"]) for r in facts if r.get("old") == "refused"]
        out.detail = (
            f"new password works from .env for {', '.join(accounts)} · old password refused on "
            f"{', '.join(refused)}" + (f" · panel check {check}" if check else "")
        )
        out.data = {"accounts": accounts, "routes": facts}
    record.proven = facts
    return check


def _backup_step(ctx: Context, record: PasswordRecord) -> None:
    """The ``db_backup`` step: the backup hook, or a skip when none is configured."""
    with ctx.step("db_backup", "running the backup hook") as out:
        if ctx.profile.backup_command:
            _hook(ctx, "backup hook", ctx.profile.backup_command, record)
            out.detail = "backup updated"
        else:
            out.skipped, out.detail = True, "no backup hook configured"


def _verify(ctx: Context, record: PasswordRecord, key: str, *, expect: str) -> tuple[str, list[dict[str, Any]]]:
    """On every route the old password opened before the change, a fresh login with the
    password read back from ``.env`` works and lands on the same account; the other
    password is refused on every route; the panel check passes. Returns (the panel
    check's result, per route what was seen: the account, ``expect`` "works", the other
    "refused" or "unreachable")."""
    target = record.new_password if expect == "new" else record.old_password
    other_name = "old" if expect == "new" else "new"
    other = record.old_password if expect == "new" else record.new_password
    _, settings, _ = settings_from_env(ctx)
    if settings.password != target:
        raise VerificationError(f"{ctx.profile.env_display} does not hold the {expect} password")
    routes = _record_routes(record, settings)
    facts: list[dict[str, Any]] = []
    for route, before, _account in routes:  # first the leak: the other password, on every route
        leak = probe(route, settings, other)
        if leak.outcome == ACCEPTS:
            raise VerificationError(
                f"the {other_name} password still logs in on {route.label} as {leak.account}"
            )
        if leak.outcome == UNREACHABLE and before == ACCEPTS:
            raise VerificationError(
                f"could not verify that the {other_name} password is refused on {route.label}: "
                f"it no longer answers ({leak.note})"
            )
        facts.append({"route": route.label, other_name: leak.outcome})
    for row, (route, before, account) in zip(facts, routes, strict=True):
        if before != ACCEPTS:
            continue
        seen = probe(route, settings, settings.password)
        if seen.outcome == UNREACHABLE:
            raise VerificationError(f"could not verify {account} on {route.label}: it no longer answers ({seen.note})")
        if seen.outcome != ACCEPTS:
            raise VerificationError(
                f"a fresh login with the {expect} password from .env is refused on {route.label} ({account})"
            )
        if seen.account != account:
            raise VerificationError(f"{route.label} now logs in as {seen.account}, not {account}: could not verify")
        row.update(account=account, **{expect: "works"})
    check = panel_check(ctx)
    return (_scrub(check, record) if check else ""), facts


# -- the run ----------------------------------------------------------------------------


class DbPasswordRotation(JournaledRotation[PasswordPreflight, PasswordRecord]):
    """``rotate-db-password``. ``run`` returns (documented for the bot and ``rotate-incident``)::

        rotation_id, state ("DONE", or "PREFLIGHT" on a dry run), panel, db_user, db_host,
        accounts (every account the old password opened, each rotated), panel_route,
        routes (per route: the account, "new": "works", "old": "refused"),
        old_fingerprint, new_fingerprint (absent on a dry run), method ("ALTER USER" or
        "SET PASSWORD"), panel_check, verified, duration_ms, engine_version

    A dry run's ``accounts`` and ``routes`` are the plan's (``AccountMap.public``).

    A failure raises the ``EngineError`` with ``rolled_back=True`` and ``details`` holding
    the same fields with state "ROLLED_BACK" (or ``RollbackFailedError``: run recover).
    """

    def __init__(self, ctx: Context, **options: Any) -> None:
        super().__init__(ctx, PasswordJournal(ctx.profile.journal_dir), **options)
        self.journal: PasswordJournal

    # -- what JournaledRotation.run asks of a password rotation ------------------------
    def preflight(self) -> PasswordPreflight:
        refuse_if_unfinished(self.ctx)
        return password_preflight(self.ctx, write_checks=True)

    def dry_run_result(self, pre: PasswordPreflight) -> dict[str, Any]:
        return {**self._base(pre), **pre.routes.public(), "dry_run": True, "state": "PREFLIGHT"}

    def rotate(self, pre: PasswordPreflight) -> dict[str, Any]:
        return self._rotate(pre)

    def _base(self, pre: PasswordPreflight) -> dict[str, Any]:
        return {
            "rotation_id": self.rotation_id,
            "panel": self.ctx.profile.name,
            "db_user": pre.settings.user,
            "db_host": pre.settings.host,
            "accounts": list(pre.routes.accounts()),
            "panel_route": pre.routes.panel_route.label,
            "old_fingerprint": pre.fingerprint,
            "engine_version": __version__,
        }

    def _rotate(self, pre: PasswordPreflight) -> dict[str, Any]:
        ctx, profile = self.ctx, self.ctx.profile
        with ctx.step("db_stage", "generating and storing the new password") as out:
            password = new_password()
            while password == pre.password:  # pragma: no cover - 190 bits of chance
                password = new_password()
            self.journal.save_env_backup(pre.env_bytes)
            record = PasswordRecord(
                rotation_id=self.rotation_id,
                state="STAGED",
                db_user=pre.settings.user,
                db_host=pre.settings.host,
                old_password=pre.password,
                new_password=password,
                old_fingerprint=pre.fingerprint,
                new_fingerprint=password_fingerprint(password, pre.settings.user, pre.settings.host),
                started_at=time.time(),
                requested_by=self.requested_by,
                approved_by=self.approved_by,
                reason=self.reason,
                accounts=[
                    {"account": a, "route": rs[0].to_json(), "routes": [r.to_json() for r in rs]}
                    for a, rs in pre.routes.accounts().items()
                ],
                routes=[
                    {"route": p.route.to_json(), "outcome": p.outcome, "account": p.account}
                    for p in pre.routes.probes
                ],
                panel_route=pre.routes.panel_route.to_json(),
            )
            self.journal.save(record)  # every account, before any of them changes
            self.record = record
            escrow = 'no escrow (escrow = "none" in the profile)'
            if profile.db_password_escrow_command:
                _hook(ctx, "escrow", profile.db_password_escrow_command, record, stdin=(password + "\n").encode())
                escrow = f"escrowed ({profile.escrow_label})"
            out.detail = f"fingerprint {record.new_fingerprint} · {escrow} · journal written"
            out.data = {"new_fingerprint": record.new_fingerprint}
        faults.checkpoint("state:STAGED")

        accounts = list(pre.routes.accounts())
        with ctx.step("db_change", f"{', '.join(accounts)}: each sets its own new password") as out:
            out.detail = _set_password(pre.settings, record, to="new") + " · through their own logins"
            out.data = {"accounts": accounts}
        self.advance("DB_CHANGED")

        with ctx.step("db_write_env", f"writing {pre.password_key} in {profile.env_path.name}") as out:
            ownership = ctx.ownership()
            new_bytes = rewrite_env(pre.env_bytes, pre.password_key, password)
            envfile.write_atomic(profile.env_path, new_bytes, ownership)
            if envfile.read_value(profile.env_path, pre.password_key) != password:
                raise VerificationError(".env does not read back with the new password")
            out.detail = f"{profile.env_display} updated atomically · {ownership.describe()} · previous kept until done"
        self.advance("ENV_WRITTEN")

        with ctx.step("db_restart", "restarting the panel") as out:
            self.restart_attempted = True
            out.detail = _restart(ctx, record)
            record.restarted = True
        self.advance("RESTARTED")

        check = _verify_step(ctx, record, pre.password_key)
        self.advance("VERIFIED")

        _backup_step(ctx, record)
        self.advance("BACKED_UP")

        record.state = "DONE"
        self.journal.save(record)
        self.journal.finish(record)
        return {
            **self._base(pre),
            "state": "DONE",
            "verified": True,
            "routes": record.proven,
            "new_fingerprint": record.new_fingerprint,
            "method": record.method,
            "panel_check": check or None,
            "duration_ms": self.watch.ms,
        }

    def fail(self, pre: PasswordPreflight, failure: EngineError) -> NoReturn:
        assert self.record is not None
        outcome = roll_back(
            self.ctx, self.record, pre.password_key, restart_needed=self.restart_attempted,
            cause=failure.message,
        )
        failure.message = _scrub(failure.message, self.record)
        failure.rolled_back = True
        failure.details = {
            **self._base(pre),
            "state": "ROLLED_BACK",
            "new_fingerprint": self.record.new_fingerprint,
            "verified_old": True,
            "panel_check": outcome.get("panel_check"),
            "duration_ms": self.watch.ms,
        }
        raise failure


def refuse_if_unfinished(ctx: Context) -> None:
    """Neither rotation starts while either is unfinished: each reads the DB login from .env."""
    for record in (ctx.journal.load(), PasswordJournal(ctx.profile.journal_dir).load()):
        if record is not None:
            raise UnfinishedRotationError(
                f"rotation {record.rotation_id} ({record.op}) stopped at {record.state} and is "
                f"unfinished: run `{engine_command(ctx.profile, 'recover')}` first"
            )


# -- rolling back and recovering -------------------------------------------------------------


def roll_back(
    ctx: Context, record: PasswordRecord, key: str, *, restart_needed: bool, cause: str
) -> dict[str, Any]:
    """The old password on the server and in ``.env``, the panel restarted, all verified."""
    journal = PasswordJournal(ctx.profile.journal_dir)
    record.state = "ROLLING_BACK"
    journal.save(record)
    check = ""
    try:
        with ctx.step("db_rollback", f"rolling back to the old password ({_scrub(cause, record)})") as out:
            _, settings, _ = settings_from_env(ctx)
            parts = [_set_password(settings, record, to="old")]
            if _env_to(ctx, record, key, to="old", backup=journal.read_env_backup()):
                parts.append(".env restored")
            if restart_needed:
                parts.append(_restart(ctx, record))
            out.detail = " · ".join(parts)
        verifying = "a fresh login with the old password; the new one refused on every route"
        with ctx.step("db_verify_old", verifying) as out:
            check, _ = _verify(ctx, record, key, expect="old")
            out.detail = "old password works from .env · new password refused on every route" + (
                f" · panel check {check}" if check else ""
            )
    except EngineError as exc:
        raise RollbackFailedError(
            f"rollback failed: {_scrub(exc.message, record)}. Run "
            f"`{engine_command(ctx.profile, 'recover')}`",
            rolled_back=False,
        ) from None
    record.state = "ROLLED_BACK"
    journal.save(record)
    journal.finish(record)
    return {"verified": True, "panel_check": check or None}


def roll_forward(ctx: Context, record: PasswordRecord, key: str) -> dict[str, Any]:
    """Finish a rotation whose new password already reached the server."""
    journal = PasswordJournal(ctx.profile.journal_dir)
    with ctx.step("db_change", "making every account take the new password") as out:
        _, settings, _ = settings_from_env(ctx)
        out.detail = _set_password(settings, record, to="new")
    with ctx.step("db_write_env", "making .env hold the new password") as out:
        changed = _env_to(ctx, record, key, to="new", backup=None)
        out.detail = ".env updated" if changed else ".env already holds the new password"
    record.state = "ENV_WRITTEN"
    journal.save(record)
    with ctx.step("db_restart", "restarting the panel") as out:
        out.detail = _restart(ctx, record)
    record.state, record.restarted = "RESTARTED", True
    journal.save(record)
    check = _verify_step(ctx, record, key)
    record.state = "VERIFIED"
    journal.save(record)
    _backup_step(ctx, record)
    record.state = "DONE"
    journal.save(record)
    journal.finish(record)
    return {"verified": True, "panel_check": check or None, "routes": record.proven}


def has_unfinished(ctx: Context) -> bool:
    return PasswordJournal(ctx.profile.journal_dir).current.exists()


def recover_password(ctx: Context, *, rollback: bool) -> dict[str, Any]:
    """Converge an unfinished database password rotation (under the panel's lock)."""
    journal = PasswordJournal(ctx.profile.journal_dir)
    with panel_lock(ctx):
        record: PasswordRecord = unfinished(
            journal, "there is no unfinished database password rotation: nothing to do"
        )
        key = _password_key(ctx)
        forward = not rollback and record.state in FORWARD_STATES
        with ctx.step("db_classify", f"rotation {record.rotation_id} stopped at {record.state}") as out:
            _, settings, _ = settings_from_env(ctx)
            if settings.user != record.db_user:
                raise EngineError(
                    f".env names the login {settings.user}, the rotation changed {record.db_user}'s "
                    "password: put the login back in .env, then run recover again"
                )
            accounts = record_accounts(record, settings)
            holds = {account: accepted_on(route, settings, record) for account, route in accounts}
            values = set(holds.values())
            server = values.pop() if len(values) == 1 else "mixed"
            on_disk = envfile.read_value(ctx.profile.env_path, key)
            env_holds = {record.new_password: "new", record.old_password: "old"}.get(on_disk, "another")
            direction = "finishing the rotation" if forward else "rolling back to the old password"
            takes = ", ".join(f"{a} takes the {v or 'neither'} password" for a, v in holds.items())
            out.detail = f"{takes} · .env holds the {env_holds} one · {direction}"
            out.data = {"server": server, "env": env_holds, "accounts": holds}
        base = {
            "rotation_id": record.rotation_id,
            "kind": "rotate-db-password",
            "panel": ctx.profile.name,
            "db_user": record.db_user,
            "db_host": record.db_host,
            "accounts": [a for a, _ in record_accounts(record, settings)],
            "old_fingerprint": record.old_fingerprint,
            "new_fingerprint": record.new_fingerprint,
            "stopped_at": record.state,
        }
        return converge(
            base,
            forward=forward,
            roll_forward=lambda: roll_forward(ctx, record, key),
            roll_back=lambda cause: roll_back(ctx, record, key, restart_needed=True, cause=cause),
            scrub=lambda text: _scrub(text, record),
        )
