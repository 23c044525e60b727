"""The shared contract (issue 23): ``engine.protocol`` stands alone, one codes table says what
each error code means and what to do, and an ``Outcome`` is read once from a closing event."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine.errors
from engine import protocol
from engine.protocol import Request, RequestError, codes, planned_op
from engine.protocol.outcome import Outcome

ROOT = Path(__file__).resolve().parents[2]


def test_the_protocol_imports_nothing_else_of_the_engine() -> None:
    """The bot imports the contract without pulling in the engine's tree (errors, db, crypto)."""
    script = (  # heavy modules counted beyond what the bare interpreter imported (site, .pth files)
        "import sys; bare = set(sys.modules)\n"
        "import engine.protocol, engine.protocol.outcome, engine.protocol.codes, engine.protocol.words\n"
        "print(' '.join(sorted(m for m in sys.modules if m == 'engine' or m.startswith('engine.'))))\n"
        "print(' '.join(sorted(m for m in ('typing', 'dataclasses', 'pydantic') if m in set(sys.modules) - bare)))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    engine_modules, heavy = out.stdout.splitlines()[0].split(), out.stdout.splitlines()[1:]
    assert [m for m in engine_modules if m != "engine" and not m.startswith("engine.protocol")] == []
    assert heavy in ([], [""]), "serve answers hello before importing typing or dataclasses"


def _engine_error_classes() -> list[type[engine.errors.EngineError]]:
    return [
        cls for _, cls in inspect.getmembers(engine.errors, inspect.isclass)
        if issubclass(cls, engine.errors.EngineError)
    ]  # fmt: skip


def test_every_engine_error_takes_its_code_from_the_table() -> None:
    assert {cls.code for cls in _engine_error_classes()} - set(codes.CODES) == set()


def test_every_code_written_at_a_raise_site_is_in_the_table() -> None:
    """Codes given as strings (``RequestError("bad_request", …)``) are rows of the table too."""
    pattern = re.compile(r'(?:RequestError|BadRequest|PlanMismatchError)\(\s*"([a-z_]+)"|error_event\(\s*"([a-z_]+)"')
    found = set()
    for path in [*ROOT.joinpath("engine").rglob("*.py"), *ROOT.joinpath("bot").rglob("*.py")]:
        for match in pattern.finditer(path.read_text()):
            found.add(match.group(1) or match.group(2))
    assert "bad_request" in found and "unknown_rotation" in found
    assert found - set(codes.CODES) == set()


def test_the_bot_s_codes_are_in_the_table() -> None:
    """What the bot's engine client reports in place of the engine (host, SSH, process)."""
    import bot.errors

    sent = {
        cls.code for _, cls in inspect.getmembers(bot.errors, inspect.isclass)
        if issubclass(cls, bot.errors.EngineClientError) and "code" in vars(cls)
        and cls is not bot.errors.EngineClientError
    }  # fmt: skip
    assert sent - set(codes.CODES) == set()


def test_slack_and_doctor_give_the_table_s_advice() -> None:
    """One advice per code: Slack's "Next" and doctor's fix are the table's, not two texts."""
    from bot import doctor
    from handlers import messages

    for name, code in codes.CODES.items():
        assert messages.NEXT_STEPS[name] == code.next_step()
        assert doctor._fix_for(name).startswith(code.advice)
    assert messages.next_step("locked", "p", None, True) == (
        "another engine run holds the panel's lock; wait for it, then request again."
    )
    assert doctor._fix_for("locked") == "another engine run holds the panel's lock; wait for it, then run doctor again"


def test_nothing_changed_codes_are_codes_something_sends() -> None:
    assert "replan_failed" not in protocol.NOTHING_CHANGED_CODES
    assert protocol.MISMATCH_CODES <= protocol.NOTHING_CHANGED_CODES
    assert {"unknown_rotation", "bad_request", "plan_required"} <= protocol.NOTHING_CHANGED_CODES


def test_an_error_s_exit_status_follows_what_the_operator_must_do() -> None:
    from engine.errors import EnvFileError, HookError, RestartTargetError, RollbackFailedError

    assert RestartTargetError("no such unit").code == "hook_failed"
    assert RestartTargetError("no such unit").exit_status == codes.EXIT_USAGE
    assert HookError("restart failed", rolled_back=True).exit_status == codes.EXIT_FAILED
    assert EnvFileError("no .env").exit_status == codes.EXIT_USAGE
    assert EnvFileError("cannot write .env", rolled_back=True).exit_status == codes.EXIT_FAILED
    assert RollbackFailedError("stuck", rolled_back=False).exit_status == codes.EXIT_NEEDS_RECOVER
    event = protocol.error_event_of(RestartTargetError("no such unit"))
    assert (event["code"], event["exit_status"], event["rolled_back"]) == ("hook_failed", 2, None)


# -- Outcome: read once from the closing event -------------------------------------------


def test_an_outcome_of_a_key_rotation_says_what_was_done_and_proven() -> None:
    event = protocol.result_event(
        "rotate-key", rotation_id="r-1", state="DONE", verified=True, old_fingerprint="a" * 16,
        new_fingerprint="b" * 16, total=1204, duration_ms=2500, panel="prod-eu",
    )  # fmt: skip
    outcome = Outcome.of(event)
    assert (outcome.ok, outcome.exit_status, outcome.code, outcome.nothing_changed) == (True, 0, None, False)
    assert outcome.done == (f"key {'a' * 16}… → {'b' * 16}…, 1,204 stored values re-encrypted",)
    assert outcome.proven == ("every stored value opens with the new key",)
    assert outcome.left == ()
    assert (outcome.total, outcome.rotation_id, outcome.panel) == (1204, "r-1", "prod-eu")


def test_an_outcome_of_agents_that_could_not_be_verified_exits_4() -> None:
    agents = [
        {"name": "a1", "ok": True, "outcome": "rotated", "old_fingerprint": "1" * 16, "new_fingerprint": "2" * 16},
        {"name": "a2", "ok": False, "outcome": "unverified", "failed_step": "old_revoked"},
    ]
    outcome = Outcome.of(protocol.result_event("rotate-agent", ok=False, code="agent_unverified", agents=agents))
    assert (outcome.ok, outcome.code, outcome.exit_status) == (False, "agent_unverified", codes.EXIT_UNVERIFIED)
    assert [a.name for a in outcome.agents if a.unverified] == ["a2"]
    assert outcome.left == ("a2: check by hand that its old token is refused",)
    failed = Outcome.of(protocol.result_event("rotate-agent", ok=False, code="agent_failed", agents=agents))
    assert failed.exit_status == codes.EXIT_FAILED


def test_an_outcome_of_an_incident_that_stopped_names_what_is_left() -> None:
    parts = [
        {"part": "db_password", "title": "database password", "state": "done", "detail": "x… → y… verified"},
        {"part": "key", "title": "encryption key", "state": "needs_recover"},
        {"part": "agents", "title": "agent tokens", "state": "not_started"},
    ]
    event = protocol.result_event(
        "rotate-incident", ok=False, state="STOPPED", code="rollback_failed", parts=parts,
        stopped={"part": "key", "state": "needs_recover", "code": "rollback_failed", "message": "m"},
    )  # fmt: skip
    outcome = Outcome.of(event)
    assert outcome.exit_status == codes.EXIT_NEEDS_RECOVER
    assert outcome.done == ("database password: x… → y… verified",)
    assert outcome.left == ("encryption key: needs recover", "agent tokens: not started")
    stopped_bad_profile = {**event, "code": "bad_profile", "stopped": {"state": "failed", "code": "bad_profile"}}
    assert Outcome.of(stopped_bad_profile).exit_status == codes.EXIT_FAILED  # the part's code is not the run's


def test_an_outcome_of_an_error_reads_the_table_when_the_event_does_not_say() -> None:
    older = {"type": "error", "code": "unfinished_rotation", "message": "run recover", "rolled_back": None}
    assert Outcome.of(older, "rotate-key").exit_status == codes.EXIT_NEEDS_RECOVER
    refused = Outcome.of({"type": "error", "code": "key_mismatch", "message": "m"}, "rotate-key")
    assert (refused.nothing_changed, refused.exit_status, refused.advice) == (True, 1, codes.CODES["key_mismatch"])
    rolled = Outcome.of({"type": "error", "code": "hook_failed", "message": "m", "rolled_back": True,
                         "exit_status": 1, "locations": ["t.c id 1"]}, "rotate-key")  # fmt: skip
    assert rolled.done == ("rolled back: the panel is as it was",)
    assert rolled.details == {"locations": ["t.c id 1"]}
    unknown = Outcome.of({"type": "error", "code": "from_a_newer_engine", "message": "m"})
    assert (unknown.exit_status, unknown.advice) == (1, codes.UNKNOWN)


def test_a_probe_whose_layout_does_not_fit_exits_1() -> None:
    assert Outcome.of(protocol.result_event("probe", scheme="iv12_tag_ct/hex")).exit_status == 0
    assert Outcome.of(protocol.result_event("probe", scheme=None)).exit_status == 1
    assert Outcome.of(protocol.result_event("probe", scheme="x", problem="differs")).exit_status == 1


# -- plan names what it plans for --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "planned"),
    [
        ({}, "rotate-key"),
        ({"plan_for": "rotate-key"}, "rotate-key"),
        ({"plan_for": "rotate-db-password"}, "rotate-db-password"),
        ({"db_password": True}, "rotate-db-password"),
        ({"plan_for": "rotate-incident"}, "rotate-incident"),
        ({"incident": True}, "rotate-incident"),
        ({"plan_for": "rotate-agent", "all_agents": True}, "rotate-agent"),
        ({"agents": ["a1"]}, "rotate-agent"),
        ({"plan_for": "rotate-incident", "incident": True}, "rotate-incident"),
    ],
)
def test_plan_for_names_the_operation_and_the_old_flags_still_work(fields: dict, planned: str) -> None:
    request = protocol.parse_request_line(Request(v=1, id="r-1", op="plan", **fields).to_line().encode())
    assert planned_op(request) == planned


