"""Runs an approved fleet request: every panel its own engine run, in parallel, bounded.

The order (``handlers.ops.fleet`` has the Slack side):

1. Compare-and-swap ``approved -> running`` (only one runner wins), then one
   ``fleet_panels`` row per planned panel, ``queued`` (``bot.store.fleets``).
2. ``fleet_concurrency`` panels at a time. Each panel sends, per leg, one run request
   over its own engine client (its own SSH session) naming that panel's approved plan;
   the engine re-checks it and refuses a changed one before it changes anything. Each
   step saves the panel's run id and last ``seq``, so a restarted bot re-attaches.
3. A failed panel rolls back by itself (the engine does that) and gets one thread
   reply; the others go on, unless ``stop_on_failure`` (then the queued ones are not
   started). Each panel's end is written with its audit record (``fleet.panel``).
4. Slack sees one checklist message, updated in place at most every
   ``update_interval_s`` (coalesced: Slack allows ``chat.update`` about 50 times a
   minute; the Web client retries a 429 after its ``Retry-After``), the card's count,
   a closing summary and the whole per-panel table as a CSV file.

A bot that stops mid-run leaves the request ``running``; ``resume`` starts the queued
panels and re-attaches the running ones from their last ``seq``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from slack_sdk import WebClient

from bot.audit import AuditLog
from bot.engine_client import EngineClient
from bot.errors import BotError, RemoteEngineError
from bot.runner import run_request
from bot.store import Store
from engine.protocol import (
    CLOSING_TYPES,
    MISMATCH_CODES,
    NOTHING_CHANGED_CODES,
    PROTOCOL_VERSION,
    Request,
    RequestError,
)
from handlers import cards, ops
from handlers.access import AccessPolicy
from handlers.ops import fleet as f
from handlers.ops import fleet_model as fm
from handlers.ops import fleet_views as fv
from handlers.rotation_request import Person, RotationRequest, State

log = logging.getLogger(__name__)

EngineClients = Callable[[str], EngineClient]
#: a run saved as started that its host does not know: asked again this often, this far apart
UNKNOWN_RUN_RETRIES = 2
UNKNOWN_RUN_WAIT_S = 1.0


class StoreOffboarding:
    """``handlers.ops.fleet.Offboarding`` over the store: the person is recorded as
    offboarded (their approvals no longer count) and their TOTP enrollment removed."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def revoke(self, user_id: str, *, by: Person, request_id: str) -> bool:
        self.store.mark_offboarded(user_id, request_id=request_id, actor=by.key)
        removed = self.store.reset_enrollment(user_id, actor=by.key, detail={"offboarded_by": request_id})
        return removed is not None

    def is_offboarded(self, user_id: str) -> bool:
        return self.store.is_offboarded(user_id)

    def refused(self, person: Person, act: str) -> None:
        data = {"user": person.user_id, "act": act, "why": "offboarded"}
        AuditLog(self.store).append("person.refused", "", person.key, data)


class _Stopping(Exception):
    """The bot is stopping: the panel stays ``running`` for the next start to re-attach."""


