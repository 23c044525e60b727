"""A scripted engine for fast bot tests: the ``EngineClient`` interface, no panel behind it.

``FakeEngineHost`` plays one panel host. ``plan`` answers with ``plan_result``
(or ``plan_error``). A rotation runs on the host, in its own thread, like the
real engine that outlives its SSH session: its events go to the host's
journal, and clients follow the journal; ``attach`` replays the events after
a sequence number and follows the rest. ``pause_before(step)`` holds the
rotation before a step starts until the test releases it, so a test can
restart the bot in the middle of a run.

Events are shaped with ``engine.protocol`` helpers, so they look exactly like
the real engine's. Requests are checked the way the real engine checks them,
with the same code (``engine.protocol``): each request goes through its wire
form and ``parse_request_line`` (protocol version, operation, field types, a run
naming its plan), and a run is re-planned and compared with ``check_run`` (plan
hash, key fingerprint, exact agent list). A bot that sends a wrong request gets
the engine's refusal, and ``refusals`` lists them so a test can assert there
were none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from bot.errors import EngineCrashedError
from engine import protocol
from engine.protocol import KEY_STEPS, Request

OLD_FP = "3a9c41d2e5f60718"
NEW_FP = "77e1b0c9a1b2c3d4"
COLUMNS = {
    "oscam_installs.webif_password": 812,
    "saved_servers.ssh_credential_encrypted": 377,
    "email_settings.smtp_password": 1,
    "email_settings.mailgun_api_key": 14,
}
DETAILS = {
    "preflight": "1,204 values open with the current key · lock held",
    "stage": f"fingerprint {NEW_FP[:8]}… · escrowed (vault) · journal written",
    "reencrypt": "1,204 values in one transaction",
    "verify_db": "1,204/1,204 open with the new key, plaintext digests match",
    "write_env": "atomically · www-data:www-data 0640 · previous kept until done",
    "restart": "php8.3-fpm",
    "sweep": "0 values written under the old key during the switch",
    "verify": "1,204/1,204 · panel check 200 OK",
    "backup": "hook ran",
}


def plan_result(engine_version: str = "0.4.0", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "columns": dict(COLUMNS),
        "skipped": ["email_configurations"],
        "total": sum(COLUMNS.values()),
        "scheme": "iv12_tag_ct/base64",
        "scheme_description": "base64(iv·tag·ciphertext), key read as hex",
        "key_fingerprint": OLD_FP,
        "engine_version": engine_version,
        "panel": "prod-eu",
        "escrow": "escrowed (vault)",
    }
    data.update(overrides)
    return data


def successful_rotation() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for name in KEY_STEPS:
        events.append(protocol.step_event(name, "started"))
        events.append(protocol.step_event(name, "ok", DETAILS[name], elapsed_ms=100))
    events.append(
        protocol.result_event(
            "rotate-key",
            rotation_id="",
            state="DONE",
            verified=True,
            old_fingerprint=OLD_FP,
            new_fingerprint=NEW_FP,
            columns=dict(COLUMNS),
            skipped=["email_configurations"],
            total=sum(COLUMNS.values()),
            panel_check="200 OK",
            escrow="escrowed (vault)",
            duration_ms=6200,
            engine_version="0.4.0",
        )
    )
    return events


def rolled_back_rotation() -> list[dict[str, Any]]:
    """The panel check fails after the restart; the engine rolls back and verifies the old key."""
    events: list[dict[str, Any]] = []
    for name in KEY_STEPS[:6]:
        events.append(protocol.step_event(name, "started"))
        events.append(protocol.step_event(name, "ok", DETAILS[name], elapsed_ms=50))
    events.append(protocol.step_event("sweep", "started"))
    events.append(protocol.step_event("sweep", "ok", DETAILS["sweep"], elapsed_ms=30))
    events.append(protocol.step_event("verify", "started"))
    events.append(
        protocol.step_event(
            "verify",
            "failed",
            "panel check failed after restart: GET /health returned 500",
            elapsed_ms=300,
        )
    )
    events.append(protocol.step_event("rollback", "started"))
    events.append(
        protocol.step_event(
            "rollback",
            "ok",
            "1,204 values re-encrypted under the old key · .env restored · php8.3-fpm restarted",
            elapsed_ms=900,
        )
    )
    events.append(
        protocol.error_event(
            "panel_check_failed",
            "panel check failed after restart: GET /health returned 500",
            rolled_back=True,
            old_fingerprint=OLD_FP,
            new_fingerprint=NEW_FP,
            verified_old=True,
            duration_ms=2400,
        )
    )
    return events


LICENCE_MESSAGE = (
    'Hello MyOsicam support, the config/.env file of our MyOsicam panel "prod-eu" may have been '
    "disclosed. Please revoke our current PANEL_LICENSE_KEY and issue a new one."
)
MANUAL = [
    {"name": "PANEL_LICENSE_KEY", "present": True, "action": "contact MyOsicam support",
     "message": LICENCE_MESSAGE},
    {"name": "STRIPE_SECRET", "present": True, "action": "rotate at its issuer"},
]  # fmt: skip
DB_OLD_FP, DB_NEW_FP = "5b1e0c77aa01f2e3", "9d4f21a0b7c6e5d4"


def incident_plan_result(agents: tuple[str, ...] = ("agent-1", "agent-2")) -> dict[str, Any]:
    """``plan`` with ``incident``: the parts, the agents and what can't be rotated here."""
    base = plan_result()
    return {
        **base,
        "incident": True,
        "db_user": "myosicam",
        "password_fingerprint": DB_OLD_FP,
        "agents": [{"name": a} for a in agents],
        "parts": [
            {"part": "db_password", "title": "database password", "db_user": "myosicam", "available": True},
            {"part": "key", "title": "encryption key", "columns": dict(COLUMNS), "total": base["total"]},
            {"part": "agents", "title": "agent tokens", "configured": True, "total": len(agents),
             "agents": [{"name": a} for a in agents]},
        ],
        "manual": [dict(i) for i in MANUAL],
    }