@pytest.mark.parametrize(
    "fields",
    [
        {"plan_for": "status"},
        {"plan_for": "rotate-everything"},
        {"plan_for": "rotate-key", "incident": True},
        {"plan_for": "rotate-db-password", "agents": ["a1"]},
        {"plan_for": "rotate-agent"},
    ],
)
def test_a_plan_for_that_is_not_a_plannable_operation_is_refused(fields: dict) -> None:
    with pytest.raises(RequestError) as refused:
        protocol.parse_request_line(('{"v":1,"id":"r-1","op":"plan",' + _json(fields) + "}").encode())
    assert (refused.value.code, refused.value.message.split(":")[0]) == ("bad_request", "bad request")
    assert "plan_for" in refused.value.message


def test_only_a_plan_names_plan_for() -> None:
    with pytest.raises(RequestError, match="plan_for: only a plan"):
        Request(v=1, id="r-1", op="rotate-key", dry_run=True, plan_for="rotate-key")


def _json(fields: dict) -> str:
    import json

    return json.dumps(fields)[1:-1]


def test_serve_plans_for_the_named_operation_as_the_old_flags_did(panel_factory) -> None:
    """``plan_for`` over the real engine: the same plan (hash included) the old flags give."""
    from tests.engine.test_run_binding import serve

    panel = panel_factory(rows=1)
    profile = panel.write_profile()
    by_flag = serve(profile, id="p1", op="plan", db_password=True)[-1]
    by_name = serve(profile, id="p2", op="plan", plan_for="rotate-db-password")[-1]
    key = serve(profile, id="p3", op="plan", plan_for="rotate-key")[-1]
    assert by_flag["type"] == by_name["type"] == key["type"] == "result", (by_flag, by_name, key)
    assert by_name["plan_hash"] == by_flag["plan_hash"]
    assert by_name["password_fingerprint"] == by_flag["password_fingerprint"]
    assert "password_fingerprint" not in key and key["key_fingerprint"]


