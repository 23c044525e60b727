"""The read-only operations on the whole panel: ``hello``, ``probe``, ``status``.

Each is a function ``(ctx, request) -> result``, named in the registry (``engine.ops``),
with its CLI printer beside it.
"""

from __future__ import annotations

import time
from typing import IO, Any

from engine import __version__
from engine.context import Context
from engine.errors import EngineError
from engine.layouts import probe as probe_layouts
from engine.profile import Profile
from engine.protocol import SUPPORTED_VERSIONS, Request
from engine.runs import RunRecord


def hello(ctx: Context, request: Request) -> dict[str, Any]:
    return {"engine_version": __version__, "protocol": list(SUPPORTED_VERSIONS), "panel": ctx.profile.name}


def probe(ctx: Context, request: Request) -> dict[str, Any]:
    from engine import envfile, restart

    profile = ctx.profile
    with ctx.step("probe", "trying every known layout on every stored value") as out:
        restart.check_target(profile)  # a missing php-fpm unit shows here, before any run
        key_hex = envfile.read_key(profile.env_path, profile.key_name)
        db = ctx.connect()
        try:
            columns, missing = ctx.columns(db)
            report = probe_layouts(db, columns, key_hex, profile.batch_size)
            agents = _probe_agents(ctx, db)
        finally:
            db.close()
        out.detail = f"layout {report.chosen.label}" if report.chosen else "no layout opens every value"
    data: dict[str, Any] = {**report.as_dict(), "skipped": missing, "panel": profile.name}
    if report.chosen and profile.scheme and profile.scheme != report.chosen:
        data["problem"] = (
            f"the profile says ciphertext = {profile.scheme.label} but the stored values are "
            f"{report.chosen.label}"
        )
    data["agents"] = agents
    data["engine_version"] = __version__
    return data


def _probe_agents(ctx: Context, db: Any) -> dict[str, Any]:
    from engine.ops.agents.probe import probe_agents

    return probe_agents(ctx, db)