def _part_events(part: str, state: str, detail: str, started: int) -> list[dict[str, Any]]:
    events = [protocol.step_event("part", "started", part, part=part)]
    if state != "started":
        events.append(protocol.step_event("part", state, detail, elapsed_ms=started, part=part))
    return events


def _incident_parts(key_state: str) -> list[dict[str, Any]]:
    t = protocol.now_ms()
    parts = [
        {"part": "db_password", "title": "database password", "state": "done", "started_at": t,
         "finished_at": t + 900, "old_fingerprint": DB_OLD_FP, "new_fingerprint": DB_NEW_FP,
         "db_user": "myosicam"},
        {"part": "key", "title": "encryption key", "state": key_state, "started_at": t + 900,
         "finished_at": t + 4000, "old_fingerprint": OLD_FP, "new_fingerprint": NEW_FP},
        {"part": "agents", "title": "agent tokens", "state": "done" if key_state == "done" else "not_started"},
    ]  # fmt: skip
    if key_state == "done":
        parts[2].update(started_at=t + 4000, finished_at=t + 6000, rotated=2, total=2)
    else:
        parts[1]["error"] = "panel check failed after restart: GET /health returned 500"
    return parts


def incident_rotation() -> list[dict[str, Any]]:
    """All three parts done and verified."""
    events = _part_events("db_password", "ok", f"{DB_OLD_FP}… → {DB_NEW_FP}… verified", 900)
    events += _part_events("key", "ok", f"{OLD_FP}… → {NEW_FP}… verified", 3100)
    events += _part_events("agents", "ok", "2 of 2 agents rotated and verified", 2000)
    events.append(protocol.result_event(
        "rotate-incident", rotation_id="", panel="prod-eu", state="DONE", parts=_incident_parts("done"),
        left=[], manual=[dict(i) for i in MANUAL], duration_ms=6000,
    ))  # fmt: skip
    return events


def incident_stopped_at_key() -> list[dict[str, Any]]:
    """The DB password is done; the key's panel check fails and it rolls back; agents untouched."""
    message = "panel check failed after restart: GET /health returned 500"
    events = _part_events("db_password", "ok", f"{DB_OLD_FP}… → {DB_NEW_FP}… verified", 900)
    events += _part_events("key", "failed", message, 3100)
    left = [{"part": "key", "title": "encryption key", "state": "rolled_back"},
            {"part": "agents", "title": "agent tokens", "state": "not_started"}]  # fmt: skip
    events.append(protocol.result_event(
        "rotate-incident", rotation_id="", panel="prod-eu", ok=False, state="STOPPED",
        parts=_incident_parts("rolled_back"), left=left, manual=[dict(i) for i in MANUAL],
        code="panel_check_failed", duration_ms=4000,
        message=f"The encryption key failed and was rolled back ({message}). "
                "Not started, untouched: agent tokens.",
        stopped={"part": "key", "code": "panel_check_failed", "message": message, "state": "rolled_back"},
    ))  # fmt: skip
    return events


def db_password_plan_result() -> dict[str, Any]:
    """``plan`` with ``db_password``: the login and its current password's fingerprint."""
    return {"panel": "prod-eu", "db_user": "myosicam", "db_host": "127.0.0.1", "account": "'myosicam'@'%'",
            "env_key": "DB_PASSWORD", "password_fingerprint": DB_OLD_FP, "engine_version": "0.4.0"}  # fmt: skip


