"""A plan as the card shows it, and the hash that binds approvals to it.

Approving a request approves its plan. The binding is what must not change
between the card and the run: panel, operation, target agents, engine version,
the SSH host key, the current key's fingerprint and the ciphertext layout.
Counts are shown but not bound: a panel in use gains rows between plan and run,
and the engine re-checks every value in its own preflight anyway.

There is one plan hash: the engine's ``plan_hash``. The card and the thread's
summary show its first digits, the audit log and the engine's own ``runs.jsonl``
on the panel host all of it, because it is the one the run request names and the
engine re-checks before it changes anything. What the engine cannot see (the SSH
host key the bot pinned) is bound by the bot itself: ``differences`` compares the
whole binding, and the runner voids the approvals when the host key changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from handlers import ops

SHORT_HASH_DIGITS = 12
BINDING_FIELDS: tuple[str, ...] = (
    "panel",
    "op",
    "agents",
    "all_agents",
    "engine_version",
    "host_key_fingerprint",
    "key_fingerprint",
    "scheme",
)

_LABELS = {
    "panel": "panel",
    "op": "operation",
    "agents": "agents",
    "all_agents": "all agents",
    "engine_version": "engine",
    "host_key_fingerprint": "host key",
    "key_fingerprint": "current key",
    "scheme": "layout",
}


@dataclass(frozen=True)
class PlanView:
    """The engine's read-only ``plan`` result, plus what the bot knows of the host."""

    panel: str
    op: str
    engine_version: str
    host_key_fingerprint: str
    agents: tuple[str, ...] = ()
    all_agents: bool = False
    panel_host: str = ""
    key_fingerprint: str = ""
    scheme: str = ""
    scheme_description: str = ""
    #: how the engine escrows the new key ("escrowed (vault)", or no escrow said out loud)
    escrow: str = ""
    columns: dict[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    total: int = 0
    agent_rows: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    #: the engine's hash of what it can check on the host; a run request names it
    engine_plan_hash: str = ""
    #: rotate-incident: the parts in order, and what this tool can't rotate (by name)
    parts: tuple[dict[str, Any], ...] = ()
    manual: tuple[dict[str, Any], ...] = ()
    #: rotate-db-password: the login, and its current password's fingerprint (bound)
    db_user: str = ""
    db_host: str = ""
    password_fingerprint: str = ""
    #: rotate-db-password: every account the current password opens, with its routes
    db_accounts: tuple[str, ...] = ()
    #: a fleet request (``handlers.ops.fleet``): who or what was chosen, and each panel's
    #: plans (``members``), bound by their hashes
    fleet: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_engine(
        cls,
        result: dict[str, Any],
        *,
        panel: str,
        op: str,
        agents: Sequence[str] = (),
        all_agents: bool = False,
        host_key_fingerprint: str = "",
        panel_host: str = "",
    ) -> PlanView:
        columns = {str(k): int(v) for k, v in dict(result.get("columns") or {}).items()}
        rows = tuple(dict(row) for row in result.get("agents") or () if isinstance(row, dict))
        resolved = tuple(sorted(_agent_name(row) for row in rows)) if rows else tuple(agents)
        fields: dict[str, Any] = dict(
            panel=panel,
            op=op,
            engine_version=str(result.get("engine_version") or result.get("engine") or ""),
            host_key_fingerprint=host_key_fingerprint,
            agents=resolved,
            all_agents=all_agents,
            panel_host=panel_host,
            key_fingerprint=str(result.get("key_fingerprint") or ""),
            scheme=str(result.get("scheme") or ""),
            scheme_description=str(result.get("scheme_description") or result.get("scheme") or ""),
            escrow=str(result.get("escrow") or ""),
            columns=columns,
            skipped=tuple(str(s) for s in result.get("skipped") or ()),
            total=int(result.get("total") or sum(columns.values())),
            agent_rows=rows,
            warnings=_warnings(result),
            engine_plan_hash=str(result.get("plan_hash") or ""),
            parts=tuple(dict(p) for p in result.get("parts") or () if isinstance(p, dict)),
            manual=tuple(dict(i) for i in result.get("manual") or () if isinstance(i, dict)),
            db_user=str(result.get("db_user") or ""),
            db_host=str(result.get("db_host") or ""),
            password_fingerprint=str(result.get("password_fingerprint") or ""),
        )
        fields.update(ops.get(op).plan_extras(result))  # what only this operation's plan says
        return cls(**fields)

    def binding(self) -> dict[str, Any]:
        out = {
            name: list(value) if isinstance(value := getattr(self, name), tuple) else value
            for name in BINDING_FIELDS
        }
        if self.fleet:  # every panel's plan hash (a one-panel plan binds as before)
            out["fleet"] = {
                **{k: v for k, v in self.fleet.items() if k != "members"},
                "members": [
                    [m.get("panel"), m.get("plan_hashes"), m.get("host_key")] for m in self.fleet["members"]
                ],
            }
        return out

    @property
    def hash(self) -> str:
        """The plan hash everyone sees: the engine's (see the module's docstring). Only a
        plan from an engine that gave none (it could not run one either) falls back to
        the bot's digest of its binding."""
        return self.engine_plan_hash or self.binding_hash

    @cached_property
    def binding_hash(self) -> str:
        canonical = json.dumps(self.binding(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        """As the card shows it: the first 12 digits, as ``engine status`` lists a run's."""
        return self.hash[:SHORT_HASH_DIGITS]

    def differences(self, other: PlanView) -> list[str]:
        """What changed from ``self`` (approved) to ``other`` (now), in card words."""
        mine, theirs = self.binding(), other.binding()
        out = []
        if mine.get("fleet") != theirs.get("fleet"):
            out.append("the panels' plans changed")
        for name in BINDING_FIELDS:
            if mine[name] != theirs[name]:
                out.append(f"{_LABELS[name]} {_show(mine[name])} -> {_show(theirs[name])}")
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["agents"] = list(self.agents)
        data["skipped"] = list(self.skipped)
        data["agent_rows"] = [dict(r) for r in self.agent_rows]
        data["warnings"] = list(self.warnings)
        data["parts"] = [dict(p) for p in self.parts]
        data["manual"] = [dict(i) for i in self.manual]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanView:
        values = dict(data)
        values["agents"] = tuple(values.get("agents") or ())
        values["skipped"] = tuple(values.get("skipped") or ())
        values["agent_rows"] = tuple(dict(r) for r in values.get("agent_rows") or ())
        values["warnings"] = tuple(values.get("warnings") or ())
        values["parts"] = tuple(dict(p) for p in values.get("parts") or ())
        values["manual"] = tuple(dict(i) for i in values.get("manual") or ())
        values["db_accounts"] = tuple(str(a) for a in values.get("db_accounts") or ())
        values["fleet"] = dict(values.get("fleet") or {})
        values["columns"] = {str(k): int(v) for k, v in dict(values.get("columns") or {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def _warnings(result: dict[str, Any]) -> tuple[str, ...]:
    """What the approver must know: the engine's problems, and unfinished earlier rotations."""
    out = [str(p) for p in result.get("problems") or ()]
    unfinished = result.get("unfinished")
    for item in unfinished if isinstance(unfinished, list) else [unfinished] if unfinished else []:
        if isinstance(item, dict):
            rotation = item.get("rotation_id") or item.get("id") or "?"
            out.append(
                f"an unfinished rotation {rotation} ({item.get('state', '?')}) is on the host: "
                "the engine will ask for recover first"
            )
    return tuple(out)


def _agent_name(row: dict[str, Any]) -> str:
    return str(row.get("name") or row.get("agent") or row.get("id") or "?")


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "(none)"
    if value == "" or value is None:
        return "(none)"
    return str(value)
