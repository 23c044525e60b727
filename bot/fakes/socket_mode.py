"""A loopback stand-in for Slack's Socket Mode: the websocket side of Slack, on 127.0.0.1.

Slack's protocol, as the bot's client meets it:

1. the app calls ``apps.connections.open`` with its app-level token (``xapp-``)
   and gets a one-time ``wss://`` URL (here ``ws://127.0.0.1:PORT/link/?ticket=…``);
2. it opens a websocket there; Slack sends ``{"type": "hello", …}`` first;
3. Slack sends envelopes ``{"envelope_id", "type": "slash_commands" |
   "interactive" | "events_api", "payload", "accepts_response_payload"}``;
   the app answers ``{"envelope_id": …}`` (optionally with ``payload``) within 3 s;
4. ``{"type": "disconnect", "reason": "refresh_requested"}`` asks the app to
   open a new connection (a new ``apps.connections.open``) and drop the old one.

``FakeSocketMode(app_token).attach(fake_slack)`` makes the fake Web API answer
``apps.connections.open`` (``invalid_auth`` for any other token). ``command``
and ``click`` deliver an envelope on the newest connection and return the
app's acknowledgement, failing when none comes within ``ack_timeout_s``.
``refresh()`` sends ``disconnect`` and waits for the reconnect.

The websocket is the server half of RFC 6455, written here with the standard
library: the opening handshake, masked client frames, unmasked server frames,
ping/pong and close. Messages are small and unfragmented, as Slack's are.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.fakes.slack_signing import SlackSender

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class NotAcknowledged(AssertionError):
    """The app did not answer an envelope in time (Slack would show a timeout or retry)."""


@dataclass
class Ack:
    """The app's answer to one envelope."""

    envelope_id: str
    payload: dict[str, Any] | None
    elapsed_s: float

    @property
    def text(self) -> str:
        return str((self.payload or {}).get("text", ""))


@dataclass
class _Connection:
    sock: socket.socket
    number: int
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True

    def send(self, opcode: int, data: bytes) -> None:
        """One unmasked frame; opcode -1 sends ``data`` raw (the handshake's answer)."""
        if opcode < 0:
            with self.send_lock:
                self.sock.sendall(data)
            return
        header = bytes([0x80 | opcode])
        size = len(data)
        if size < 126:
            header += bytes([size])
        elif size < 1 << 16:
            header += bytes([126]) + struct.pack("!H", size)
        else:
            header += bytes([127]) + struct.pack("!Q", size)
        with self.send_lock:
            self.sock.sendall(header + data)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(TEXT, json.dumps(message).encode())

    def close(self) -> None:
        if self.open:
            self.open = False
            try:
                self.send(CLOSE, struct.pack("!H", 1000))
            except OSError:
                pass
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    first, second = _read_exactly(sock, 2)
    opcode = first & 0x0F
    if not first & 0x80:
        raise ConnectionError("fragmented frames are not part of this stand-in")
    if not second & 0x80:
        raise ConnectionError("a client frame must be masked (RFC 6455 5.1)")
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", _read_exactly(sock, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", _read_exactly(sock, 8))[0]
    mask = _read_exactly(sock, 4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(_read_exactly(sock, size)))
    return opcode, data


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()  # noqa: S324


