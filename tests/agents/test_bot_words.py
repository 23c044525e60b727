"""What the request's thread says when agents rotated but could not be verified (11.3)."""

from __future__ import annotations

from handlers.messages import failed_line
from handlers.ops.run_summary import final_failed

UNVERIFIED = {
    "partial": True,
    "code": "agent_unverified",
    "rolled_back": None,
    "message": "1 of 1 agents have a new token proven by re-registration; old token: could not verify for 1; "
    "agent-1 unverified at old_revoked: could not verify: the check with the new token was not accepted either",
    "agents": [{"name": "agent-1", "ok": False, "outcome": "unverified", "failed_step": "old_revoked",
                "error": "could not verify: the check with the new token was not accepted either",
                "new_token": "proven by re-registration", "old_token": "could not verify"}],
}


def test_could_not_verify_is_not_reported_as_a_failure() -> None:
    summary = final_failed(request_id="r-1", panel="prod", requester="<@U1>", approvers=["<@U2>"],
                           reason="leak", outcome=UNVERIFIED)

    assert summary.splitlines()[0].startswith(":grey_question: Finished, but could not verify every agent.")
    assert "agent-1 unverified at old_revoked: could not verify" in summary
    assert "(new token proven by re-registration, old token could not verify)" in summary
    assert failed_line(UNVERIFIED, "prod").startswith(
        ":grey_question: Finished, could not verify: 1 of 1 agents have a new token proven by re-registration"
    )
    assert "0 of" not in summary + failed_line(UNVERIFIED, "prod"), "tokens changed: never \"0 rotated\""
    assert failed_line({**UNVERIFIED, "code": "agent_failed"}, "prod").startswith(":warning: Finished with failures")
