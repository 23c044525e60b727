"""``rotate-incident``: after a leaked ``.env``, rotate everything it exposed, in a safe order.

The parts run one after the other in one engine process (``protocol.INCIDENT_PARTS``):
the database password first (with it, every stored token is readable), then the
encryption key, then every agent's token. Each part is its own journaled, verified
rotation; the next starts only when the previous one is verified. A failure stops
the sequence: finished parts stay done and verified, the failed part rolls back (or
says that ``recover`` is needed), and the parts after it are not touched. The result
names every part's outcome and what is left, including what this tool can't rotate
(``PANEL_LICENSE_KEY`` and any other secret-looking ``.env`` key, by name only).

Every event of a part carries ``part`` (the emitter stamps it), and each part opens
and closes with a ``part`` step, so a reader can draw a checklist.
"""

from __future__ import annotations

import re
from typing import Any

from engine import __version__, envfile, protocol
from engine.context import Context
from engine.db import resolve_settings
from engine.errors import EngineError, RollbackFailedError, UnfinishedRotationError
from engine.events import Stopwatch
from engine.protocol import INCIDENT_PARTS, Request

LICENSE_KEY = "PANEL_LICENSE_KEY"
DB_PASSWORD_OP = "rotate-db-password"
_SECRET_NAME = re.compile(r"^[A-Z0-9_]*_(KEY|SECRET|PASSWORD|TOKEN)$")
PART_TITLES = {"db_password": "database password", "key": "encryption key", "agents": "agent tokens"}


def support_message(panel: str) -> str:
    """The prefilled message for MyOsicam support (no value of any secret)."""
    return (
        f"Hello MyOsicam support, the config/.env file of our MyOsicam panel \"{panel}\" may have "
        "been disclosed. We have rotated PANEL_ENCRYPTION_KEY, the database password and the agent "
        "tokens. Please revoke our current PANEL_LICENSE_KEY and issue a new one, and tell us how "
        "to install it. Thank you."
    )


def manual_items(ctx: Context, env_names: list[str], db_password_key: str | None) -> list[dict[str, Any]]:
    """What this tool can't rotate, with what to do: decided by each key's NAME, never its value."""
    items: list[dict[str, Any]] = [
        {
            "name": LICENSE_KEY,
            "present": LICENSE_KEY in env_names,
            "action": "contact MyOsicam support",
            "message": support_message(ctx.profile.name),
        }
    ]
    ours = {ctx.profile.key_name, LICENSE_KEY, db_password_key}
    for name in env_names:
        if name not in ours and _SECRET_NAME.match(name):
            items.append({"name": name, "present": True, "action": "rotate at its issuer"})
    return items


def _env_names(ctx: Context) -> list[str]:
    return list(envfile.parse(envfile.read(ctx.profile.env_path)))


def _agents_configured(ctx: Context) -> bool:
    return "agents" in ctx.profile.fields_set


def _db_password_available() -> bool:
    from engine import ops

    return DB_PASSWORD_OP in protocol.OPERATIONS and DB_PASSWORD_OP in ops.IMPLEMENTATIONS


def plan_incident(ctx: Context, request: Request) -> dict[str, Any]:
    """The read-only plan: what will be rotated, what can't be, and the hash a run must name."""
    from engine.ops.key.preflight import run_preflight

    names = _env_names(ctx)
    db = ctx.profile.database
    password_key = None if db.password is not None else db.env_keys.get("password")
    ctx.emitter.part = "db_password"
    db_facts: dict[str, Any] = {}
    if password_key is not None and _db_password_available():
        from engine.ops.db_password.rotation import password_preflight

        pw = password_preflight(ctx, write_checks=True)  # the login works, may change its password
        db_user = pw.settings.user
        db_facts = {
            "db_host": pw.settings.host,
            "account": pw.account,
            "accounts": list(pw.routes.accounts()),  # every twin the password opens, each rotated
            "panel_route": pw.routes.panel_route.label,
            "password_fingerprint": pw.fingerprint,
        }
    else:
        with ctx.step("preflight", "reading the panel's database user from .env") as out:
            db_user = resolve_settings(db, envfile.values(ctx.profile.env_path)).user
            out.detail = f"database user {db_user}"
    ctx.emitter.part = "key"
    pre = run_preflight(ctx, lock_note="read-only", write_checks=True)
    agents: list[dict[str, Any]] = []
    agent_problems: list[str] = []
    if _agents_configured(ctx):
        from engine.ops.agents.preflight import plan_agents

        ctx.emitter.part = "agents"
        data = plan_agents(ctx, request.replace(agents=None, all_agents=True))
        agents = [{"name": r["name"], "token_fingerprint": r.get("token_fingerprint")} for r in data["agents"]]
        agent_problems = list(data.get("problems") or [])
    ctx.emitter.part = None
    password_fp = db_facts.get("password_fingerprint")
    binding = _binding(ctx, pre.key_fingerprint, pre.scheme.label, [a["name"] for a in agents], db_user, password_fp,
                       db_facts.get("accounts") or [])
    available = _db_password_available()
    parts = [
        {
            "part": "db_password",
            "title": PART_TITLES["db_password"],
            "db_user": db_user,
            "env_key": password_key,
            "available": available,
            **db_facts,
        },
        {"part": "key", "title": PART_TITLES["key"], **pre.summary()},
        {
            "part": "agents",
            "title": PART_TITLES["agents"],
            "agents": agents,
            "total": len(agents),
            "configured": _agents_configured(ctx),
            "problems": agent_problems,
        },
    ]
    return {
        **pre.summary(),  # the key's facts at the top too, as a rotate-key plan has them
        "panel": ctx.profile.name,
        "incident": True,
        "parts": parts,
        "manual": manual_items(ctx, names, password_key),
        "problems": agent_problems,  # shown on the card before anyone approves
        "key_fingerprint": pre.key_fingerprint,
        "agents": [a["name"] for a in agents],
        "db_user": db_user,
        "password_fingerprint": password_fp,
        "engine_version": __version__,
        "plan_hash": protocol.plan_hash(binding),
    }