class FleetRunner:
    """Owns the threads of running fleets (one coordinator per fleet, plus its panels')."""

    def __init__(
        self,
        *,
        store: Store,
        audit: AuditLog,
        engine_clients: EngineClients,
        client: WebClient,
        policy: AccessPolicy,
        settings: f.FleetSettings,
        clock: Callable[[], float] = time.time,
        update_interval_s: float = 3.0,
    ) -> None:
        self.store = store
        self.audit = audit
        self.engine_clients = engine_clients
        self.client = client
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self.update_interval_s = update_interval_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        #: called after each fleet's final report (the bot refreshes its Home tabs)
        self.on_finished: Callable[[RotationRequest], None] | None = None

    # --- entry points ------------------------------------------------------------------

    def start(self, request_id: str) -> threading.Thread | None:
        with self._lock:
            if self._stopping.is_set() or request_id in self._threads:
                return None
            thread = threading.Thread(target=self._guarded, args=(request_id,), name=f"fleet-{request_id}", daemon=True)
            self._threads[request_id] = thread
        thread.start()
        return thread

    def resume(self, requests: Iterable[RotationRequest]) -> list[threading.Thread]:
        return [t for r in requests if (t := self.start(r.id)) is not None]

    def close(self, wait: bool = True) -> None:
        self._stopping.set()
        if wait:
            with self._lock:
                threads = list(self._threads.values())
            for thread in threads:
                thread.join(timeout=30)

    def wait(self, request_id: str, timeout: float = 60.0) -> None:
        with self._lock:
            thread = self._threads.get(request_id)
        if thread is not None:
            thread.join(timeout)

    def _guarded(self, request_id: str) -> None:
        try:
            self._run(request_id)
        except _Stopping:
            log.info("stopped following fleet %s; the next start resumes it", request_id)
        except Exception:
            log.exception("the fleet run %s failed in the bot", request_id)
        finally:
            with self._lock:
                self._threads.pop(request_id, None)

    # --- one fleet ---------------------------------------------------------------------

    def _run(self, request_id: str) -> None:
        request = self.store.get(request_id)
        if request is None or request.state not in (State.APPROVED, State.RUNNING):
            return
        if request.state == State.APPROVED:
            started = self.store.update(
                request.evolve(state=State.RUNNING, started_at=self.clock()),
                expected_version=request.version,
                event="started",
                actor="bot",
            )
            if started is None:
                return
            request, started = started, None  # one reference, let go below
        self.store.add_fleet_panels(
            request.id,
            [
                (mem["panel"], n, int(mem.get("values") or 0), mem.get("legs") or [])
                for n, mem in enumerate(fm.runnable(request.plan))
            ],
        )
        # from here on, memory holds the card's lines, not every panel's plan: a worker reads
        # its panel's plan from the store when it takes the panel
        request = fv.running_copy(request)
        runs = {run.panel: run for run in self.store.fleet_panels(request.id)}
        reporter = _Reporter(self, request, runs)
        stop = threading.Event()
        try:
            todo = [run for run in runs.values() if not run.final]
            todo.sort(key=lambda r: (r.state != "running", r.position))  # re-attach first
            queue = iter(todo)
            take = threading.Lock()

            def worker() -> None:  # ``concurrency`` workers take the next panel: no task per panel
                while not self._stopping.is_set():
                    with take:
                        run = next(queue, None)
                    if run is None:
                        return
                    self._panel(request, run, reporter, stop)

            with ThreadPoolExecutor(
                max_workers=self.settings.concurrency, thread_name_prefix=f"panel-{request.id}"
            ) as pool:
                futures = [pool.submit(worker) for _ in range(min(self.settings.concurrency, len(todo)))]
                wait(futures)
                for future in futures:
                    if isinstance(future.exception(), _Stopping):
                        raise _Stopping
        finally:
            reporter.stop(drain=not self._stopping.is_set())
        if self._stopping.is_set():
            raise _Stopping
        self._close(request.id, reporter.snapshot())

    def _panel(
        self,
        fleet: RotationRequest,
        run: fm.PanelRun,
        reporter: _Reporter,
        stop: threading.Event,
    ) -> None:
        if self._stopping.is_set():
            raise _Stopping
        if stop.is_set() and run.state == "queued":
            self._end(
                reporter,
                replace(run, state="skipped", message="not started: an earlier panel failed (stop_on_failure)"),
            )
            return
        if run.state == "queued":  # claim it: another runner (a replica resuming too) may race
            if not self.store.claim_panel_run(run.fleet_id, run.panel):
                log.info("panel %s of fleet %s was started by another runner", run.panel, fleet.id)
                return
            run = replace(run, state="running")
        legs = self._legs(fleet.id, run.panel)
        if not legs:  # never run a panel whose approved plan is not found
            missing = "its approved plan was not found: nothing was changed; request it again"
            self._end(reporter, replace(run, state="refused", code="plan_missing", message=missing,
                                        finished_at=self.clock()))  # fmt: skip
            return
        try:
            while run.leg < len(legs):
                run = self._leg(fleet, run, legs[run.leg], reporter)
                if run.final:
                    break
                run = replace(run, leg=run.leg + 1, run_id="", last_seq=0)
            if not run.final:
                run = replace(run, state="verified", finished_at=self.clock())
        except _Stopping:
            raise
        except Exception as exc:  # one panel's surprise must not stop the others
            if self._stopping.is_set():
                raise _Stopping from exc
            log.exception("panel %s of fleet %s failed in the bot", run.panel, fleet.id)
            message = f"the bot failed following it ({type(exc).__name__})"
            run = replace(run, state="failed", code="bot_error", message=message, finished_at=self.clock())
        self._end(reporter, run)
        if run.state != "verified" and self.settings.stop_on_failure:
            stop.set()

    def _legs(self, fleet_id: str, panel: str) -> list[Any]:
        """The panel's bound plan, from its row (a row written by an older bot has none: then
        from the stored request, read for this panel and let go)."""
        legs = self.store.panel_plan(fleet_id, panel)
        if legs is None:
            stored = self.store.get(fleet_id)
            found = [mem for mem in fm.runnable(stored.plan) if mem["panel"] == panel] if stored else []
            legs = list(found[0].get("legs") or []) if found else []
        return fm.leg_plans(legs)

    def _leg(
        self, fleet: RotationRequest, run: fm.PanelRun, plan: Any, reporter: _Reporter, attempt: int = 0
    ) -> fm.PanelRun:
        """One engine run of one panel (a new one, or re-attached after a restart).

        A run the bot saved as started but its host never heard of (the bot stopped between
        saving and sending) is asked for again a few times, then started afresh: the engine
        re-checks the approved plan, so a run that did start meanwhile makes this one a
        refusal (nothing changed), never a second rotation."""
        client = self.engine_clients(run.panel)
        attaching = run.state == "running" and bool(run.run_id)
        if attaching:
            request = Request(
                v=PROTOCOL_VERSION, id=run.run_id, op="attach", rotation_id=run.run_id, after_seq=run.last_seq
            )
        else:
            run_id = f"{fleet.id}.p{run.position:04d}.{run.leg}"
            leg_request = RotationRequest(
                id=run_id, op=plan.op, panel=run.panel, reason=fleet.reason, requester=fleet.requester,
                channel_id=fleet.channel_id, plan=plan, created_at=fleet.created_at, expires_at=fleet.expires_at,
                approvals=fleet.approvals, all_agents=plan.all_agents,
            )  # fmt: skip
            try:
                host_key = client.host_key_fingerprint
                request = run_request(leg_request)
            except (BotError, RequestError) as exc:
                return replace(run, state="refused", code=exc.code, message=exc.message, finished_at=self.clock())
            if host_key != plan.host_key_fingerprint:
                changed = f"the host key changed since the plan ({host_key})"
                return replace(run, state="refused", code="host_key_changed", message=changed, finished_at=self.clock())
            run = replace(run, state="running", run_id=run_id, last_seq=0, step="",
                          started_at=run.started_at or self.clock())  # fmt: skip
            if not run.old_fingerprint and plan.key_fingerprint:
                run = replace(run, old_fingerprint=plan.key_fingerprint)
            self.store.save_panel_run(run)
            reporter.changed(run)
        closing: dict[str, Any] | None = None
        highest = 0
        try:
            for event in client.run(request):
                if self._stopping.is_set():
                    raise _Stopping
                kind = event.get("type")
                if kind in CLOSING_TYPES:
                    closing = event
                    break
                if kind != "step":
                    continue
                highest = max(highest, int(event.get("index") or 0))
                run = replace(
                    run, step=str(event.get("name") or run.step), last_seq=max(run.last_seq, int(event.get("seq") or 0))
                )
                self.store.save_panel_run(run)
                reporter.changed(run)
        except RemoteEngineError as exc:
            closing = dict(exc.event)
        except BotError as exc:
            if self._stopping.is_set():
                raise _Stopping from exc
            closing = {
                "type": "error",
                "code": exc.code,
                "message": f"lost contact with the engine: {exc.message}",
                "rolled_back": None,
            }
        if closing is None:
            if self._stopping.is_set():
                raise _Stopping
            closing = {
                "type": "error",
                "code": "engine_crashed",
                "message": "the engine's event stream ended without a result",
                "rolled_back": None,
            }
        if attaching and closing.get("code") == "unknown_rotation" and not self._stopping.is_set():
            if attempt < UNKNOWN_RUN_RETRIES:
                self._stopping.wait(UNKNOWN_RUN_WAIT_S)
                return self._leg(fleet, run, plan, reporter, attempt + 1)
            log.info("%s never reached %s; starting it afresh", run.run_id, run.panel)
            return self._leg(fleet, replace(run, state="queued", run_id="", last_seq=0), plan, reporter)
        return self._leg_end(run, plan.op, closing, highest)

    def _leg_end(self, run: fm.PanelRun, op: str, closing: dict[str, Any], highest: int) -> fm.PanelRun:
        now = self.clock()
        key = _key_fingerprints(op, closing)
        if closing.get("type") == "result" and closing.get("ok") is not False:
            old = key.get("old_fingerprint") or run.old_fingerprint
            return replace(
                run, new_fingerprint=key.get("new_fingerprint") or run.new_fingerprint, old_fingerprint=old, step=""
            )
        code = str(closing.get("code") or "engine_error")
        message = str(closing.get("message") or code)
        if key.get("new_fingerprint"):  # the key that was tried (and rolled back)
            run = replace(run, new_fingerprint=key["new_fingerprint"])
        if closing.get("type") == "result":  # ok False: some parts or agents failed
            return replace(run, state="failed", code=code or "partial", message=message, finished_at=now)
        if closing.get("rolled_back") is True:
            return replace(run, state="rolled_back", code=code, message=message, finished_at=now)
        nothing = closing.get("rolled_back") is None and (
            code in MISMATCH_CODES or code in NOTHING_CHANGED_CODES or highest <= 1
        )
        return replace(run, state="refused" if nothing else "failed", code=code, message=message, finished_at=now)

    def _end(self, reporter: _Reporter, run: fm.PanelRun) -> None:
        record = {
            "panel": run.panel, "outcome": run.state, "run_id": run.run_id, "code": run.code,
            "old_fingerprint": run.old_fingerprint, "new_fingerprint": run.new_fingerprint,
            "values": run.values, "seconds": round(run.seconds, 3) if run.seconds is not None else None,
        }  # fmt: skip
        self.store.save_panel_run(run, audit=record)
        reporter.changed(run)
        if run.state in ("rolled_back", "failed", "refused"):  # a thread reply only for a failure
            reporter.reply(fv.failure_reply(reporter.request, run))

    # --- the end -----------------------------------------------------------------------

    def _close(self, request_id: str, runs: list[fm.PanelRun]) -> None:
        stored = self.store.fleet_panels(request_id)
        if any(not run.final for run in stored):  # another runner still has some: it closes
            log.info("fleet %s has panels another runner follows; it will close it", request_id)
            return
        runs = stored
        counts = fm.count_runs(runs)
        verified = counts.get("verified", 0)
        request = self.store.get(request_id)
        if request is None or request.state != State.RUNNING:
            return
        outcome: dict[str, Any] = {
            "ok": verified == len(runs),
            "counts": counts,
            "verified": verified,
            "total": len(runs),
            "not_verified": [r.panel for r in runs if r.state != "verified"][:200],
            "code": "" if verified == len(runs) else "fleet_partial",
            "rolled_back": None,
        }
        took = (self.clock() - request.started_at) if request.started_at else 0.0
        outcome["duration_ms"] = int(took * 1000)
        if request.progress.get("offboarded"):
            outcome["offboarded"] = request.progress["offboarded"]
        try:
            anchor = self.audit.anchor()
            outcome["audit"] = {"seq": anchor.seq, "digest": anchor.digest}
        except BotError as exc:
            log.warning("no audit anchor for fleet %s: %s", request_id, exc.message)
        final = self.store.update(
            request.evolve(
                state=State.DONE if outcome["ok"] else State.FAILED,
                finished_at=self.clock(),
                progress={},
                outcome=outcome,
            ),
            expected_version=request.version,
            event="finished" if outcome["ok"] else "failed",
            actor="bot",
            detail={"verified": verified, "total": len(runs)},
        )
        if final is None:
            return
        cards.refresh_card(self.client, final, self.policy, self.clock())
        cards.post_thread(self.client, final, fv.summary_message(final, runs, took))
        fv.upload_table(
            self.client, final, fv.table_csv(final, runs), f"{final.id}-panels.csv", f"Panels of {final.id}"
        )
        cards.direct_message(
            self.client,
            final.requester.user_id,
            f"Your fleet request `{final.id}` ended: {verified}/{len(runs)} panels verified.",
        )
        if self.on_finished is not None:
            try:
                self.on_finished(final)
            except Exception:
                log.exception("could not refresh the Home tabs after %s", final.id)


