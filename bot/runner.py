"""Runs an approved request through its panel's engine and reports it in Slack.

The order matters:

1. Compare-and-swap ``approved -> running``. Only one runner (thread, process
   or replica) wins; the others stop here. This is the "never run twice" gate.
2. Send one request, in one SSH session: it names the approved plan (the
   engine's plan hash, the current key's fingerprint or the exact agent list).
   The engine re-plans in the same process, under the panel's lock, and refuses
   a mismatch (``plan_mismatch``, ``key_mismatch``, ``agents_mismatch``) before
   it changes anything: the approvals are then void and the card says what
   changed. The SSH host key is pinned by the connection itself.
3. For each engine event: audit it, save its ``seq`` with the request (so a
   restarted bot re-attaches after it), then report it (a thread reply per
   finished step, the card's current step).
4. The closing event decides ``done``, ``failed`` or ``voided``; the card and a
   final thread reply get the summary, and the requester gets a direct message.

A bot that stops while a rotation runs leaves the request ``running``; the
engine on the host carries on regardless, and ``resume`` re-attaches from
the last saved ``seq`` and reports it to the end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

from slack_sdk import WebClient

from bot.audit import AuditLog
from bot.engine_client import EngineClient
from bot.errors import BotError, EngineClientError, RemoteEngineError
from bot.store import Store
from engine.protocol import (
    CLOSING_TYPES,
    MISMATCH_CODES,
    PROTOCOL_VERSION,
    Request,
    RequestError,
)
from handlers import blocks, cards, ops
from handlers import messages as m
from handlers.access import AccessPolicy
from handlers.ending import Ending, kept_outcome
from handlers.plan_view import PlanView
from handlers.ports import Planner
from handlers.rotation_request import RotationRequest, State

log = logging.getLogger(__name__)

EngineClients = Callable[[str], EngineClient]


class Delegate(Protocol):
    """A registered operation's own runner (``bot.fleet_runner.FleetRunner``)."""

    def start(self, request_id: str) -> object: ...

    def resume(self, requests: Iterable[RotationRequest]) -> object: ...

    def close(self, wait: bool = True) -> None: ...


class _Shutdown(Exception):
    """The bot is stopping: leave the request ``running`` for the next start to re-attach."""