def db_password_rotation() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for name in protocol.DB_PASSWORD_STEPS:
        events.append(protocol.step_event(name, "started"))
        events.append(protocol.step_event(name, "ok", "", elapsed_ms=100))
    events.append(protocol.result_event(
        "rotate-db-password", rotation_id="", panel="prod-eu", db_user="myosicam", state="DONE",
        old_fingerprint=DB_OLD_FP, new_fingerprint=DB_NEW_FP, duration_ms=1800,
    ))  # fmt: skip
    return events


class FakeEngineHost:
    """One panel host's engine, shared by every client (and bot) that talks to it."""

    def __init__(
        self, *, host_key: str = "SHA256:Yx0fakehostkeyQ", engine_version: str = "0.4.0"
    ) -> None:
        self.host_key = host_key
        self.plan_result: dict[str, Any] = plan_result(engine_version)
        self.plan_error: dict[str, Any] | None = None
        self.rotation_script: Callable[[], list[dict[str, Any]]] = successful_rotation
        #: the requests the fake engine accepted (and so ran), in order
        self.requests: list[Request] = []
        #: what ``status`` answers: when the key and agent tokens were last rotated
        #: (``secret_ages``) and the host's run record (``runs``); tests set them
        self.status_result: dict[str, Any] = {
            "panel": "prod-eu",
            "unfinished": None,
            "running": None,
            "unfinished_agents": [],
            "recent": [],
            "runs": [],
            "known_keys": 1,
            "secret_ages": {"key_rotated_at": None, "agents": []},
            "engine_version": engine_version,
        }
        #: (request id, error code) of every request the fake engine refused
        self.refusals: list[tuple[str, str]] = []
        self._journal: dict[str, list[dict[str, Any]]] = {}
        self._cond = threading.Condition()
        self._gates: dict[str, threading.Event] = {}
        self._reached: dict[str, threading.Event] = {}

    def client(self) -> FakeEngineClient:
        return FakeEngineClient(self)

    def pause_before(self, step: str) -> threading.Event:
        """Hold rotations before ``step`` starts; ``.set()`` the returned event to go on."""
        gate = threading.Event()
        self._gates[step] = gate
        self._reached[step] = threading.Event()
        return gate

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    def wait_reached(self, step: str, timeout: float = 15.0) -> None:
        if not self._reached[step].wait(timeout):
            raise AssertionError(f"the rotation did not reach {step} within {timeout} s")

    def ops(self, op: str) -> list[Request]:
        return [r for r in self.requests if r.op == op]

    # --- the plan, as the real engine computes and checks it ------------------------------

    def binding(self, request: Request) -> dict[str, Any]:
        """The plan's binding now, for the kind of plan or run ``request`` asks about."""
        panel = str(self.plan_result.get("panel", "prod-eu"))
        version = str(self.plan_result.get("engine_version", "0.4.0"))
        if request.op == "rotate-db-password" or (request.op == "plan" and request.db_password):
            return protocol.db_password_binding(
                panel=panel, engine_version=version, db_user=str(self.plan_result.get("db_user", "")),
                db_host=str(self.plan_result.get("db_host", "")),
                password_fingerprint=str(self.plan_result.get("password_fingerprint", "")),
                accounts=[str(a["account"]) if isinstance(a, dict) else str(a)
                          for a in self.plan_result.get("accounts") or []],
            )  # fmt: skip
        if request.op == "rotate-incident" or (request.op == "plan" and request.incident):
            return protocol.incident_binding(
                panel=panel, engine_version=version,
                key_fingerprint=str(self.plan_result.get("key_fingerprint", "")),
                scheme=str(self.plan_result.get("scheme", "")), agents=self.agent_names(),
                db_user=str(self.plan_result.get("db_user", "")),
                password_fingerprint=self.plan_result.get("password_fingerprint"),
                db_accounts=next((p.get("accounts") or [] for p in self.plan_result.get("parts") or []
                                  if p.get("part") == "db_password"), []),
            )  # fmt: skip
        if request.op == "rotate-agent" or (request.op == "plan" and (request.agents or request.all_agents)):
            known = self.agent_names()
            if request.all_agents:
                names = known
            else:
                names = [n for n in request.agents or () if not known or n in known]
            return protocol.agent_binding(panel=panel, engine_version=version, agents=names)
        return protocol.key_binding(
            panel=panel,
            engine_version=version,
            key_fingerprint=str(self.plan_result.get("key_fingerprint", "")),
            scheme=str(self.plan_result.get("scheme", "")),
        )

    def agent_names(self) -> list[str]:
        """The panel's agents now: the names in ``plan_result["agents"]``."""
        return [str(row["name"]) for row in self.plan_result.get("agents") or () if "name" in row]

    def plan_now(self, request: Request) -> dict[str, Any]:
        binding = self.binding(request)
        data = dict(self.plan_result)
        if binding["op"] == "rotate-incident":
            data["agents"] = list(binding["agents"])  # as the engine's incident plan names them
        elif "agents" in binding:
            rows = {str(r.get("name")): r for r in self.plan_result.get("agents") or ()}
            data["agents"] = [rows.get(n, {"name": n}) for n in binding["agents"]]
        return {**data, "plan_hash": protocol.plan_hash(binding)}

    def refuse(self, request: Request, raw: Request | bytes) -> dict[str, Any] | None:
        """The error the real engine would close with for this request, or None."""
        line = raw if isinstance(raw, bytes) else raw.to_line().encode()
        try:
            protocol.parse_request_line(line)
            if request.op in protocol.RUN_OPS and not request.dry_run:
                binding = self.binding(request)
                if request.op == "rotate-incident" and request.agents is None:  # as engine.ops.incident.rotation
                    request = request.replace(agents=binding["agents"])
                protocol.check_run(request, binding)
        except protocol.RequestError as exc:
            self.refusals.append((request.id, exc.code))
            return protocol.error_event(exc.code, exc.message)
        except protocol.PlanMismatchError as exc:
            self.refusals.append((request.id, exc.code))
            return protocol.error_event(
                exc.code, exc.message, plan=self.plan_now(request), differences=exc.differences
            )
        return None

    # --- the host side -----------------------------------------------------------------

    def _start_rotation(self, request: Request) -> None:
        with self._cond:
            if request.id in self._journal:
                raise RuntimeError(f"rotation {request.id} started twice")
            self._journal[request.id] = []
        thread = threading.Thread(target=self._rotate, args=(request,), daemon=True)
        thread.start()

    def _rotate(self, request: Request) -> None:
        seq = 0
        for event in self.rotation_script():
            name = event.get("name")
            if (
                event.get("type") == "step"
                and event.get("state") == "started"
                and name in self._gates
            ):
                self._reached[name].set()
                self._gates[name].wait(60)
            seq += 1
            stamped = {"id": request.id, "seq": seq, "ts": protocol.now_ms(), **event}
            if stamped.get("type") == "result":
                stamped["rotation_id"] = request.id
            with self._cond:
                self._journal[request.id].append(stamped)
                self._cond.notify_all()

    def _follow(self, rotation_id: str, after_seq: int) -> Iterator[dict[str, Any]]:
        index = 0
        while True:
            with self._cond:
                events = self._journal[rotation_id]
                while index >= len(events):
                    self._cond.wait(60)
                event = events[index]
            index += 1
            if int(event["seq"]) <= after_seq:
                continue
            yield event
            if event["type"] in protocol.CLOSING_TYPES:
                return


