"""A local fake of Slack's Web API that answers like Slack and records every call.

Serves ``POST /api/<method>`` on 127.0.0.1 (a threaded HTTP server), so the
bot's real ``slack_sdk.WebClient`` talks HTTP to it exactly as to Slack.
Answers ``auth.test``, ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``, ``views.open``, ``usergroups.users.list``,
``users.info`` and ``conversations.info``; anything else gets
``unknown_method``. ``fail(method, error)`` makes the next calls fail.

Tests wait on the record with a deadline (``wait_for``), never with a sleep:
the bot does its work on threads after it acknowledges.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

JSON_FIELDS = ("blocks", "attachments", "view", "metadata")


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    params: dict[str, Any]
    token: str | None
    raw_body: str
    at: float = field(default_factory=time.monotonic)
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.params.get("text") or "")

    def all_text(self) -> str:
        """Every human-readable string in the call (text and blocks), for assertions."""
        parts = [self.text]
        _collect_text(self.params.get("blocks"), parts)
        _collect_text(self.params.get("view"), parts)
        return "\n".join(p for p in parts if p)


def _collect_text(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                out.append(value)
            else:
                _collect_text(value, out)
    elif isinstance(node, list):
        for item in node:
            _collect_text(item, out)


class FakeSlack:
    def __init__(
        self,
        *,
        token: str,
        team_id: str = "T0TEAM",
        bot_user_id: str = "U0BOT",
        groups: dict[str, list[str]] | None = None,
    ) -> None:
        self.token = token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.groups = dict(groups or {})
        self._calls: list[Call] = []
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._failures: dict[str, list[str]] = {}
        self.delays: dict[str, float] = {}
        # extra methods answered by other stand-ins (they check their own token), e.g.
        # ``apps.connections.open`` from bot.fakes.socket_mode
        self.methods: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ").strip() or None
                params = _parse(raw, self.headers.get("Content-Type") or "")
                token = token or params.pop("token", None)
                method = self.path.rsplit("/", 1)[-1]
                answer = fake._answer(method, params, token, raw)
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                """``/_record``: how many calls of each method (for a fake run in another process)."""
                counts: dict[str, int] = {}
                for call in fake.calls:
                    counts[call.method] = counts.get(call.method, 0) + 1
                cards = len(
                    [c for c in fake.calls_to("chat.postMessage") if "requested:" in c.text]
                )
                body = json.dumps({"by_method": counts, "cards": cards}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    # --- behaviour ---------------------------------------------------------------------

    def fail(self, method: str, error: str = "channel_not_found", times: int = 1) -> None:
        with self._cond:
            self._failures.setdefault(method, []).extend([error] * times)

    def _next_ts(self) -> str:
        return f"{1_800_000_000 + next(self._ts)}.000100"

    def _answer(
        self, method: str, params: dict[str, Any], token: str | None, raw: str
    ) -> dict[str, Any]:
        if self.delays.get(method):
            time.sleep(self.delays[method])  # a slow Slack, on purpose
        with self._cond:
            failures = self._failures.get(method)
            error = failures.pop(0) if failures else None
        if method in self.methods and not error:
            answer: dict[str, Any] = self.methods[method](params, token)
        elif token != self.token:
            answer = {"ok": False, "error": "invalid_auth"}
        elif error:
            answer = {"ok": False, "error": error}
        else:
            answer = self._success(method, params)
        call = Call(method=method, params=params, token=token, raw_body=raw, response=answer)
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()
        return answer

    def _success(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://fake.slack.test/",
                "team": "Fake",
                "user": "rotator",
                "team_id": self.team_id,
                "user_id": self.bot_user_id,
                "bot_id": "B0BOT",
            }
        if method == "chat.postMessage":
            ts = self._next_ts()
            return {"ok": True, "channel": params.get("channel"), "ts": ts, "message": {"ts": ts}}
        if method == "chat.update":
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self._next_ts()}
        if method == "views.open":
            return {"ok": True, "view": {"id": "V0VIEW", **(params.get("view") or {})}}
        if method == "usergroups.users.list":
            group = str(params.get("usergroup"))
            if group not in self.groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.groups[group])}
        if method == "users.info":
            user = str(params.get("user"))
            return {"ok": True, "user": {"id": user, "team_id": self.team_id, "name": user.lower()}}
        if method == "conversations.info":
            channel = str(params.get("channel"))
            return {"ok": True, "channel": {"id": channel, "name": "rotations", "is_member": True}}
        return {"ok": False, "error": "unknown_method"}

    # --- the record --------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 15.0,
    ) -> list[Call]:
        """The first ``count`` calls to ``method`` matching ``predicate``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    c
                    for c in self._calls
                    if c.method == method and (predicate is None or predicate(c))
                ]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{c.method}: {c.all_text()[:200]}" for c in self._calls]
                    raise AssertionError(
                        f"no {count} call(s) to {method} matching within {timeout} s; calls were:\n  "
                        + "\n  ".join(seen)
                    )
                self._cond.wait(remaining)

    def wait_text(
        self, method: str, fragment: str, *, user: str | None = None, timeout: float = 15.0
    ) -> Call:
        """The first call to ``method`` whose text holds ``fragment`` (for ``user``, if given)."""
        return self.wait_for(
            method,
            lambda c: fragment in c.all_text() and (user is None or c.params.get("user") == user),
            timeout=timeout,
        )[0]

    def ephemerals(self, user: str) -> list[str]:
        return [c.text for c in self.calls_to("chat.postEphemeral") if c.params.get("user") == user]

    def thread(self, channel: str, ts: str) -> list[str]:
        return [
            c.text
            for c in self.calls_to("chat.postMessage")
            if c.params.get("channel") == channel and c.params.get("thread_ts") == ts
        ]

    def card_versions(self, channel: str, ts: str) -> list[Call]:
        """The card as posted, then each update, in order."""
        posted = [
            c
            for c in self.calls_to("chat.postMessage")
            if c.params.get("channel") == channel and c.response.get("ts") == ts
        ]
        updates = [
            c
            for c in self.calls_to("chat.update")
            if c.params.get("channel") == channel and c.params.get("ts") == ts
        ]
        return posted + updates

    def latest_card(self, channel: str, ts: str) -> Call:
        versions = self.card_versions(channel, ts)
        assert versions, f"no card {ts} in {channel}"
        return versions[-1]


def _parse(raw: str, content_type: str) -> dict[str, Any]:
    if "json" in content_type:
        return dict(json.loads(raw or "{}"))
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    for name in JSON_FIELDS:
        if isinstance(params.get(name), str):
            try:
                params[name] = json.loads(params[name])
            except ValueError:
                pass
    return params


def has_buttons(call: Call) -> bool:
    return any(b.get("type") == "actions" for b in call.params.get("blocks") or [])


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.fakes.slack_api TOKEN [GROUP=U1,U2 ...]``: serve until stdin closes.

    Prints the API URL on the first line, so a benchmark can run Slack's side
    in its own process (and its own GIL).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    groups = {g: m.split(",") for g, _, m in (a.partition("=") for a in args[1:])}
    fake = FakeSlack(token=args[0], groups=groups).start()
    print(fake.url, flush=True)
    sys.stdin.read()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
