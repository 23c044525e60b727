"""A local fake of Slack's Web API, as strict as Slack, that records every call.

Serves ``POST /api/<method>`` on 127.0.0.1 (a threaded HTTP server), so the
bot's real ``slack_sdk.WebClient`` talks HTTP to it exactly as to Slack.
Answers ``auth.test``, ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``, ``views.open``, ``views.publish``, ``usergroups.users.list``,
``users.info``, ``conversations.info``, ``conversations.members``, and ``conversations.history`` /
``conversations.replies`` (read back from what was posted and updated, newest
first, with Slack's cursor pagination); anything else gets
``unknown_method``. ``fail(method, error)`` makes the next calls fail.

It refuses what Slack refuses, so a green test means the card would appear:

* blocks and views are checked by ``bot.fakes.slack_blocks`` (slack_sdk's
  Block Kit models plus Slack's documented limits): ``invalid_blocks``
  (messages) or ``invalid_arguments`` (views), with the reasons in
  ``response_metadata.messages``;
* a message needs a ``channel`` (``channel_not_found``) that exists (the
  ``channels`` given, or user ids for direct messages), and text or blocks
  (``no_text``); ``chat.update`` needs the ts of a message posted in that
  channel (``message_not_found``);
* channel membership: ``members`` names who is in which channel (a channel left out, or
  ``members=None``, holds every user given in ``users``); ``conversations.members``
  lists them with Slack's cursor pagination, and ``chat.postEphemeral`` to someone
  outside the channel gets ``user_not_in_channel``, as from Slack;
* ``views.publish`` needs a ``user_id`` that exists (``user_not_found``) and a
  valid view of type ``home`` (at most 100 blocks; ``invalid_arguments``);
  ``home_view(user)`` reads back the last one published for a person;
* ``views.open`` takes only trigger ids this fake issued
  (``issue_trigger_id``, which ``SlackSender`` calls for every user action),
  once (``exchanged_trigger_id``) and within 3 s (``expired_trigger_id``);
* ``rate_limit(every=N)`` answers every Nth call with HTTP 429, ``Retry-After``
  and ``ratelimited``, as Slack does under load; ``enforce_limits()`` (or
  ``limits=``) applies Slack's own rate limits per method and workspace
  (``chat.postMessage`` per channel), ``bot.fakes.slack_limits``, or tighter ones;
* files (the v2 upload, three steps): ``files.getUploadURLExternal`` needs a
  ``filename`` and a positive ``length`` (``invalid_arguments``) and answers a
  ``file_id`` and an ``upload_url`` on this server; the bytes POSTed there are kept
  (an unknown URL gets 404); ``files.completeUploadExternal`` needs ``files``, a
  JSON list of ids this fake issued whose bytes arrived, exactly ``length`` of
  them, each completed once (``file_not_found`` otherwise: the fake's choice of
  error, Slack documents none for a short upload), and a ``channel_id`` /
  ``channels`` that exist (``channel_not_found``). ``uploads()`` returns what
  was shared, bytes included.
* deletions, as Slack does them for a bot token: ``chat.delete`` needs a ``channel``
  that exists (``channel_not_found``) and the ``ts`` of a message there that was not
  deleted (``message_not_found``), posted by the bot (``cant_delete_message``: a bot
  can't delete a person's message; ``post_as_user`` puts one in a conversation);
  ``files.delete`` needs the id of a file that exists and was not deleted
  (``file_not_found``) and that the bot uploaded (``cant_delete_file``;
  ``upload_as_user``). A deleted message leaves ``conversations.history`` /
  ``replies`` and can't be updated; a deleted file leaves ``uploads()`` and
  ``files.info`` (``file_not_found``). ``present()`` is everything still kept,
  every conversation's messages and every file's bytes, for a test to scan.

Tests wait on the record with a deadline (``wait_for``), never with a sleep:
the bot does its work on threads after it acknowledges.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from bot.fakes.slack_blocks import MAX_MESSAGE_TEXT, block_errors, view_errors
from bot.fakes.slack_limits import SLACK_LIMITS, Limiter, RateLimits

JSON_FIELDS = ("blocks", "attachments", "view", "metadata")
TRIGGER_TTL_S = 3.0  # Slack: "trigger_ids expire three seconds after they're issued"
_CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
MESSAGE_METHODS = ("chat.postMessage", "chat.update", "chat.postEphemeral")
DELETE_METHODS = ("chat.delete", "files.delete", "files.info")
READ_METHODS = ("conversations.history", "conversations.replies")
UPLOAD_PATH = "/upload/v1/"  # where files.getUploadURLExternal sends the bytes (step 2)
UPLOAD_METHOD = "files.upload(POST to upload_url)"  # how the record names that POST


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    params: dict[str, Any]
    token: str | None
    raw_body: str
    at: float = field(default_factory=time.monotonic)
    response: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    #: a 429's ``Retry-After`` (seconds), when Slack's rate limits (``enforce_limits``) refused it
    retry_after: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

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
        channels: Iterable[str] | None = None,
        users: Iterable[str] | None = None,
        trigger_ttl_s: float = TRIGGER_TTL_S,
        members: dict[str, Iterable[str]] | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        """``channels``/``users``: the ids that exist (None: any id of Slack's shape);
        ``members``: channel id -> the user ids in it (see the module's docstring)."""
        self.token = token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.groups = dict(groups or {})
        self.channels = None if channels is None else set(channels)
        self.users = None if users is None else set(users) | {bot_user_id}
        self.trigger_ttl_s = trigger_ttl_s
        self.members = {c: set(u) | {bot_user_id} for c, u in (members or {}).items()}
        self._calls: list[Call] = []
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._failures: dict[str, list[str]] = {}
        self.delays: dict[str, float] = {}
        # extra methods answered by other stand-ins (they check their own token), e.g.
        # ``apps.connections.open`` from bot.fakes.socket_mode
        self.methods: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {}
        self._messages: dict[str, str] = {}  # ts -> channel, of every message posted
        self._triggers: dict[str, float] = {}  # trigger id -> issued at (monotonic)
        self._exchanged: set[str] = set()
        self._rate_every = 0
        self._rate_retry_after = 0
        self._rate_methods: set[str] | None = None
        self._rate_seen = 0
        self._rate_left: int | None = None
        self._uploads: dict[str, dict[str, Any]] = {}  # file id -> what getUploadURLExternal issued
        self._deleted_ts: set[str] = set()  # messages removed by chat.delete
        self._deleted_files: set[str] = set()  # files removed by files.delete
        self._foreign: dict[str, dict[str, Any]] = {}  # ts -> a message a person posted
        #: Slack's rate limits per method (``enforce_limits``); None: unlimited
        self.limiter: Limiter | None = Limiter(limits) if limits else None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path.startswith(UPLOAD_PATH):
                    status, text = fake._receive_upload(self.path[len(UPLOAD_PATH) :], self.rfile.read(length))
                    body = text.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                raw = self.rfile.read(length).decode("utf-8")
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ").strip() or None
                params = _parse(raw, self.headers.get("Content-Type") or "")
                token = token or params.pop("token", None)
                method = self.path.rsplit("/", 1)[-1]
                call = fake._answer(method, params, token, raw)
                body = json.dumps(call.response).encode()
                self.send_response(call.status)
                if call.status == 429:
                    self.send_header("Retry-After", str(call.retry_after or fake._rate_retry_after))
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

    def _receive_upload(self, file_id: str, data: bytes) -> tuple[int, str]:
        """The upload POST of the v2 upload (step 2): the bytes of a file id this fake issued."""
        with self._cond:
            upload = self._uploads.get(file_id)
            if upload is None or upload["data"] is not None:
                status, text = 404, "not found"
            else:
                upload["data"] = data
                status, text = 200, f"OK - {len(data)}"
            self._calls.append(
                Call(
                    method=UPLOAD_METHOD,
                    params={"file_id": file_id, "length": len(data)},
                    token=None,
                    raw_body="",
                    response={"ok": status == 200},
                    status=status,
                )
            )
            self._cond.notify_all()
        return status, text

    def uploads(self) -> list[dict[str, Any]]:
        """Files shared by ``files.completeUploadExternal``: id, filename, title, channels, data."""
        with self._cond:
            return [
                dict(u)
                for u in self._uploads.values()
                if u["shared_to"] and u["id"] not in self._deleted_files
            ]

    # --- behaviour ---------------------------------------------------------------------

    def fail(self, method: str, error: str = "channel_not_found", times: int = 1) -> None:
        with self._cond:
            self._failures.setdefault(method, []).extend([error] * times)

    def rate_limit(
        self,
        every: int,
        *,
        retry_after: int = 0,
        methods: Iterable[str] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer every ``every``-th call (to ``methods``, default all) with HTTP 429.

        Deterministic, so a test knows which call is refused; ``every=0`` stops it,
        and so does the ``times``-th refusal. ``retry_after`` is the ``Retry-After``
        header in whole seconds, as Slack sends it.
        """
        with self._cond:
            self._rate_every = every
            self._rate_retry_after = retry_after
            self._rate_methods = None if methods is None else set(methods)
            self._rate_seen = 0
            self._rate_left = times

    def enforce_limits(self, limits: RateLimits | None = SLACK_LIMITS) -> None:
        """Refuse calls over Slack's rate limits (``bot.fakes.slack_limits``; tighter ones
        for a test) with HTTP 429 and ``Retry-After``, as Slack does; None: no limits."""
        with self._cond:
            self.limiter = Limiter(limits) if limits else None

    def issue_trigger_id(self, *, age_s: float = 0.0) -> str:
        """A trigger id as Slack issues one with a user action; ``age_s`` back-dates it."""
        trigger = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        with self._cond:
            self._triggers[trigger] = time.monotonic() - age_s
        return trigger

    def _rate_limited(self, method: str) -> bool:
        if not self._rate_every or (
            self._rate_methods is not None and method not in self._rate_methods
        ):
            return False
        self._rate_seen += 1
        if self._rate_seen % self._rate_every or self._rate_left == 0:
            return False
        if self._rate_left is not None:
            self._rate_left -= 1
        return True

    def _next_ts(self) -> str:
        return f"{1_800_000_000 + next(self._ts)}.000100"

    def _answer(self, method: str, params: dict[str, Any], token: str | None, raw: str) -> Call:
        if self.delays.get(method):
            time.sleep(self.delays[method])  # a slow Slack, on purpose
        status = 200
        with self._cond:
            limited = self._rate_limited(method)
            retry_after = 0 if limited or self.limiter is None else self.limiter.take(method, params)
            limited = limited or retry_after > 0
            failures = None if limited else self._failures.get(method)
            error = failures.pop(0) if failures else None
        answer: dict[str, Any] | None = None
        if method in self.methods and not error and not limited:
            answer = self.methods[method](params, token)  # outside the lock: it may be slow
        with self._cond:
            if limited:
                status, answer = 429, {"ok": False, "error": "ratelimited"}
            elif answer is not None:
                pass
            elif token != self.token:
                answer = {"ok": False, "error": "invalid_auth"}
            elif error:
                answer = {"ok": False, "error": error}
            else:
                answer = self._refusal(method, params) or self._success(method, params)
            call = Call(
                method=method,
                params=params,
                token=token,
                raw_body=raw,
                response=answer,
                status=status,
                retry_after=retry_after,
            )
            self._calls.append(call)
            self._cond.notify_all()
        return call

    # --- what Slack refuses (called with the lock held) --------------------------------

    def _channel_exists(self, channel: Any) -> bool:
        if not isinstance(channel, str) or not channel:
            return False
        if _USER_ID.match(channel):  # a direct message to a person
            return self.users is None or channel in self.users
        if self.channels is None:
            return bool(_CONVERSATION_ID.match(channel))
        return channel in self.channels

    def _refusal(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Slack's error answer for a call it would refuse, or None."""
        if method in DELETE_METHODS:
            return self._delete_refusal(method, params)
        if method in MESSAGE_METHODS:
            if not self._channel_exists(params.get("channel")):
                return {"ok": False, "error": "channel_not_found"}
            if method == "chat.postEphemeral" and not self._user_exists(params.get("user")):
                return {"ok": False, "error": "user_not_found"}
            if method == "chat.postEphemeral" and not self._is_member(
                str(params.get("channel")), str(params.get("user"))
            ):
                return {"ok": False, "error": "user_not_in_channel"}
            if method == "chat.update":
                ts = params.get("ts")
                if self._messages.get(str(ts)) != params.get("channel"):
                    return {"ok": False, "error": "message_not_found"}
            return self._message_refusal(params)
        if method == "views.open":
            return self._trigger_refusal(params.get("trigger_id")) or _invalid(
                "invalid_arguments", view_errors(_json_field(params.get("view")))
            )
        if method == "views.publish":
            if not self._user_exists(params.get("user_id")):
                return {"ok": False, "error": "user_not_found"}
            view = _json_field(params.get("view"))
            kind = view.get("type") if isinstance(view, dict) else None
            return _invalid(
                "invalid_arguments",
                view_errors(view) + ([] if kind == "home" else ["/view/type: must be home"]),
            )
        if method == "users.info" and not self._user_exists(params.get("user")):
            return {"ok": False, "error": "user_not_found"}
        if method == "conversations.members" and (
            not self._channel_exists(params.get("channel")) or _USER_ID.match(str(params.get("channel")))
        ):
            return {"ok": False, "error": "channel_not_found"}
        if method in READ_METHODS and not self._channel_exists(params.get("channel")):
            return {"ok": False, "error": "channel_not_found"}
        if method == "conversations.replies":
            if self._messages.get(str(params.get("ts"))) != params.get("channel"):
                return {"ok": False, "error": "thread_not_found"}
        if method == "files.getUploadURLExternal":
            length = str(params.get("length") or "")
            if not params.get("filename") or not length.isdigit() or int(length) <= 0:
                return {"ok": False, "error": "invalid_arguments"}
        if method == "files.completeUploadExternal":
            return self._complete_refusal(params)
        return None

    def _complete_refusal(self, params: dict[str, Any]) -> dict[str, Any] | None:
        files = _json_field(params.get("files"))
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
            return {"ok": False, "error": "invalid_arguments"}
        for item in files:
            upload = self._uploads.get(str(item.get("id")))
            if (
                upload is None
                or upload["shared_to"]
                or upload["data"] is None
                or len(upload["data"]) != upload["length"]
            ):
                return {"ok": False, "error": "file_not_found"}
        targets = _targets(params)
        if any(not self._channel_exists(t) for t in targets):
            return {"ok": False, "error": "channel_not_found"}
        return None

    def _is_member(self, channel: str, user: str) -> bool:
        """Whether ``user`` is in ``channel`` (a direct message has its own rules: yes)."""
        if _USER_ID.match(channel) or channel not in self.members:
            return True
        return user in self.members[channel]

    def channel_members(self, channel: str) -> list[str]:
        """Who is in ``channel``, as ``conversations.members`` answers (sorted)."""
        if channel in self.members:
            return sorted(self.members[channel])
        return sorted(self.users or ())

    def _user_exists(self, user: Any) -> bool:
        if not isinstance(user, str) or not _USER_ID.match(user):
            return False
        return self.users is None or user in self.users

    def _message_refusal(self, params: dict[str, Any]) -> dict[str, Any] | None:
        blocks = params.get("blocks")
        text = params.get("text")
        if blocks in (None, "", []) and not text and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        if blocks in (None, ""):
            return None
        if isinstance(blocks, str):  # form-encoded blocks that were not valid JSON
            return {"ok": False, "error": "invalid_blocks_format"}
        return _invalid("invalid_blocks", block_errors(blocks))

    def _trigger_refusal(self, trigger: Any) -> dict[str, Any] | None:
        issued = self._triggers.get(str(trigger))
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if trigger in self._exchanged:
            return {"ok": False, "error": "exchanged_trigger_id"}
        if time.monotonic() - issued > self.trigger_ttl_s:
            return {"ok": False, "error": "expired_trigger_id"}
        return None

    def _success(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method in DELETE_METHODS:
            return self._delete(method, params)
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
            self._messages[ts] = str(params["channel"])
            return {"ok": True, "channel": params.get("channel"), "ts": ts, "message": {"ts": ts}}
        if method == "chat.update":
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self._next_ts()}
        if method == "files.getUploadURLExternal":
            file_id = "F" + secrets.token_hex(5).upper()
            self._uploads[file_id] = {
                "id": file_id,
                "filename": str(params["filename"]),
                "length": int(params["length"]),
                "data": None,
                "title": None,
                "shared_to": [],
            }
            base = self.url.removesuffix("/api/")
            return {"ok": True, "file_id": file_id, "upload_url": f"{base}{UPLOAD_PATH}{file_id}"}
        if method == "files.completeUploadExternal":
            shared = []
            for item in _json_field(params["files"]):
                upload = self._uploads[str(item["id"])]
                upload["title"] = item.get("title") or upload["filename"]
                upload["shared_to"] = _targets(params) or ["(private)"]
                shared.append({"id": upload["id"], "name": upload["filename"], "title": upload["title"]})
            return {"ok": True, "files": shared}
        if method == "views.open":
            self._exchanged.add(str(params.get("trigger_id")))
            return {"ok": True, "view": {"id": "V0VIEW", **(params.get("view") or {})}}
        if method == "views.publish":
            view = _json_field(params.get("view")) or {}
            return {"ok": True, "view": {"id": "V0HOME", "hash": self._next_ts(), **view}}
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
        if method == "conversations.members":
            members = self.channel_members(str(params["channel"]))
            limit = min(int(params.get("limit") or 100), 1000)
            start = int(params.get("cursor") or 0)
            rest = members[start + limit :]
            return {
                "ok": True,
                "members": members[start : start + limit],
                "response_metadata": {"next_cursor": str(start + limit) if rest else ""},
            }
        if method == "conversations.history":
            stored = self._stored(str(params["channel"]))
            top = [m for m in stored if m.get("thread_ts") in (None, m["ts"])]
            for message in top:
                replies = [m for m in stored if m.get("thread_ts") == message["ts"] and m is not message]
                if replies:
                    message.update(thread_ts=message["ts"], reply_count=len(replies))
            return _page(top[::-1], params)
        if method == "conversations.replies":
            ts = str(params["ts"])
            stored = self._stored(str(params["channel"]))
            return _page([m for m in stored if ts in (m["ts"], m.get("thread_ts"))], params)
        return {"ok": False, "error": "unknown_method"}

    def _stored(self, channel: str) -> list[dict[str, Any]]:
        """The channel's messages as Slack keeps them: each post with its last update, oldest first."""
        stored: dict[str, dict[str, Any]] = {}
        for call in self._calls:
            if not call.response.get("ok") or call.params.get("channel") != channel:
                continue
            if call.method == "chat.postMessage":
                ts = str(call.response["ts"])
                stored[ts] = {"type": "message", "ts": ts, "user": self.bot_user_id}
                if call.params.get("thread_ts"):
                    stored[ts]["thread_ts"] = str(call.params["thread_ts"])
            elif call.method == "chat.update" and str(call.params.get("ts")) in stored:
                ts = str(call.params["ts"])
            else:
                continue
            stored[ts]["text"] = str(call.params.get("text") or "")
            stored[ts]["blocks"] = _json_field(call.params.get("blocks")) or []
        for ts, message in self._foreign.items():
            if message["channel"] == channel:
                stored[ts] = {k: v for k, v in message.items() if k != "channel"}
        kept = [m for ts, m in stored.items() if ts not in self._deleted_ts]
        return sorted(kept, key=lambda m: float(m["ts"]))

    # --- deletions (chat.delete, files.delete) and what is still kept -------------------

    def post_as_user(self, user: str, channel: str, text: str) -> str:
        """A message a person posted in ``channel`` (the bot can read it, not delete it); its ts."""
        with self._cond:
            ts = self._next_ts()
            self._messages[ts] = channel
            self._foreign[ts] = {"type": "message", "ts": ts, "user": user, "text": text,
                                 "blocks": [], "channel": channel}
        return ts

    def upload_as_user(self, user: str, filename: str, data: bytes) -> str:
        """A file a person shared; the bot can't delete it. Its id."""
        file_id = "F" + secrets.token_hex(5).upper()
        with self._cond:
            self._uploads[file_id] = {
                "id": file_id, "filename": filename, "length": len(data), "data": data,
                "title": filename, "shared_to": ["(private)"], "user": user,
            }
        return file_id

    def _delete_refusal(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "chat.delete":
            channel, ts = params.get("channel"), str(params.get("ts") or "")
            if not self._channel_exists(channel):
                return {"ok": False, "error": "channel_not_found"}
            if ts in self._deleted_ts or self._messages.get(ts) != channel:
                return {"ok": False, "error": "message_not_found"}
            if ts in self._foreign:
                return {"ok": False, "error": "cant_delete_message"}
            return None
        file_id = str(params.get("file") or "")
        upload = self._uploads.get(file_id)
        if upload is None or upload["data"] is None or file_id in self._deleted_files:
            return {"ok": False, "error": "file_not_found"}
        if method == "files.delete" and upload.get("user", self.bot_user_id) != self.bot_user_id:
            return {"ok": False, "error": "cant_delete_file"}
        return None

    def _delete(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "chat.delete":
            ts = str(params["ts"])
            self._deleted_ts.add(ts)
            self._messages.pop(ts, None)  # chat.update and replies now say not found
            return {"ok": True, "channel": params["channel"], "ts": ts}
        file_id = str(params["file"])
        if method == "files.info":
            upload = self._uploads[file_id]
            return {"ok": True, "file": {"id": file_id, "name": upload["filename"],
                                         "title": upload["title"], "size": upload["length"]}}
        self._deleted_files.add(file_id)
        return {"ok": True}

    def deleted(self) -> dict[str, list[str]]:
        """What ``chat.delete`` and ``files.delete`` removed: message ts and file ids."""
        with self._cond:
            return {"messages": sorted(self._deleted_ts), "files": sorted(self._deleted_files)}

    def present(self) -> dict[str, Any]:
        """Everything Slack still keeps: each conversation's messages (as history returns
        them, last versions) and each file that was not deleted, bytes included."""
        with self._cond:
            channels = {str(c.params.get("channel")) for c in self._calls if c.params.get("channel")}
            channels |= {m["channel"] for m in self._foreign.values()}
            messages = {ch: self._stored(ch) for ch in sorted(channels)}
            files = [
                dict(u)
                for u in self._uploads.values()
                if u["data"] is not None and u["id"] not in self._deleted_files
            ]
        return {"messages": {ch: ms for ch, ms in messages.items() if ms}, "files": files}

    # --- the record --------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def home_view(self, user: str) -> dict[str, Any] | None:
        """The Home tab ``user`` sees now: the last view published for them, or None."""
        for call in reversed(self.calls_to("views.publish")):
            if call.response.get("ok") and call.params.get("user_id") == user:
                view = _json_field(call.params.get("view"))
                return dict(view) if isinstance(view, dict) else None
        return None

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


def _page(messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Slack's cursor pagination: ``limit`` (default 100, at most 999) from ``cursor``."""
    limit = min(int(params.get("limit") or 100), 999)
    start = int(params.get("cursor") or 0)
    rest = messages[start + limit :]
    return {
        "ok": True,
        "messages": messages[start : start + limit],
        "has_more": bool(rest),
        "response_metadata": {"next_cursor": str(start + limit) if rest else ""},
    }


def _targets(params: dict[str, Any]) -> list[str]:
    """Where ``files.completeUploadExternal`` shares: ``channel_id`` and/or ``channels`` (a comma list)."""
    targets = [str(params["channel_id"])] if params.get("channel_id") else []
    channels = params.get("channels")
    if channels:
        targets += [c for c in str(channels).split(",") if c]
    return targets


def _invalid(error: str, reasons: list[str]) -> dict[str, Any] | None:
    if not reasons:
        return None
    return {
        "ok": False,
        "error": error,
        "errors": reasons,
        "response_metadata": {"messages": [f"[ERROR] {r}" for r in reasons]},
    }


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


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