def _key_fingerprints(op: str, closing: dict[str, Any]) -> dict[str, str]:
    """The key's old and new fingerprints in a leg's closing event: a key rotation's own, or
    the key part's of an incident rotation (a DB password or agent leg has none)."""
    return ops.get(op).key_fingerprints(closing)


class _Reporter:
    """One fleet's Slack updates on their own thread: failure replies in order, and the
    checklist message and the card, coalesced to one update per ``update_interval_s``."""

    def __init__(self, runner: FleetRunner, request: RotationRequest, runs: dict[str, fm.PanelRun]) -> None:
        self.runner = runner
        self.request = request
        self._runs = dict(runs)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty = True
        self._replies: list[str] = []
        self._stopped = False
        self._drain = True
        self._checklist_ts = str(request.progress.get("checklist_ts") or "") or None
        self._thread = threading.Thread(target=self._loop, name=f"fleet-report-{request.id}", daemon=True)
        self._thread.start()

    def changed(self, run: fm.PanelRun) -> None:
        with self._lock:
            self._runs[run.panel] = run
            self._dirty = True
            self._wake.notify()

    def reply(self, text: str) -> None:
        with self._lock:
            self._replies.append(text)
            self._wake.notify()

    def snapshot(self) -> list[fm.PanelRun]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: r.position)

    def stop(self, drain: bool) -> None:
        with self._lock:
            self._stopped = True
            self._drain = drain
            self._wake.notify()
        self._thread.join(timeout=120 if drain else 5)

    def _loop(self) -> None:
        last = 0.0
        while True:
            with self._lock:
                while not self._stopped and not self._replies and not self._dirty:
                    self._wake.wait()
                if self._stopped and not self._drain:
                    return
                replies, self._replies = self._replies, []
                finished = self._stopped
            for text in replies:
                cards.post_thread(self.runner.client, self.request, text)
            wait_s = last + self.runner.update_interval_s - time.monotonic()
            if wait_s > 0 and not finished:
                with self._lock:
                    self._wake.wait_for(lambda: self._stopped, timeout=wait_s)
                continue
            with self._lock:
                dirty, self._dirty = self._dirty, False
                runs = sorted(self._runs.values(), key=lambda r: r.position)
            if dirty:
                last = time.monotonic()
                self._show(runs)
            if finished:
                with self._lock:
                    if not self._replies and not self._dirty:
                        return

    def _show(self, runs: list[fm.PanelRun]) -> None:
        try:
            message = fv.checklist_message(self.request, runs)
            if self._checklist_ts is None:
                self._checklist_ts = cards.post_thread(self.runner.client, self.request, message)
                if self._checklist_ts:
                    self._save_checklist_ts(self._checklist_ts)
            else:
                self.runner.client.chat_update(channel=self.request.channel_id, ts=self._checklist_ts, **message)
            counts = fm.count_runs(runs)
            shown = self.request.evolve(progress={**self.request.progress, "counts": counts})
            cards.refresh_card(self.runner.client, shown, self.runner.policy, self.runner.clock())
        except Exception:
            log.warning("could not update the checklist of %s", self.request.id, exc_info=True)

    def _save_checklist_ts(self, ts: str) -> None:
        """Kept with the request, so that a restarted bot updates the same message."""
        store = self.runner.store
        for _ in range(20):
            current = store.get(self.request.id)
            if current is None:
                return
            stored = store.update(
                current.evolve(progress={**current.progress, "checklist_ts": ts}),
                expected_version=current.version,
                event="checklist_posted",
                actor="bot",
                record=False,
            )
            if stored is not None:  # ``self.request`` stays: the same plan, no second copy
                return