def test_the_cli_plans_for_the_operation_named_by_for(panel_factory) -> None:
    """``plan --for rotate-db-password`` is ``plan --db-password``; a confirmation plans with it."""
    from tests.engine.runner import run_engine

    panel = panel_factory(rows=1)
    profile = panel.write_profile()
    by_name = run_engine(profile, "plan", "--for", "rotate-db-password", "--json")
    by_flag = run_engine(profile, "plan", "--db-password", "--json")
    human = run_engine(profile, "plan", "--for", "rotate-db-password")
    assert (by_name.returncode, by_flag.returncode, human.returncode) == (0, 0, 0), by_name.stderr
    assert by_name.closing["plan_hash"] == by_flag.closing["plan_hash"]
    assert f"the database login {panel.db.user}@" in human.stdout
    refused = run_engine(profile, "plan", "--for", "rotate-agent", "--json")
    assert (refused.returncode, refused.closing["code"]) == (1, "bad_request")


# -- Outcome of real closing events: the per-part and per-agent fields renderers read ---------


def test_the_outcome_of_a_real_incident_run_types_each_part_and_the_manual_list(panel_factory) -> None:
    """A rotate-incident run against a real panel (MariaDB, PHP): each part's times, login,
    accounts, routes, counts and fingerprints are typed fields, as Slack and the report read them."""
    from tests.engine.test_incident import serve

    panel = panel_factory(rows=3, server=True)
    profile = panel.profile_path
    plan = serve(profile, id="r-oplan", op="plan", incident=True)[-1]
    closing = serve(profile, id="r-oinc", op="rotate-incident", plan_hash=plan["plan_hash"],
                    key_fingerprint=plan["key_fingerprint"], agents=[], requested_by="U0ALICE",
                    approved_by=["U0BOB"], reason="INC-7 .env leaked",
                    password_fingerprint=plan["password_fingerprint"])[-1]  # fmt: skip

    outcome = Outcome.of(closing)
    assert (outcome.op, outcome.ok, outcome.exit_status, outcome.unfinished) == ("rotate-incident", True, 0, ())
    db, key, agents = outcome.parts
    assert (db.part, db.state, db.db_user) == ("db_password", "done", panel.db.user)
    assert db.accounts and all(a.startswith(f"{panel.db.user}@") for a in db.accounts)
    assert "refused" in {r.old for r in db.routes} <= {"refused", "unreachable"}  # ::1 may not listen
    assert all(r.route and r.account in db.accounts for r in db.routes if r.old == "refused")
    assert isinstance(db.started_at, int) and isinstance(db.finished_at, int)
    assert db.started_at <= db.finished_at <= (key.started_at or 0) <= (key.finished_at or 0)
    assert db.old_fingerprint and db.new_fingerprint and db.old_fingerprint != db.new_fingerprint
    assert (key.state, key.old_fingerprint) == ("done", plan["key_fingerprint"])
    assert key.new_fingerprint == protocol.fingerprint(panel.env_key())
    assert key.total and key.total == sum(key.columns.values()) == closing["parts"][1]["total"]
    assert (agents.state, agents.started_at, agents.detail) == ("skipped", None, "no [agents] section in the profile")
    names = [item.name for item in outcome.manual]
    assert names[0] == "PANEL_LICENSE_KEY" and outcome.manual[0].message and outcome.manual[0].action
    assert outcome.done[0].startswith("database password: ")


