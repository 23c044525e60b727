"""Run requests that name their plan, as the bot sends them after an approval.

The engine refuses a ``rotate-key`` / ``rotate-agent`` that does not name the
plan it computes now (``engine.protocol.require_plan`` and ``check_run``). Tests
that drive the engine directly ask it for the plan first, exactly as the bot's
card does, and copy the plan's hash and key fingerprint (or agent list) into
the run request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from engine.protocol import Request

REPO = Path(__file__).resolve().parents[2]


class _Client(Protocol):
    def run(self, request: Request) -> Any: ...


def named_fields(op: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The fields a run request copies from a ``plan`` result."""
    if op == "rotate-agent":
        names = [str(row["name"]) for row in plan.get("agents") or ()]
        return {"plan_hash": plan["plan_hash"], "agents": names}
    return {"plan_hash": plan["plan_hash"], "key_fingerprint": plan["key_fingerprint"]}


def plan_request(request: Request) -> Request:
    agents = request.agents if request.op == "rotate-agent" else None
    return Request(
        v=request.v, id=f"{request.id}.plan", op="plan", agents=agents,
        all_agents=request.all_agents if request.op == "rotate-agent" else False,
    )  # fmt: skip


def named(client: _Client, request: Request) -> Request:
    """``request`` naming the plan that ``client``'s engine computes now."""
    closing = list(client.run(plan_request(request)))[-1]
    assert closing["type"] == "result", closing
    return request.replace(**named_fields(request.op, closing))


def plan_fields(profile: Path, op: str = "rotate-key", **selection: Any) -> dict[str, Any]:
    """Ask ``python -m engine --profile P serve`` for the plan; the fields a run names."""
    request = Request(v=1, id="plan-for-test", op=op, **selection)
    line = plan_request(request).to_line()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--profile", str(profile), "serve"],
        input=line, capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    closing = json.loads(proc.stdout.splitlines()[-1])
    assert closing["type"] == "result", closing
    return named_fields(op, closing)