def _binding(
    ctx: Context, key_fp: str, scheme: str, agents: list[str], db_user: str, password_fp: str | None,
    db_accounts: list[str],
) -> dict[str, Any]:
    return protocol.incident_binding(
        panel=ctx.profile.name, engine_version=__version__, key_fingerprint=key_fp,
        scheme=scheme, agents=agents, db_user=db_user, password_fingerprint=password_fp, db_accounts=db_accounts,
    )  # fmt: skip


class _Part:
    """One part's record in the result: when it ran, how it ended, its fingerprints."""

    def __init__(self, name: str) -> None:
        self.data: dict[str, Any] = {"part": name, "title": PART_TITLES[name], "state": "not_started"}

    def start(self) -> None:
        self.data.update(state="running", started_at=protocol.now_ms())

    def end(self, state: str, **facts: Any) -> None:
        self.data.update(state=state, finished_at=protocol.now_ms(), **facts)


def rotate_incident(ctx: Context, request: Request) -> dict[str, Any]:
    """Run the approved plan's parts in order; stop at the first that does not verify."""
    from engine import ops

    watch = Stopwatch()
    plan = plan_incident(ctx, request.replace(dry_run=True))
    if request.plan_hash is not None or request.key_fingerprint is not None:
        from engine.errors import PlanMismatchError

        key = next(p for p in plan["parts"] if p["part"] == "key")
        database = next(p for p in plan["parts"] if p["part"] == "db_password")
        binding = _binding(ctx, plan["key_fingerprint"], key["scheme"], plan["agents"], plan["db_user"],
                           plan["password_fingerprint"], database.get("accounts") or [])  # fmt: skip
        # a request may leave the agents out (too many for one request line): the plan hash binds them
        named = request if request.agents is not None else request.replace(agents=binding["agents"])
        try:
            protocol.check_run(named, binding)
        except PlanMismatchError as exc:
            exc.details["plan"] = plan
            raise
    if request.dry_run:
        return {**plan, "dry_run": True, "rotation_id": request.id}
    parts = {name: _Part(name) for name in INCIDENT_PARTS}
    stopped: dict[str, Any] | None = None
    plain = request.replace(op="rotate-key", plan_hash=None, key_fingerprint=None, agents=None,
                            all_agents=False, incident=False)  # fmt: skip
    for name in INCIDENT_PARTS:
        part = parts[name]
        skip = _skip_reason(name, plan)
        ctx.emitter.part = name
        if skip is not None:
            part.end("skipped", detail=skip)
            ctx.emitter.step("part", "skipped", skip, title=PART_TITLES[name])
            continue
        part.start()
        ctx.emitter.step("part", "started", PART_TITLES[name], title=PART_TITLES[name])
        part_watch = Stopwatch()
        try:
            if name == "db_password":
                data = ops.run(DB_PASSWORD_OP, ctx, plain.replace(op=DB_PASSWORD_OP))
                facts = _fingerprints(data, db_user=data.get("db_user"), accounts=data.get("accounts"),
                                      routes=data.get("routes"))  # fmt: skip
                ok = data.get("state", "DONE") == "DONE"
            elif name == "key":
                data = _rotate_key(ctx, plain, plan["key_fingerprint"])
                facts = _fingerprints(data, total=data.get("total"), columns=data.get("columns"))
                ok = data.get("state") == "DONE"
            else:
                names = list(plan["agents"])
                data = ops.run("rotate-agent", ctx, plain.replace(op="rotate-agent", agents=names))
                facts = {"agents": data.get("agents"), "rotated": data.get("rotated"), "total": data.get("total")}
                ok = bool(data.get("ok", True))
                if not ok:
                    facts.update(code=data.get("code"), error=data.get("message"))
        except EngineError as exc:
            state = "rolled_back" if exc.rolled_back else "failed"
            if isinstance(exc, RollbackFailedError | UnfinishedRotationError) or exc.rolled_back is False:
                state = "needs_recover"
            facts = {"code": exc.code, "error": exc.message,
                     **_fingerprints(exc.details, accounts=exc.details.get("accounts"))}  # fmt: skip
            part.end(state, duration_ms=part_watch.ms, **facts)
            ctx.emitter.step("part", "failed", exc.message, part_watch.ms, title=PART_TITLES[name])
            stopped = {"part": name, "code": exc.code, "message": exc.message, "state": state}
            break
        if not ok:
            part.end("failed", duration_ms=part_watch.ms, **facts)
            message = str(facts.get("error") or f"the {PART_TITLES[name]} did not verify")
            ctx.emitter.step("part", "failed", message, part_watch.ms, title=PART_TITLES[name])
            stopped = {"part": name, "code": facts.get("code") or "part_failed", "message": message,
                       "state": "failed"}  # fmt: skip
            break
        part.end("done", duration_ms=part_watch.ms, **facts)
        ctx.emitter.step("part", "ok", _done_detail(name, facts), part_watch.ms, title=PART_TITLES[name])
    ctx.emitter.part = None
    rows = [parts[n].data for n in INCIDENT_PARTS]
    left = [
        {"part": r["part"], "title": r["title"], "state": r["state"]}
        for r in rows
        if r["state"] not in ("done", "skipped")
    ]
    result: dict[str, Any] = {
        "rotation_id": request.id,
        "panel": ctx.profile.name,
        "ok": stopped is None,
        "state": "DONE" if stopped is None else "STOPPED",
        "parts": rows,
        "left": left,
        "manual": plan["manual"],
        "plan_hash": plan["plan_hash"],
        "duration_ms": watch.ms,
        "engine_version": __version__,
    }
    if stopped is not None:
        result.update(code=stopped["code"], message=_stopped_message(stopped, left), stopped=stopped)
    return result