def test_the_outcome_of_a_real_db_password_run_types_the_login_accounts_and_routes(panel_factory) -> None:
    """A rotate-db-password run against real MariaDB: the login, each account the password
    opens and each route the old password was refused on are typed fields of its Outcome."""
    from tests.engine.runner import run_engine

    panel = panel_factory(rows=2, server=True)
    run = run_engine(panel.profile_path, "rotate-db-password", "--yes", "--json")
    assert run.returncode == 0, run.stderr

    outcome = Outcome.of(run.closing)
    assert (outcome.op, outcome.ok, outcome.state, outcome.exit_status) == ("rotate-db-password", True, "DONE", 0)
    assert (outcome.db_user, outcome.db_host) == (panel.db.user, run.closing["db_host"])
    assert outcome.accounts and all(a.startswith(f"{panel.db.user}@") for a in outcome.accounts)
    refused = [r for r in outcome.routes if r.old == "refused"]
    assert refused and all(r.account in outcome.accounts and r.new == "works" for r in refused)
    assert {r.old for r in outcome.routes} <= {"refused", "unreachable"}  # ::1 may not listen
    assert outcome.old_fingerprint and outcome.new_fingerprint and outcome.old_fingerprint != outcome.new_fingerprint
    assert outcome.duration_ms > 0 and outcome.proven == ("the panel's database login works with the new password",)
    assert (outcome.parts, outcome.unfinished, outcome.manual) == ((), (), ())


def test_typed_parts_and_agents_read_what_an_older_engine_left_out_as_none() -> None:
    """A part or an agent without the newer fields: None or empty, never a made-up value."""
    part = Outcome.of(protocol.result_event("rotate-incident", parts=[{"part": "key", "state": "done"}])).parts[0]
    assert (part.started_at, part.db_user, part.accounts, part.routes, part.rotated, part.total) == (
        None, None, (), (), None, None)  # fmt: skip
    assert (part.password_in_env, part.available, part.configured, part.columns) == (None, True, True, {})
    agent = Outcome.of(protocol.result_event("rotate-agent", agents=[{"id": 7, "ok": True}])).agents[0]
    assert (agent.name, agent.id, agent.new_token, agent.old_token, agent.outcome) == ("7", 7, None, None, "rotated")
