"""Agent token rotation: the journaled state machine of docs/architecture.md §5, per agent.

PREFLIGHT -> TOKEN_ISSUED -> BOOTSTRAPPED -> REREGISTERED -> OLD_REVOKED -> DONE, or FAILED.

* PREFLIGHT: the agent exists, its server answers over SSH with the pinned
  host key; the old token's fingerprint is recorded (never the token).
* TOKEN_ISSUED: a single-use install token, written to the agent's journal
  before the panel will accept it.
* BOOTSTRAPPED: the bootstrap ran on the agent server, token on its stdin.
* REREGISTERED: the agent's row carries a different token, and the agent is
  proven to work with it: a heartbeat moved ``last_seen`` after the engine first
  saw the new token (or ``reregister_check_command`` exits 0). A row that changed
  while nothing heartbeats with the new token is a bricked agent, not a rotated
  one (polled with backoff up to ``reregister_timeout_s``).
* OLD_REVOKED: no row holds the old token, and the panel refuses a request
  signed with it while it accepts the same request signed with the new one
  (engine.ops.agents.tokencheck). When that cannot be told, the agent's outcome is
  "unverified" (could not verify), not "rotated" and not "failed".

Tokens (old, install, new) are hidden by their exact value from every event,
result and journal line of the run, whatever their format; the bootstrap's
output is reported only when the profile asks for it (and on failure, its last
line, with every token hidden).

Whatever the outcome, an unused install token is revoked at the end; only
then is the agent's journal archived without its tokens. A run that finds an
agent's journal (a crash, a killed engine) resumes it: if the agent already
re-registered, no second install token is issued; an unused, still valid one
is reused.

Agents run on a bounded thread pool, each with its own database connection
and SSH connection; one agent's failure is reported and the others go on.
The run holds the panel's lock (the one ``rotate-key`` takes) throughout.

Fault points for crash tests (engine/faults.py): ``agent:token_issued``,
``agent:bootstrapped``, ``agent:reregistered``, ``agent:old_revoked``, each
right after that state is journaled.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import envfile, faults
from engine.cipher import Codec
from engine.context import Context
from engine.db import PanelDB
from engine.errors import AgentError, AgentUnverifiedError, EngineError, UnfinishedRotationError
from engine.events import Stopwatch
from engine.ops.agents import commands, remote, tokencheck
from engine.ops.agents.batch import AgentSteps, Run
from engine.ops.agents.journal import AgentJournal, AgentRecord
from engine.ops.agents.outcome import AgentOutcome, run_result, unknown_agent
from engine.ops.agents.rows import AgentRow, AgentTable, ServerRow, iso_exact
from engine.ops.agents.tokens import provider
from engine.ops.journaled import panel_lock
from engine.profile import engine_command
from engine.protocol import Request, fingerprint

log = logging.getLogger(__name__)
POLL_FIRST_S = 0.25
POLL_MAX_S = 5.0
#: The step a failure in each state is reported against.
_STEP_OF_STATE = {
    "PREFLIGHT": "preflight",
    "TOKEN_ISSUED": "bootstrap",
    "BOOTSTRAPPED": "reregistered",
    "REREGISTERED": "old_revoked",
    "OLD_REVOKED": "old_revoked",
}


class AgentRotation:
    def __init__(self, run: Run, agent: AgentRow) -> None:
        self.run = run
        self.agent = agent
        self.s = run.settings
        self.steps = AgentSteps(run, agent.name, agent.id)
        self.record: AgentRecord | None = None
        self.server: remote.AgentServer | None = None
        self.server_label: str | None = None
        self.failure: EngineError | None = None
        self.failed_step: str | None = None
        self.resumed_from: str | None = None
        self.old_token_valid: bool | None = None
        self.watch = Stopwatch()

    # -- entry point -------------------------------------------------------------------
    def run_one(self) -> AgentOutcome:
        self.failed_step = "preflight"
        try:
            db = self.run.ctx.connect()
        except EngineError as exc:
            self.failure = exc
            self.steps.emit("preflight", "failed", exc.message)
            return self._outcome()
        try:
            try:
                self._drive(db)
            except EngineError as exc:
                self.failure = exc
            except Exception as exc:
                log.exception("agent %s: unexpected error", self.agent.name)
                self.failure = AgentError(f"unexpected error ({type(exc).__name__})")
            if not self.run.request.dry_run:
                db = self._finish(db)
        finally:
            db.close()
            if self.server is not None:
                self.server.close()
        return self._outcome()

    def _drive(self, db: PanelDB) -> None:
        record = self.run.journal.load(self.agent.id)
        if self.run.request.dry_run:  # checks only, even with a journal to resume
            self._preflight(db, unfinished=record)
            return
        if record is None:
            since = self._preflight(db)
            self.failed_step = "issue_token"
            record = self._issue(db, since)
        else:
            self._resume(db, record)
        self.record = record
        while record.state not in ("OLD_REVOKED", "DONE", "FAILED"):
            self.failed_step = _STEP_OF_STATE[record.state]
            if record.state == "TOKEN_ISSUED":
                self._bootstrap(db, record)
            elif record.state == "BOOTSTRAPPED":
                self._await_reregistration(db, record)
            elif record.state == "REREGISTERED":
                self._check_old_revoked(db, record)
        self.failed_step = None

    # -- the states ------------------------------------------------------------------------
    def _preflight(self, db: PanelDB, unfinished: AgentRecord | None = None) -> datetime:
        agent = self.agent
        with self.steps.step("preflight", "checking the agent and its server") as out:
            refused = self.run.table.bad_name(agent)
            if refused:
                raise AgentError(refused)
            server = self._connect(db)
            since = self.run.table.now(db)
            old = agent.token_fingerprint or "none"
            out.detail = f"{self.server_label} answers · host key {server} · old token {old}"
            if unfinished is not None:
                out.detail += f" · rotation {unfinished.rotation_id} stopped at {unfinished.state}: a run resumes it"
            out.data = {"server": self.server_label, "old_fingerprint": agent.token_fingerprint}
        return since

    def _connect(self, db: PanelDB) -> str:
        """Resolve the route to the agent's server and log in; returns the host key fingerprint."""
        if self.server is None:
            route = self._route(db)
            self.server_label = route.label
            self.server = remote.AgentServer(route, self._known_hosts(), self.s.ssh_timeout_s)
        return self.server.connect()

    def _route(self, db: PanelDB) -> remote.Route:
        agent = self.agent
        server: ServerRow | None = None
        if agent.server_id is not None:
            server = self.run.table.server(db, agent.server_id)
        if self.s.ssh_source == "inventory":
            return remote.route_from_inventory(self.s, agent, server)
        if server is None:
            raise AgentError(
                f"agent {agent.name} has no server in the panel"
                if agent.server_id is None
                else f"agent {agent.name}'s server {agent.server_id} is not in {self.s.server_table}"
            )
        self.server_label = server.label
        if server.credential is None or self.run.codec is None:
            raise AgentError(f"server {server.name} has no SSH credential in the panel")
        plain = self.run.codec.open(server.credential)
        if plain is None:
            raise AgentError(f"the SSH credential of server {server.name} does not open with the panel key")
        return remote.route_from_panel(server, plain)

    def _known_hosts(self) -> Path:
        return self.s.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def _issue(self, db: PanelDB, since: datetime) -> AgentRecord:
        agent, run = self.agent, self.run
        with self.steps.step("issue_token", "issuing a single-use install token") as out:
            token = run.tokens.new(agent)
            run.hide(token)
            record = AgentRecord(
                rotation_id=run.rotation_id,
                agent_id=agent.id,
                agent_name=agent.name,
                state="TOKEN_ISSUED",
                started_at=time.time(),
                since=since.isoformat(),
                server=self.server_label or "",
                provider=run.tokens.name,
                old_fingerprint=agent.token_fingerprint,
                old_token=agent.token,
                install_token=token,
                install_token_fingerprint=fingerprint(token),
                requested_by=run.request.requested_by,
                approved_by=list(run.request.approved_by),
                reason=run.request.reason,
            )
            self.record = record
            run.journal.save(record)  # journaled before the panel accepts it
            run.tokens.activate(db, agent, token)
            ttl = f", expires in {self.s.install_token_ttl_s} s" if run.tokens.name == "sql" else ""
            out.detail = f"{run.tokens.name} provider{ttl} · journaled · fingerprint {record.install_token_fingerprint}"
            out.data = {"install_token_fingerprint": record.install_token_fingerprint}
        faults.checkpoint("agent:token_issued")
        return record

    def _resume(self, db: PanelDB, record: AgentRecord) -> None:
        """Carry on with the journaled rotation of this agent, issuing no second token if
        the agent already re-registered."""
        self.record = record
        self.resumed_from = record.rotation_id
        self.run.hide(record.old_token)
        self.run.hide(record.install_token)
        self.server_label = record.server or None
        with self.steps.step("preflight", "resuming an interrupted rotation") as out:
            out.detail = f"resuming rotation {record.rotation_id} of this agent, stopped at {record.state}"
            out.data = {"server": record.server, "old_fingerprint": record.old_fingerprint, "resumed": True}
        if record.state in ("TOKEN_ISSUED", "BOOTSTRAPPED") and self._new_token(db, record) is not None:
            earlier = "issued before the interruption; no second token"
            self.steps.emit("issue_token", "skipped", earlier)
            self.steps.emit("bootstrap", "skipped", "the agent already registered a new token")
            self._advance(record, "BOOTSTRAPPED")  # the proof that it works with it comes next
            return
        if record.state == "TOKEN_ISSUED":
            self._resume_token(db, record)
        elif record.state in ("BOOTSTRAPPED", "REREGISTERED", "OLD_REVOKED"):
            self.steps.emit("issue_token", "skipped", "issued before the interruption")
            self.steps.emit("bootstrap", "skipped", "ran before the interruption")
            if record.state != "BOOTSTRAPPED":
                self.steps.emit("reregistered", "skipped", f"new token {record.new_fingerprint}")
            if record.state == "OLD_REVOKED":
                self.steps.emit("old_revoked", "skipped", "checked before the interruption")

    def _resume_token(self, db: PanelDB, record: AgentRecord) -> None:
        """The token was journaled, the agent has not re-registered: reuse it if still good."""
        run = self.run
        assert record.install_token is not None
        with self.steps.step("issue_token", "checking the journaled install token") as out:
            state = run.tokens.state(db, record.install_token)
            if state == "absent":
                run.tokens.activate(db, self.agent, record.install_token)
                out.detail = "journaled before the interruption, stored now · no second token"
            elif state in ("usable", "unknown"):
                out.detail = "reusing the install token issued before the interruption"
            else:  # used or expired, and the agent did not re-register with it
                record.install_token_state = run.tokens.revoke(db, record.install_token)
                token = run.tokens.new(self.agent)
                run.hide(token)
                record.install_token = token
                record.install_token_fingerprint = fingerprint(token)
                run.journal.save(record)
                run.tokens.activate(db, self.agent, token)
                out.detail = f"the earlier install token was {state}; issued a new one"
            out.data = {"install_token_fingerprint": record.install_token_fingerprint}

    def _bootstrap(self, db: PanelDB, record: AgentRecord) -> None:
        assert record.install_token is not None
        with self.steps.step("bootstrap", "running the bootstrap on the agent server") as out:
            self._connect(db)
            assert self.server is not None
            command = remote.render_bootstrap(
                self.s.bootstrap_command,
                panel_url=self.s.panel_url,
                agent_id=self.agent.id,
                agent_name=self.agent.name,
            )
            result = self.server.run(command, record.install_token, self.s.bootstrap_timeout_s)
            registered = self._new_token(db, record)  # every token the panel holds now is hidden below
            last = self.run.scrub(remote.last_line(result.output, self.run.secrets()))
            said = f": {last}" if last else ""
            if result.exit_status != 0:
                if registered is None:
                    raise AgentError(
                        f"the bootstrap on {self.server_label} failed (exit {result.exit_status}){said}"
                    )
                said = f" (it exited {result.exit_status}, but the agent registered a new token)"
            elif not self.s.forward_bootstrap_output:
                said = ""
            out.detail = f"ran on {self.server_label}{said}"
        self._advance(record, "BOOTSTRAPPED")
        faults.checkpoint("agent:bootstrapped")

    def _new_token(self, db: PanelDB, record: AgentRecord) -> AgentRow | None:
        """The agent's row, if it holds a token other than the old one.

        The first time a given new token is seen, the database clock and the row's
        ``last_seen`` are journaled: the proof that the agent works with that token
        is a heartbeat after that moment (``_proven``).
        """
        row = self.run.table.get(db, record.agent_id)
        if row is None or row.token is None or row.token == record.old_token:
            return None
        self.run.hide(row.token)
        if record.new_fingerprint != row.token_fingerprint or record.new_token_seen_at is None:
            record.new_fingerprint = row.token_fingerprint
            record.new_token_seen_at = self.run.table.now(db).isoformat()
            record.new_token_last_seen = iso_exact(row.last_seen)
            self.run.journal.save(record)
        return row

    def _proven(self, row: AgentRow, record: AgentRecord) -> bool:
        """Does the agent work with the token ``row`` holds? A heartbeat after the engine saw
        that token (``last_seen`` later than that moment and moved on from its value then),
        or the profile's ``reregister_check_command`` exiting 0 with the token on its stdin."""
        command = self.s.reregister_check_command
        if command:
            env = {"ROTATOR_AGENT_ID": str(row.id), "ROTATOR_AGENT_NAME": row.name,
                   "ROTATOR_PANEL_URL": self.s.panel_url}
            assert row.token is not None
            done = commands.run("the re-registration check command", command, stdin=row.token + "\n", env=env,
                                secrets_=self.run.secrets(), timeout_s=self.s.check_timeout_s)
            return done.status == 0
        if row.last_seen is None or record.new_token_seen_at is None:
            return False
        seen_at = datetime.fromisoformat(record.new_token_seen_at)
        return row.last_seen > seen_at and iso_exact(row.last_seen) != record.new_token_last_seen

    def _await_reregistration(self, db: PanelDB, record: AgentRecord) -> None:
        timeout = self.s.reregister_timeout_s
        proof = "its check command" if self.s.reregister_check_command else "a heartbeat signed with it"
        with self.steps.step("reregistered", f"waiting up to {timeout:g} s for the agent") as out:
            watch = Stopwatch()
            deadline = time.monotonic() + timeout
            delay = POLL_FIRST_S
            while True:
                row = self._new_token(db, record)
                if row is not None and self._proven(row, record):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    if row is None:
                        raise AgentError(f"the agent did not re-register within {timeout:g} s")
                    raise AgentError(
                        f"the agent registered a new token ({record.new_fingerprint}) but is not working "
                        f"with it: no proof ({proof}) within {timeout:g} s"
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 1.6, POLL_MAX_S)
            out.detail = f"new token {record.new_fingerprint} · {proof} after {watch.ms / 1000:.1f} s"
            out.data = {"new_fingerprint": record.new_fingerprint}
        self._advance(record, "REREGISTERED")

    def _check_old_revoked(self, db: PanelDB, record: AgentRecord) -> None:
        with self.steps.step("old_revoked", "checking that the old token is dead") as out:
            old = record.old_token
            if old is None:
                out.detail = "the agent had no token before"
            else:
                holders = self.run.table.holders(db, old)
                if holders:
                    raise AgentError(f"{holders} agent row(s) still hold the old token")
                if self.s.old_token_check == "none":
                    out.detail = "no row holds it (the panel is not asked: old_token_check = none)"
                else:
                    row = self._new_token(db, record)
                    if row is None or row.token is None:
                        raise AgentError("the agent's row no longer holds the new token")
                    said = tokencheck.old_token_dead(self.s, row, old, row.token)
                    out.detail = f"no row holds it · {said}"
        self._advance(record, "OLD_REVOKED")

    def _advance(self, record: AgentRecord, state: str) -> None:
        record.state = state
        self.run.journal.save(record)
        if state in ("REREGISTERED", "OLD_REVOKED"):
            faults.checkpoint(f"agent:{state.lower()}")

    # -- the end, whatever the outcome -------------------------------------------------
    def _finish(self, db: PanelDB) -> PanelDB:
        """Revoke an unused install token, then archive the journal without tokens.

        If the revocation cannot be done (the database is gone), the journal
        stays, so the next run for this agent revokes it. Returns the
        connection to close (a fresh one if the first was lost).
        """
        record = self.record
        if record is None:
            return db
        if record.install_token is not None:
            try:
                record.install_token_state = self.run.tokens.revoke(db, record.install_token)
            except EngineError:
                db.close()
                try:
                    db = self.run.ctx.connect()
                    record.install_token_state = self.run.tokens.revoke(db, record.install_token)
                except EngineError as exc:
                    record.install_token_state = "revoke failed"
                    self._fail_also(f"the unused install token could not be revoked ({exc.message}); "
                                    "the agent's journal keeps it for the next run")
                    return db
            record.install_token = None
        if self.failure is None:
            record.state = "DONE"
        else:
            with contextlib.suppress(EngineError):
                row = self.run.table.get(db, record.agent_id)
                old = record.old_token
                self.old_token_valid = row is not None and old is not None and row.token == old
            record.failed_step = self.failed_step
            record.error = self.run.scrub(self.failure.message)
            record.state = "UNVERIFIED" if isinstance(self.failure, AgentUnverifiedError) else "FAILED"
            if record.state == "UNVERIFIED":
                self.old_token_valid = None
        record.old_token = None
        self.run.journal.finish(record)
        return db

    def _fail_also(self, message: str) -> None:
        if self.failure is None:
            self.failure = AgentError(message)
        else:
            self.failure = AgentError(f"{self.failure.message}; {message}")

    def _outcome(self) -> AgentOutcome:
        record, agent, ok = self.record, self.agent, self.failure is None
        out = AgentOutcome(
            agent.name,
            id=agent.id,
            server=self.server_label,
            ok=ok,
            old_fingerprint=record.old_fingerprint if record else agent.token_fingerprint,
            resumed_from=self.resumed_from,
            duration_ms=self.watch.ms,
        )
        if self.run.request.dry_run:
            out.outcome = "ready" if ok else "failed"
        elif record is not None:
            unverified = isinstance(self.failure, AgentUnverifiedError)
            out.outcome = "rotated" if ok else ("unverified" if unverified else "failed")
            out.new_fingerprint = record.new_fingerprint
            out.install_token = record.install_token_state or "unknown"
            reached = [s for s in record.trail if s not in ("FAILED", "UNVERIFIED")]
            out.state = reached[-1] if reached else record.state
        if not ok:
            out.failed_step = self.failed_step
            out.error = self.run.scrub(self.failure.message) if self.failure else None
            out.old_token_valid = None if self.run.request.dry_run else (
                self.old_token_valid if record else (True if agent.token else None)
            )
        return out