class FakeEngineClient:
    """``bot.engine_client.EngineClient`` over a ``FakeEngineHost``."""

    def __init__(self, host: FakeEngineHost) -> None:
        self.host = host

    @property
    def host_key_fingerprint(self) -> str:
        return self.host.host_key

    def run(self, request: Request) -> Iterator[dict[str, Any]]:
        host = self.host
        yield {"id": request.id, "seq": 0, "ts": protocol.now_ms(), **protocol.hello_event("0.4.0")}
        refusal = host.refuse(request, request)
        if refusal is not None:
            yield {"id": request.id, "seq": 1, "ts": protocol.now_ms(), **refusal}
            return
        host.requests.append(request)
        if request.op == "plan":
            if host.plan_error:
                yield {"id": request.id, "seq": 1, "ts": protocol.now_ms(), **host.plan_error}
            else:
                yield {
                    "id": request.id,
                    "seq": 1,
                    **protocol.result_event("plan", **host.plan_now(request)),
                }
            return
        if request.op == "status":
            yield {
                "id": request.id,
                "seq": 1,
                **protocol.result_event("status", **host.status_result),
            }
            return
        if request.op in ("rotate-key", "rotate-agent", "rotate-incident", "rotate-db-password"):
            host._start_rotation(request)
            yield from host._follow(request.id, 0)
            return
        if request.op == "attach":
            rotation_id = request.rotation_id or request.id
            with host._cond:
                known = rotation_id in host._journal
            if not known:
                yield {
                    "id": request.id,
                    "seq": 1,
                    **protocol.error_event(
                        "unknown_rotation", f"no rotation {rotation_id} on this host"
                    ),
                }
                return
            yield from host._follow(rotation_id, request.after_seq)
            return
        raise EngineCrashedError(f"the fake engine does not do {request.op}")
