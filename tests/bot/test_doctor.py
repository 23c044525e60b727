"""`python -m bot doctor`: a table of what works and what to fix, changing nothing."""

from __future__ import annotations

import io
import socket
import subprocess

from bot import doctor
from tests.bot.conftest import CHANNEL, write_config
from tests.support.secrets_scan import scan_text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(monkeypatch, slack_secrets, fake_slack, config):
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_secrets.bot_token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", slack_secrets.signing_secret)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    monkeypatch.setenv("SLACK_API_URL", fake_slack.url)
    monkeypatch.setenv("ROTATOR_CONFIG", str(config))


def test_doctor_reports_slack_the_panel_probe_and_an_unreachable_panel(
    tmp_path, monkeypatch, slack_secrets, fake_slack, panel_factory
):
    panel = panel_factory(rows=3, missing_tables=("email_configurations",))
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=("lab",),
                          profiles={"lab": panel.profile_path})
    key_file = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    with config.open("a") as handle:
        handle.write(
            f'\n[panels.prod-eu]\nhost = "127.0.0.1"\nport = {_closed_port()}\nuser = "rotator"\n'
            f'key_file = "{key_file}"\nknown_hosts = "{tmp_path / "known_hosts"}"\n'
            "connect_timeout_s = 2\nreconnect_attempts = 1\n"
        )
    (tmp_path / "known_hosts").write_text("")
    _environment(monkeypatch, slack_secrets, fake_slack, config)
    rows_before = panel.stored_values()
    out = io.StringIO()

    status = doctor.main([], out=out)

    report = out.getvalue()
    assert status == 1
    assert "ok    slack token" in report
    assert f"ok    channel {CHANNEL}" in report
    assert "ok    panel lab probe" in report and "layout iv12_tag_ct/hex" in report
    assert "missing tables: email_configurations" in report
    assert "FAIL  panel prod-eu" in report
    assert "panel lab agents" not in report, "a panel without agents needs no agent known_hosts"
    assert "→ check host/port in [panels]" in report
    assert panel.stored_values() == rows_before
    assert scan_text(report) == []


def test_doctor_says_what_to_fix_when_slack_refuses_the_token(tmp_path, monkeypatch, slack_secrets, fake_slack):
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=("lab",))
    _environment(monkeypatch, slack_secrets, fake_slack, config)
    fake_slack.fail("auth.test", "invalid_auth")
    out = io.StringIO()

    assert doctor.main([], out=out) == 1
    assert "FAIL  slack token  auth.test refused: invalid_auth" in out.getvalue()
    assert "check SLACK_BOT_TOKEN" in out.getvalue()


def test_doctor_names_a_channel_the_bot_cannot_see(tmp_path, monkeypatch, slack_secrets, fake_slack):
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=("lab",))
    _environment(monkeypatch, slack_secrets, fake_slack, config)
    fake_slack.fail("conversations.info", "channel_not_found")
    out = io.StringIO()

    assert doctor.main([], out=out) == 1
    assert f"FAIL  channel {CHANNEL}" in out.getvalue() and "channel_not_found" in out.getvalue()


class _Answers:
    """An engine client whose SSH session prints ``lines`` on stdout (through the real
    event-stream checks) instead of the engine's events."""

    host_key_fingerprint = "SHA256:test"

    def __init__(self, *lines: bytes) -> None:
        self.lines = lines

    def run(self, request):
        from bot.local_client import EventStream

        stream = EventStream("panel prod-eu")
        for line in self.lines:
            event = stream.feed(line)
            if event is not None:
                yield event


def test_doctor_shows_what_answered_instead_of_the_engine():
    """A login banner or profile script printing first is named, with where to fix it."""
    (check,) = doctor._panel_checks("prod-eu", _Answers(b"Welcome to prod-eu! Unauthorized use prohibited\n"))
    assert (check.ok, check.finding) == (
        False,
        "something other than the engine answered first: 'Welcome to prod-eu! Unauthorized use prohibited'",
    )
    assert "~rotator/.ssh/authorized_keys must start engine-serve" in check.fix


def test_doctor_recognises_a_login_shell_refusal():
    (check,) = doctor._panel_checks("prod-eu", _Answers(b"This account is currently not available.\n"))
    assert (check.ok, check.finding) == (
        False,
        "the panel host's SSH user has no login shell: it answered 'This account is currently not available.'",
    )
    assert check.fix.startswith("give that user a shell: `usermod --shell /bin/sh rotator`")


def _doctor_on(tmp_path, monkeypatch, slack_secrets, fake_slack, profile) -> tuple[int, str]:
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=("lab",),
                          profiles={"lab": profile})
    _environment(monkeypatch, slack_secrets, fake_slack, config)
    out = io.StringIO()
    status = doctor.main([], out=out)
    return status, out.getvalue()


NO_AGENT_TABLES = ("agents", "agent_install_tokens")


def test_a_panel_without_agents_passes_when_its_profile_configures_none(
    tmp_path, monkeypatch, slack_secrets, fake_slack, panel_factory
):
    """No [agents] in the profile and no agent tables in the panel: nothing to fail."""
    panel = panel_factory(rows=2, missing_tables=NO_AGENT_TABLES)
    status, report = _doctor_on(tmp_path, monkeypatch, slack_secrets, fake_slack, panel.profile_path)
    assert (status, "FAIL" in report) == (0, False), report
    assert "ok    panel lab probe" in report and "agents" not in report


def test_configured_agents_are_checked_one_problem_per_line(
    tmp_path, monkeypatch, slack_secrets, fake_slack, panel_factory
):
    panel = panel_factory(rows=2, missing_tables=NO_AGENT_TABLES)
    profile = panel.write_profile(agents={"install_token_provider": "sql"})
    status, report = _doctor_on(tmp_path, monkeypatch, slack_secrets, fake_slack, profile)
    failures = [line for line in report.splitlines() if line.startswith("FAIL")]
    assert status == 1
    assert failures[:2] == [
        "FAIL  panel lab agents  agents table agents does not exist",
        "FAIL  panel lab agents  install token table agent_install_tokens does not exist",
    ]
    assert [line.split("  ")[2].split(" ")[0] for line in failures[2:]] in ([], ["known_hosts"])


def test_an_engine_refusal_says_its_cause_and_what_to_fix(
    tmp_path, monkeypatch, slack_secrets, fake_slack, panel_factory
):
    """Not "see the bot log for details": the engine's reason, and the fix for that reason."""
    panel = panel_factory(rows=2)
    panel.env_path.unlink()
    status, report = _doctor_on(tmp_path, monkeypatch, slack_secrets, fake_slack, panel.profile_path)
    assert status == 1
    assert "see the bot log" not in report
    assert "FAIL  panel lab" in report and ".env" in report
    assert "→ check config/.env on the panel host: present, readable by the engine, well formed" in report
    assert scan_text(report) == []