def _codec(ctx: Context, db: PanelDB) -> Codec:
    """Opens the panel's stored SSH credentials (same key and layout as every other value)."""
    key_hex = envfile.read_key(ctx.profile.env_path, ctx.profile.key_name)
    columns, _ = ctx.columns(db)
    return Codec(ctx.scheme(db, columns, key_hex), key_hex)


def rotate_agents(ctx: Context, request: Request) -> dict[str, Any]:
    """Rotate the named agents (or all): one closing result listing every agent."""
    settings = ctx.profile.agents
    if not request.agents and not request.all_agents:
        raise AgentError("name the agents to rotate, or ask for all of them (--all)")
    watch = Stopwatch()
    journal = ctx.journal
    with panel_lock(ctx):
        unfinished = journal.load()
        if unfinished is not None:
            raise UnfinishedRotationError(
                f"key rotation {unfinished.rotation_id} stopped at {unfinished.state} and is "
                f"unfinished: run `{engine_command(ctx.profile, 'recover')}` first"
            )
        table = AgentTable(settings)
        db = ctx.connect()
        try:
            names = None if request.all_agents else list(request.agents or [])
            agents, missing = table.select(db, names)
            codec = _codec(ctx, db) if settings.ssh_source == "panel" and agents else None
        finally:
            db.close()
        run = Run(ctx, request, settings, provider(settings), table, AgentJournal(ctx.profile.journal_dir), codec)
        for agent in agents:
            run.hide(agent.token)
        by_name: dict[str, AgentOutcome] = {}
        for name in missing:
            pattern = settings.agent_name_pattern
            by_name[name] = unknown_agent(name, valid=pattern is None or re.fullmatch(pattern, name) is not None)
            AgentSteps(run, name, None).emit("preflight", "failed", by_name[name].error or "")
        workers = max(1, min(settings.parallelism, len(agents)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent") as pool:
            done = pool.map(lambda agent: AgentRotation(run, agent).run_one(), agents)
            for agent, outcome in zip(agents, done, strict=True):
                by_name[agent.name] = outcome
    order = names if names is not None else [a.name for a in agents]
    outcomes = [by_name[n] for n in dict.fromkeys(order)]
    return run_result(request.id, ctx.profile.name, outcomes, dry_run=request.dry_run, duration_ms=watch.ms)
