"""The words the bot chooses: counts that agree with their nouns, and a next step that fits
the failure it follows."""

from __future__ import annotations

import pytest

from handlers import messages as m
from handlers.access import AccessPolicy
from handlers.rotation_request import Person


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 stored values"), (1, "1 stored value"), (2, "2 stored values"), (1204, "1,204 stored values")],
)
def test_a_count_agrees_with_its_noun(n: int, expected: str) -> None:
    assert expected == m.plural(n, "stored value")


def test_an_irregular_plural_is_given_by_the_caller() -> None:
    assert ["1 person", "2 people"] == [m.plural(1, "person", "people"), m.plural(2, "person", "people")]


def test_a_step_reply_counts_one_value_as_one_value() -> None:
    reply = m.step_reply({"name": "sweep", "state": "ok", "values": 1, "elapsed_ms": 10})
    assert "1 value ·" in reply and "1 values" not in reply


def _next(code: str, *, rolled_back: bool | None = None, nothing_changed: bool = True, **outcome: object) -> str:
    return m.next_step(code, "prod-eu", rolled_back, nothing_changed, {"code": code, **outcome})


def test_undecryptable_values_are_named_with_what_to_do() -> None:
    one = _next("undecryptable", locations=["oscam_installs.webif_password id 7"])
    two = _next(
        "undecryptable",
        locations=["oscam_installs.webif_password id 7", "saved_servers.ssh_credential_encrypted id 9"],
    )
    assert one == (
        "oscam_installs.webif_password id 7 does not open with the current key: restore it from a "
        "backup, or clear it in the panel so that its owner enters it again; then request again."
    )
    assert two.startswith(
        "oscam_installs.webif_password id 7, saved_servers.ssh_credential_encrypted id 9 do not open "
        "with the current key: restore them from a backup, or clear them in the panel"
    )


def test_each_kind_of_failure_gets_its_own_next_step() -> None:
    steps = {
        "host_unreachable": _next("host_unreachable"),
        "plan_mismatch": _next("plan_mismatch"),
        "hook_failed": _next("hook_failed", rolled_back=True, nothing_changed=False),
        "rollback_failed": _next("rollback_failed", rolled_back=False, nothing_changed=False),
    }
    assert "sshd answers" in steps["host_unreachable"]
    assert "request again to approve the new plan" in steps["plan_mismatch"]
    assert "run the command named under what failed by hand" in steps["hook_failed"]
    assert steps["rollback_failed"].startswith("the engine could not roll back by itself: run `")
    assert "recover` on prod-eu's host" in steps["rollback_failed"]
    assert len(set(steps.values())) == len(steps)


def test_no_next_step_points_at_a_step_above() -> None:
    """A failure before the first step has no step above it to read."""
    codes = [*m.NEXT_STEPS, "internal", "engine_crashed", "something_new"]
    texts = [_next(code) for code in codes] + [_next(c, rolled_back=True, nothing_changed=False) for c in codes]
    assert [t for t in texts if "above" in t] == []


def test_the_approvers_named_on_a_card_leave_the_requester_out() -> None:
    alice = Person("T0", "U0ALICE")
    by_people = AccessPolicy(approvers=("U0ALICE", "T0/U0BOB", "U0CAROL"))
    by_group = AccessPolicy(approvers=("S0ONCALL",))
    assert by_people.approvers_for(alice) == ("<@U0BOB> or <@U0CAROL>", False)
    assert by_group.approvers_for(alice) == ("<!subteam^S0ONCALL>", True)
    line = m.needs_approvals(1, "<@U0BOB> or <@U0CAROL>", "", 1_795_001_800.0, 1_795_000_000.0)
    assert line.startswith("Needs 1 approval from <@U0BOB> or <@U0CAROL> · expires ")


def test_the_verb_agrees_with_the_count_too() -> None:
    """The engine's step details say "1 value opens" and "2 values open"."""
    from engine.protocol.words import plural, verb

    assert [f"{plural(n, 'value')} {verb(n, 'opens', 'open')}" for n in (0, 1, 2)] == [
        "0 values open",
        "1 value opens",
        "2 values open",
    ]