class FakeSocketMode:
    """Slack's Socket Mode endpoint on a loopback port, plus ``apps.connections.open``."""

    def __init__(
        self,
        app_token: str,
        *,
        team_id: str = "T0TEAM",
        channel_id: str = "C0ROTATE",
        app_id: str = "A0ROTATOR",
        ack_timeout_s: float = 3.0,
        verification_token: str = "",
    ) -> None:
        self.app_token = app_token
        self.ack_timeout_s = ack_timeout_s
        self.app_id = app_id
        # builds the same payloads as the HTTP sender (never posts: no url)
        self.payloads = SlackSender(
            url="",
            signing_secret="",
            verification_token=verification_token or secrets.token_hex(12),
            team_id=team_id,
            channel_id=channel_id,
            app_id=app_id,
        )
        self.opens = 0  # successful apps.connections.open calls
        self._tickets: set[str] = set()
        self._connections: list[_Connection] = []
        self._acks: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._numbers = itertools.count(1)
        self._listener: socket.socket | None = None
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeSocketMode:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept_loop, daemon=True, name="fake-socket-mode").start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() first"
        return int(self._listener.getsockname()[1])

    def attach(self, web_api: Any) -> FakeSocketMode:
        """Make a ``FakeSlack`` answer ``apps.connections.open`` for this endpoint.

        User actions sent here then carry trigger ids that fake issued (its ``views.open``
        takes no others).
        """
        web_api.methods["apps.connections.open"] = self.connections_open
        self.payloads.trigger_ids = web_api.issue_trigger_id
        return self

    def connections_open(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        """What Slack answers to ``apps.connections.open`` (the app-level token only)."""
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        ticket = uuid.uuid4().hex
        with self._cond:
            self._tickets.add(ticket)
            self.opens += 1
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"}

    # --- the websocket -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> bytes | None:
        """The 101 answer to send once the connection is counted; None (after a 403) if refused."""
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(4096)
            if not chunk or len(request) > 16384:
                return None
            request += chunk
        lines = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" "), "", "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        ticket = parse_qs(urlsplit(target).query).get("ticket", [""])[0]
        with self._cond:
            known = ticket in self._tickets
            self._tickets.discard(ticket)  # a URL serves one connection
        if method != "GET" or headers.get("upgrade", "").lower() != "websocket" or not known:
            sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return None
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_key(headers.get('sec-websocket-key', ''))}\r\n\r\n".encode()
        )

    def _serve(self, sock: socket.socket) -> None:
        try:
            switching = self._handshake(sock)
        except OSError:
            switching = None
        if switching is None:
            sock.close()
            return
        connection = _Connection(sock, next(self._numbers))
        with self._cond:  # counted before the app can see it is connected
            self._connections.append(connection)
            self._cond.notify_all()
        connection.send(-1, switching)
        connection.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake-socket-mode", "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
        )
        try:
            while connection.open:
                opcode, data = _read_frame(sock)
                if opcode == PING:
                    connection.send(PONG, data)
                elif opcode == CLOSE:
                    break
                elif opcode == TEXT:
                    self._received(json.loads(data))
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            connection.close()
            with self._cond:
                self._cond.notify_all()

    def _received(self, message: dict[str, Any]) -> None:
        envelope_id = message.get("envelope_id")
        if envelope_id:
            with self._cond:
                self._acks[str(envelope_id)] = message
                self._cond.notify_all()

    # --- what a test sees and does -----------------------------------------------------

    @property
    def connections(self) -> int:
        """How many websocket connections the app has opened so far."""
        with self._cond:
            return len(self._connections)

    @property
    def open_connections(self) -> int:
        with self._cond:
            return sum(c.open for c in self._connections)

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        """Until the app has opened ``count`` connections in all (a deadline, not a sleep)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._connections) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the app opened {len(self._connections)} Socket Mode connection(s), "
                        f"not {count}, within {timeout} s"
                    )
                self._cond.wait(remaining)

    def _current(self) -> _Connection:
        self.wait_connections(1)
        with self._cond:
            live = [c for c in self._connections if c.open]
        if not live:
            raise AssertionError("the app has no open Socket Mode connection")
        return live[-1]

    def deliver(self, kind: str, payload: dict[str, Any]) -> Ack:
        """Send one envelope and wait for its acknowledgement (``NotAcknowledged`` after the limit)."""
        envelope_id = str(uuid.uuid4())
        started = time.monotonic()
        self._current().send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
            }
        )
        deadline = started + self.ack_timeout_s
        with self._cond:
            while envelope_id not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotAcknowledged(
                        f"{kind} envelope {envelope_id} not acknowledged within {self.ack_timeout_s} s"
                    )
                self._cond.wait(remaining)
            answer = self._acks.pop(envelope_id)
        payload_back = answer.get("payload")
        return Ack(envelope_id, payload_back if isinstance(payload_back, dict) else None,
                   time.monotonic() - started)

    def command(self, command: str, text: str, user: str, *, channel: str | None = None) -> Ack:
        """A slash command, as a ``slash_commands`` envelope."""
        body = self.payloads.command_body(command, text, user, channel)
        payload = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        return self.deliver("slash_commands", payload)

    def click_payload(self, action_id: str, value: str, user: str, message_ts: str) -> dict[str, Any]:
        """The ``block_actions`` payload of one click (a fresh trigger id each time)."""
        body = self.payloads.click_body(action_id, value, user, message_ts)
        return dict(json.loads(parse_qs(body)["payload"][0]))

    def click(self, action_id: str, value: str, user: str, message_ts: str) -> Ack:
        """A button click on a message, as an ``interactive`` envelope."""
        return self.deliver("interactive", self.click_payload(action_id, value, user, message_ts))

    def app_home_opened(self, user: str) -> Ack:
        """``user`` opens the app's Home tab, as an ``events_api`` envelope."""
        event = {"type": "app_home_opened", "user": user, "channel": "D0HOME", "tab": "home",
                 "event_ts": f"{time.time():.6f}"}  # fmt: skip
        return self.deliver("events_api", json.loads(self.payloads.event_body(event)))

    def refresh(self, timeout: float = 10.0) -> None:
        """``disconnect`` (``refresh_requested``) and wait until the app has reconnected."""
        before = self.connections
        self._current().send_json(
            {"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "fake"}}
        )
        self.wait_connections(before + 1, timeout)