def _rotate_key(ctx: Context, request: Request, approved_fp: str) -> dict[str, Any]:
    """rotate-key, refusing (under its lock, after its preflight) a key that is not the planned one."""
    from engine.errors import PlanMismatchError
    from engine.ops.approval import run_options
    from engine.ops.key.rotation import KeyRotation

    def same_key(pre: Any) -> None:
        if pre.key_fingerprint != approved_fp:
            raise PlanMismatchError(
                "key_mismatch",
                f"the panel's current key is {pre.key_fingerprint}, not the approved {approved_fp}: "
                "the key part did not start",
                [f"current key {approved_fp} -> {pre.key_fingerprint}"],
            )

    return KeyRotation(ctx, **{**run_options(request), "dry_run": False}, expect=same_key).run()


def _skip_reason(name: str, plan: dict[str, Any]) -> str | None:
    if name == "db_password" and not _db_password_available():
        return "this engine can't rotate the database password yet"
    if name == "db_password" and _part_of(plan, "db_password").get("env_key") is None:
        return "the profile sets database.password (not .env): rotate it by hand"
    if name == "agents":
        part = _part_of(plan, "agents")
        if not part["configured"]:
            return "no [agents] section in the profile"
        if not part["agents"]:
            return "no agents on this panel"
    return None


def _part_of(plan: dict[str, Any], name: str) -> dict[str, Any]:
    return next((p for p in plan["parts"] if p["part"] == name), {})


def _fingerprints(data: dict[str, Any], **more: Any) -> dict[str, Any]:
    out = {k: data[k] for k in ("old_fingerprint", "new_fingerprint", "rotation_id") if data.get(k)}
    return {**out, **{k: v for k, v in more.items() if v is not None}}


def _done_detail(name: str, facts: dict[str, Any]) -> str:
    if name == "agents":
        return f"{facts.get('rotated', 0)} of {facts.get('total', 0)} agents rotated and verified"
    accounts = facts.get("accounts") or []
    every = f" on {', '.join(accounts)}, the old one refused on every route" if accounts else ""
    return f"{facts.get('old_fingerprint', '?')}… → {facts.get('new_fingerprint', '?')}… verified{every}"


def _stopped_message(stopped: dict[str, Any], left: list[dict[str, Any]]) -> str:
    title = PART_TITLES[stopped["part"]]
    how = {
        "rolled_back": "failed and was rolled back",
        "needs_recover": "failed and is unfinished: run recover",
        "failed": "failed",
    }[stopped["state"]]
    untouched = [r["title"] for r in left if r["state"] == "not_started"]
    text = f"The {title} {how} ({stopped['message']})."
    if untouched:
        text += " Not started, untouched: " + ", ".join(untouched) + "."
    return text