class Runner:
    """Owns the threads that run and follow rotations."""

    def __init__(
        self,
        *,
        store: Store,
        audit: AuditLog,
        engine_clients: EngineClients,
        planner: Planner,
        client: WebClient,
        policy: AccessPolicy,
        clock: Callable[[], float] = time.time,
        threads: int = 4,
    ) -> None:
        self.store = store
        self.audit = audit
        self.engine_clients = engine_clients
        self.planner = planner
        self.client = client
        self.policy = policy
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rotation")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: set[str] = set()
        #: called after each run's final report (the bot refreshes its Home tabs)
        self.on_finished: Callable[[RotationRequest], None] | None = None
        #: operations that run themselves (``handlers.ops``, e.g. the fleet), by op name
        self.delegates: dict[str, Delegate] = {}

    # --- entry points ------------------------------------------------------------------

    def start(self, request_id: str) -> Future[None] | None:
        """Run an approved request in the background (once per process at a time)."""
        if self.delegates:
            request = self.store.get(request_id)
            if request is not None and (delegate := self.delegates.get(request.op)) is not None:
                delegate.start(request_id)
                return None
        return self._submit(request_id, self._run)

    def resume(self) -> list[Future[None]]:
        """After a restart: run approved requests, re-attach running ones, finish reports."""
        futures = []
        for request in self.store.list_in_states([State.APPROVED, State.RUNNING]):
            if (delegate := self.delegates.get(request.op)) is not None:
                delegate.resume([request])
                continue
            work = self._run if request.state == State.APPROVED else self._reattach
            future = self._submit(request.id, work)
            if future is not None:
                futures.append(future)
        for request in self.store.recent_final(limit=20):
            if Ending.of(request.outcome).reported is False:
                future = self._submit(request.id, self._report_again)
                if future is not None:
                    futures.append(future)
        return futures

    def close(self, wait: bool = True) -> None:
        """Stop following engines (their rotations go on) and wait for the threads."""
        self._stopping.set()
        for delegate in set(self.delegates.values()):
            delegate.close(wait=wait)
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def _submit(self, request_id: str, work: Callable[[str], None]) -> Future[None] | None:
        with self._lock:
            if request_id in self._active or self._stopping.is_set():
                return None
            self._active.add(request_id)

        def guarded() -> None:
            try:
                work(request_id)
            except _Shutdown:
                log.info("stopped following %s; the next start re-attaches", request_id)
            except Exception:
                log.exception("the run of %s failed in the bot", request_id)
            finally:
                with self._lock:
                    self._active.discard(request_id)

        return self._executor.submit(guarded)

    # --- one run -----------------------------------------------------------------------

    def _run(self, request_id: str) -> None:
        request = self.store.get(request_id)
        if request is None or request.state != State.APPROVED:
            return
        try:
            client = self.engine_clients(request.panel)
            host_key = client.host_key_fingerprint
            engine_request = run_request(request)
        except (BotError, RequestError) as exc:
            self._finish(
                request,
                State.FAILED,
                {"ok": False, "code": exc.code, "message": exc.message, "rolled_back": None,
                 "nothing_changed": True},
            )  # fmt: skip
            return
        if host_key != request.plan.host_key_fingerprint:
            # the pinned host key changed since the plan: no session to a host nobody approved
            now = replace(request.plan, host_key_fingerprint=host_key)
            self._void(request, request.plan.differences(now), now.hash)
            return
        running = self.store.update(
            request.evolve(state=State.RUNNING, started_at=self.clock(), progress={}),
            expected_version=request.version,
            event="started",
            actor="bot",
        )
        if running is None:
            log.info("%s was started elsewhere", request_id)
            return
        self._refresh(running)
        self._follow(running, lambda: client.run(engine_request))

    def _reattach(self, request_id: str) -> None:
        request = self.store.get(request_id)
        if request is None or request.state != State.RUNNING:
            return
        log.info("re-attaching to %s after seq %s", request_id, request.last_seq)
        attach = Request(
            v=PROTOCOL_VERSION,
            id=request.id,
            op="attach",
            rotation_id=request.id,
            after_seq=request.last_seq,
        )
        self._post(request, m.reattached(request.last_seq))
        self._follow(request, lambda: self.engine_clients(request.panel).run(attach))

    def _void_from_refusal(self, request: RotationRequest, closing: dict[str, Any]) -> None:
        """The engine re-planned and refused: the plan changed since approval, so the
        approvals are void. The card says what changed, in the words it used."""
        approved = request.plan
        details = closing.get("plan")
        differences: list[str] = []
        new_hash = ""
        if isinstance(details, dict):
            try:
                host_key = self.engine_clients(request.panel).host_key_fingerprint
            except BotError:
                host_key = approved.host_key_fingerprint
            now = PlanView.from_engine(
                details,
                panel=request.panel,
                op=request.op,
                agents=approved.agents,
                all_agents=approved.all_agents,
                host_key_fingerprint=host_key,
                panel_host=approved.panel_host,
            )
            differences = approved.differences(now)
            new_hash = now.hash
        if not differences:
            differences = [str(d) for d in closing.get("differences") or ()] or [
                str(closing.get("message") or "the engine's plan changed")
            ]
        self._void(request, differences, new_hash)

    def _void(self, request: RotationRequest, differences: list[str], new_hash: str) -> None:
        voided = self.store.update(
            request.evolve(
                state=State.VOIDED,
                finished_at=self.clock(),
                outcome={"differences": differences, "new_plan_hash": new_hash},
            ),
            expected_version=request.version,
            event="voided",
            actor="bot",
            detail={"differences": differences},
        )
        if voided is None:
            return
        self._refresh(voided)
        self._post(voided, f"{voided.requester.mention} " + m.voided_reply(differences))

    # --- following the engine ----------------------------------------------------------

    def _follow(
        self, request: RotationRequest, events: Callable[[], Iterable[dict[str, Any]]]
    ) -> None:
        reporter = _SlackReporter(self, request.id)
        try:
            self._read(request, events, reporter)
        finally:
            reporter.stop(drain=not self._stopping.is_set())

    def _read(
        self,
        request: RotationRequest,
        events: Callable[[], Iterable[dict[str, Any]]],
        reporter: _SlackReporter,
    ) -> None:
        """Read the engine's events as fast as it writes them; Slack hears of them from
        ``reporter``'s thread, so a slow or rate-limited Slack never stalls the engine."""
        current = request
        closing: dict[str, Any] | None = None
        checklist = ops.get(request.op).progress(request.plan)  # a message kept up to date, or None
        try:
            for event in _events(events):
                if self._stopping.is_set():
                    raise _Shutdown
                kind = event.get("type")
                self.audit.append(f"engine.{kind}", request.id, "engine", event)
                if kind in CLOSING_TYPES:
                    closing = event
                    break
                if kind != "step":
                    continue
                updated = self._save_step(current, event)
                if updated is None:
                    log.info("%s is followed by another runner; stopping here", request.id)
                    return
                current = updated
                if checklist is not None and checklist.update(event):
                    reporter.checklist(current, checklist.message(current.panel))
                    continue  # the checklist, updated in place, says it: no reply of its own
                if event.get("state") == "started":
                    reporter.card(current)
                else:
                    reporter.reply(current, m.step_reply(event))
        except _Shutdown:
            raise
        except RemoteEngineError as exc:
            closing = dict(exc.event)
        except (EngineClientError, BotError) as exc:
            if self._stopping.is_set():
                raise _Shutdown from exc
            log.warning("lost the engine of %s: %s (%s)", request.id, exc.message, exc.code)
            closing = {
                "type": "error",
                "code": exc.code,
                "message": f"lost contact with the engine: {exc.message}",
                "rolled_back": None,
            }
        if self._stopping.is_set():
            raise _Shutdown
        if closing is None:
            closing = {
                "type": "error",
                "code": "engine_crashed",
                "message": "the engine's event stream ended without a result",
                "rolled_back": None,
            }
        reporter.stop(drain=True)  # every step reply before the summary
        latest = self.store.get(request.id) or current
        if latest.state != State.RUNNING:
            return
        self._close(latest, closing)

    def _save_step(self, request: RotationRequest, event: dict[str, Any]) -> RotationRequest | None:
        progress = {
            key: event[key]
            for key in ("name", "state", "index", "total", "agent")
            if event.get(key) is not None
        }
        highest = max(int(request.progress.get("highest", 0)), int(event.get("index") or 0))
        progress["highest"] = highest
        seq = int(event.get("seq") or request.last_seq)
        return self.store.update(
            request.evolve(progress=progress, last_seq=max(seq, request.last_seq)),
            expected_version=request.version,
            event="step",
            actor="engine",
            record=False,
        )

    def _close(self, request: RotationRequest, closing: dict[str, Any]) -> None:
        outcome = kept_outcome(closing, highest_step=int(request.progress.get("highest", 0)))
        ending = Ending.of(outcome)
        if not ending.ok and not ending.partial and ending.code in MISMATCH_CODES:
            self._void_from_refusal(request, closing)
            return
        if not ending.partial and "duration_ms" not in outcome and request.started_at:
            outcome["duration_ms"] = int((self.clock() - request.started_at) * 1000)
        self._finish(request, State.DONE if ending.ok else State.FAILED, outcome)

    def _finish(self, request: RotationRequest, state: State, outcome: dict[str, Any]) -> None:
        final = self.store.update(
            request.evolve(
                state=state,
                finished_at=self.clock(),
                progress={},
                outcome={**outcome, "reported": False},
            ),
            expected_version=request.version,
            event="finished" if state == State.DONE else "failed",
            actor="engine",
            detail={k: outcome.get(k) for k in ("code", "rolled_back", "verified") if k in outcome},
        )
        if final is not None:
            self._report(final)

    def _report(self, final: RotationRequest) -> None:
        """Card, final thread reply, requester notice; then mark the outcome reported.

        The summary carries the audit chain's head (``audit #SEQ DIGEST``): an anchor
        outside the store that ``audit verify --slack`` checks the log against."""
        if Ending.of(final.outcome).audit is None:
            try:
                anchor = self.audit.anchor()
                final = final.evolve(
                    outcome={**final.outcome, "audit": {"seq": anchor.seq, "digest": anchor.digest}}
                )
            except BotError as exc:
                log.warning("no audit anchor for the summary of %s: %s", final.id, exc.message)
        self._refresh(final)
        self._post(final, blocks.summary_message(final))
        headline = blocks.status_lines(
            final,
            approvers=self.policy.approver_mentions,
            approvals_required=self.policy.approvals_required,
            now=self.clock(),
        )[-1]
        cards.direct_message(
            self.client,
            final.requester.user_id,
            m.requester_notice(final.id, final.panel, final.state.value, headline),
        )
        self.store.update(
            final.evolve(outcome={**final.outcome, "reported": True}),
            expected_version=final.version,
            event="reported",
            actor="bot",
            record=False,
        )
        if self.on_finished is not None:
            try:
                self.on_finished(final)
            except Exception:
                log.exception("could not refresh the Home tabs after %s", final.id)

    def _report_again(self, request_id: str) -> None:
        request = self.store.get(request_id)
        if request is not None and Ending.of(request.outcome).reported is False:
            self._report(request)

    # --- Slack -------------------------------------------------------------------------

    def _refresh(self, request: RotationRequest) -> None:
        cards.refresh_card(self.client, request, self.policy, self.clock())

    def _post(self, request: RotationRequest, text: str | blocks.Message) -> None:
        cards.post_thread(self.client, request, text)