def status(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.recovery import agent_states
    from engine.ops.db_password.journal import PasswordJournal

    unfinished = ctx.journal.load()
    unfinished_password = PasswordJournal(ctx.profile.journal_dir).load()
    from engine.verdict import decide

    agents = agent_states(ctx)
    holder = ctx.journal.lock_holder()
    key = unfinished.public() if unfinished else None
    password = unfinished_password.public() if unfinished_password else None
    runs = RunRecord(ctx.profile.journal_dir).recent(50)
    verdict = decide(ctx.profile, holder=holder, key=key, db_password=password, agents=agents, runs=runs)
    return {
        "panel": ctx.profile.name,
        # the one answer (running / unfinished / clear) the CLI and the bot render
        "verdict": verdict.as_dict(),
        "unfinished": key,
        # an engine holding the lock is working on it now: not a case for recover
        "running": {"pid": holder} if holder is not None else None,
        "unfinished_agents": agents,
        "unfinished_db_password": password,
        "recent": ctx.journal.finished(),
        "runs": runs[-10:],
        "known_keys": len(ctx.journal.history()),
        "secret_ages": _secret_ages(ctx),
        "engine_version": __version__,
    }


def _secret_ages(ctx: Context) -> dict[str, Any]:
    """When the key and each agent's token were last rotated to DONE, from the journals.

    Read-only. ``key_rotated_at`` is None when no finished key rotation is on
    record (the key predates the engine's history: its age is unknown). Every
    agent of the panel is listed, ``rotated_at`` None for one never rotated here;
    when the panel's database cannot be read, ``agents_listed`` is False and only
    the agents the journal knows are listed.
    """
    from engine.ops.agents.journal import AgentJournal

    key_done = [
        float(r["started_at"])
        for r in ctx.journal.finished(limit=50)
        if r.get("state") == "DONE" and isinstance(r.get("started_at"), int | float)
    ]
    agents: dict[str, dict[str, Any]] = {}
    for record in AgentJournal(ctx.profile.journal_dir).finished(limit=500):
        at = record.get("started_at")
        if record.get("state") != "DONE" or not isinstance(at, int | float):
            continue
        name = str(record.get("agent_name") or record.get("agent_id"))
        if name not in agents or agents[name]["rotated_at"] < at:
            agents[name] = {"agent": name, "rotated_at": float(at)}
    names = _agent_names(ctx)
    for name in names or ():
        agents.setdefault(name, {"agent": name, "rotated_at": None})
    return {
        "key_rotated_at": max(key_done) if key_done else None,
        "agents": sorted(agents.values(), key=lambda a: str(a["agent"])),
        "agents_listed": names is not None,
    }


def _agent_names(ctx: Context) -> list[str] | None:
    """The names of the panel's agents (read-only), or None when the database can't say."""
    from engine.ops.agents.rows import AgentTable

    try:
        db = ctx.connect()
    except EngineError:
        return None
    try:
        rows, _ = AgentTable(ctx.profile.agents).select(db, None)
    except EngineError:
        return None
    finally:
        db.close()
    return [row.name for row in rows]


# -- the CLI ------------------------------------------------------------------------------


def print_probe(out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
    from engine.ops.key import print_layout

    print_layout(out, data, current_key=False)
    for scheme, per_column in (data.get("opens") or {}).items():
        opened = sum(per_column.values())
        if opened:
            out.write(f"  candidate {scheme}: opens {opened:,}\n")


def print_status(out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
    _print_verdict(out, data.get("verdict") or {})
    for item in data.get("recent") or []:
        out.write(f"  {item['rotation_id']}: {item['state']} ({item['old_fingerprint']}… → "
                  f"{item['new_fingerprint']}…)\n")  # fmt: skip
    runs = [r for r in data.get("runs") or [] if r.get("event") == "finished"]
    if runs:
        out.write("Runs recorded by this host's engine (runs.jsonl), latest last:\n")
    for run in runs:
        out.write(f"  {_run_line(run)}\n")


def _clock(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if isinstance(at, int | float) else "?"


def _print_verdict(out: IO[str], verdict: dict[str, Any]) -> None:
    """``status``'s one answer: RUNNING, UNFINISHED (each item), or nothing unfinished."""
    running = verdict.get("running")
    if verdict.get("state") == "running" and running:
        what = f"{running.get('op') or 'an engine run'} {running.get('rotation_id') or ''}".rstrip()
        out.write(
            f"RUNNING: {what} (pid {running['pid']}), step {running.get('step') or 'not known yet'}, "
            f"since {_clock(running.get('since'))}. Let it finish; do not run recover.\n"
        )
    elif verdict.get("state") == "unfinished":
        for item in verdict.get("unfinished") or []:
            rotation = f" {item['rotation_id']}" if item.get("rotation_id") else ""
            since = f", started {_clock(item['since'])}" if item.get("since") else ""
            note = f" ({item['note']})" if item.get("note") else ""
            out.write(
                f"UNFINISHED {item['what']}{rotation}: stopped at {item['stopped_at']}{since}{note}. "
                f"Run: {item['command']}\n"
            )
    else:
        out.write("Nothing unfinished: no rotation is running or left unfinished.\n")


def _run_line(run: dict[str, Any]) -> str:
    """One line of the host's run record: when, what, who, which plan, how it ended."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(run.get("ts", 0)) / 1000))
    outcome = "ok" if run.get("ok") else f"failed ({run.get('code') or run.get('state')})"
    approvers = ",".join(run.get("approved_by") or []) or "-"
    plan = str(run.get("plan_hash") or "-")[:12]
    return (
        f"{when} UTC {run.get('rotation_id')} {run.get('op')}: {outcome} · requested by "
        f"{run.get('requested_by') or '-'} · approved by {approvers} · plan {plan}"
    )