def run_request(request: RotationRequest) -> Request:
    """The one engine request that runs an approved request: it names the approved plan
    (the engine's plan hash, the current key or the exact agents), which the engine
    re-checks in the same process before it changes anything."""
    plan = request.plan
    common: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": request.id,
        "op": request.op,
        "requested_by": request.requester.user_id,
        "approved_by": [a.person.user_id for a in request.approvals if a.person][:20],
        "reason": request.reason,
        "plan_hash": plan.engine_plan_hash or None,
    }
    return Request(**common, **ops.get(request.op).run_fields(request))


def _events(make: Callable[[], Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    yield from make()


class _SlackReporter:
    """One run's Slack updates, in order, on their own thread.

    Thread replies are all posted, in order. Card updates are coalesced: when
    Slack is slow (or rate-limits us), the states queued meanwhile collapse into
    one update with the newest.
    """

    def __init__(self, runner: Runner, request_id: str) -> None:
        self.runner = runner
        self._queue: queue.Queue[tuple[str, RotationRequest, Any] | None] = queue.Queue()
        #: the incident checklist's own message, once posted (then updated in place)
        self._checklist_ts: str | None = None
        self._newest_card: RotationRequest | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"report-{request_id}", daemon=True)
        self._thread.start()

    def card(self, request: RotationRequest) -> None:
        with self._lock:
            self._newest_card = request
        self._queue.put(("card", request, ""))

    def reply(self, request: RotationRequest, text: str) -> None:
        self._queue.put(("reply", request, text))

    def checklist(self, request: RotationRequest, message: blocks.Message) -> None:
        self._queue.put(("checklist", request, message))

    def stop(self, drain: bool) -> None:
        """Finish (``drain``: after everything queued is sent) and wait for the thread."""
        if self._stopped:
            return
        self._stopped = True
        if not drain:
            with self._queue.mutex:
                self._queue.queue.clear()
        self._queue.put(None)
        self._thread.join(timeout=120 if drain else 5)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, request, text = item
            try:
                if kind == "reply":
                    self.runner._post(request, text)
                    continue
                if kind == "checklist":
                    self._show_checklist(request, text)
                    continue
                with self._lock:
                    newest, self._newest_card = self._newest_card, None
                if newest is not None:  # None: a later state was sent already
                    self.runner._refresh(newest)
            except Exception:
                log.exception("could not report a step of %s in Slack", request.id)

    def _show_checklist(self, request: RotationRequest, message: blocks.Message) -> None:
        """Post the checklist once, then update that one message (chat.update)."""
        if self._checklist_ts is None:
            self._checklist_ts = cards.post_thread(self.runner.client, request, message)
            return
        try:
            self.runner.client.chat_update(channel=request.channel_id, ts=self._checklist_ts, **message)
        except Exception:
            log.warning("could not update the incident checklist of %s", request.id)
