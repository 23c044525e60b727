"""deploy/setup-panel-host.sh as a team runs it, then the bot through Debian's stock sshd.

The real script runs on this machine as root, with its own user name and paths (so a test
can undo it): a dry run first (nothing changes), the install, a re-run (nothing to do).
Then an ``sshd`` with Debian's stock ``sshd_config`` (UsePAM yes, StrictModes yes) on a
loopback port lets that user in; ``python -m bot doctor`` passes, recognises a login-shell
refusal, and a rotation approved in Slack runs through that SSH.
"""

from __future__ import annotations

import io
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot import doctor
from bot.fakes.slack_api import FakeSlack
from bot.inventory import PanelEntry
from tests.bot.conftest import BOB, CHANNEL, PANEL, MakeBot, SlackSecrets, write_config
from tests.support.panel import PanelSandbox
from tests.support.panel_host import SCRIPT, PanelHost, StockSSHD, start_stock_sshd
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import KeyPair, make_key

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def panel_host(tmp_path: Path) -> Iterator[PanelHost]:
    if os.geteuid() != 0:
        pytest.skip("the panel-host script runs as root")
    host = PanelHost.under(tmp_path)
    yield host
    host.remove()


@pytest.fixture
def stock_sshd(tmp_path: Path) -> Iterator[Callable[[str], StockSSHD]]:
    """``stock_sshd(user)``: tests/support/panel_host.py's ``start_stock_sshd``, stopped after."""
    started: list[StockSSHD] = []

    def start(user: str) -> StockSSHD:
        started.append(start_stock_sshd(tmp_path / "sshd", user))
        return started[-1]

    yield start
    for sshd in started:
        sshd.stop()


def _escrow(directory: Path) -> list[str]:
    vault = directory / "vault"
    vault.mkdir(mode=0o700)
    script = directory / "escrow.sh"
    script.write_text(f'#!/bin/sh\numask 077\ncat > "{vault}/new-key"\n')
    script.chmod(0o700)
    return [str(script)]


def _entry(panel_host: PanelHost, sshd: StockSSHD) -> PanelEntry:
    """The bot's [panels] entry for the host the script made, behind the stock sshd."""
    return PanelEntry(
        name=PANEL, host="127.0.0.1", port=sshd.port, user=panel_host.user,
        key_file=panel_host.bot_key.private_path, known_hosts=sshd.known_hosts,
        connect_timeout_s=10, event_timeout_s=60, reconnect_attempts=1,
    )  # fmt: skip


def _doctor(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    out = io.StringIO()
    return doctor.main([], out=out), out.getvalue()


def test_the_script_sets_up_a_panel_host_the_bot_reaches_through_stock_sshd(
    panel_host: PanelHost,
    stock_sshd: Callable[[str], StockSSHD],
    panel_factory: Callable[..., PanelSandbox],
    make_bot: MakeBot,
    slack_secrets: SlackSecrets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret_registry: SecretRegistry,
) -> None:
    sandbox = panel_factory(rows=5)
    profile = sandbox.write_profile(escrow_command=_escrow(tmp_path), backup_command=["true"])

    dry = panel_host.setup("--dry-run", profile=profile)
    assert dry.returncode == 0, dry.stderr
    assert f"would: user {panel_host.user} (login shell /bin/sh)" in dry.stdout
    assert dry.stdout.rstrip().endswith("nothing was changed")
    with pytest.raises(KeyError):
        pwd.getpwnam(panel_host.user)
    assert not panel_host.sudoers.exists() and not panel_host.config_dir.exists()

    first = panel_host.setup(profile=profile)
    assert first.returncode == 0, first.stdout + first.stderr
    assert panel_host.shell() == "/bin/sh"
    home = Path(pwd.getpwnam(panel_host.user).pw_dir)
    keys = (home / ".ssh" / "authorized_keys").read_text().splitlines()
    wrapper = panel_host.prefix / "bin" / "engine-serve"
    assert keys == [f'from="127.0.0.1",command="sudo -n {wrapper}",restrict {panel_host.bot_key.public_line}']

    again = panel_host.setup(profile=profile)
    assert again.returncode == 0 and "Done (0 change(s))" in again.stdout, again.stdout

    sshd = stock_sshd(panel_host.user)
    entry = _entry(panel_host, sshd)
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=(),
                          ssh_panels={PANEL: entry})
    bot = make_bot(panels=(), ssh_panels={PANEL: entry})
    env = {
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "SLACK_API_URL": bot.fake.url,
        "ROTATOR_CONFIG": str(config),
    }

    status, report = _doctor(monkeypatch, env)
    assert status == 0, report
    assert f"ok    panel {PANEL} ssh" in report and f"ok    panel {PANEL} probe" in report

    # the old script's mistake: a nologin shell refuses every forced command
    subprocess.run(["usermod", "--shell", "/usr/sbin/nologin", panel_host.user], check=True)
    status, report = _doctor(monkeypatch, env)
    failed = [" ".join(line.split()) for line in report.splitlines() if line.startswith("FAIL")]
    assert (status, failed) == (1, [
        f"FAIL panel {PANEL} the panel host's SSH user has no login shell: it answered "
        "'This account is currently not available.'"
    ])  # fmt: skip
    assert f"→ give that user a shell: `usermod --shell /bin/sh {panel_host.user}`" in report

    fixed = panel_host.setup(profile=profile)
    assert f"login shell of {panel_host.user}: /usr/sbin/nologin -> /bin/sh" in fixed.stdout
    assert "Done (1 change(s))" in fixed.stdout, fixed.stdout

    # without its sudoers rule the forced command's sudo refuses: doctor says so
    panel_host.sudoers.unlink()
    status, report = _doctor(monkeypatch, env)
    assert status == 1 and "sudo said 'sudo: a password is required'" in report, report
    assert f"the sudoers rule letting {panel_host.user} run engine-serve as root is missing" in report
    restored = panel_host.setup(profile=profile)
    assert f"+ write {panel_host.sudoers} (0440 root:root)" in restored.stdout, restored.stdout
    assert _doctor(monkeypatch, env)[0] == 0

    old_key = sandbox.env_key()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    done = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    assert done.params.get("thread_ts") == ts and bot.fake.thread(CHANNEL, ts)[-1] == done.text
    new_key = sandbox.env_key()
    secret_registry.register_key(new_key, "rotated PANEL_ENCRYPTION_KEY")
    assert new_key != old_key and (tmp_path / "vault" / "new-key").read_text().strip() == new_key
    assert sandbox.php_check_all() == []


def test_the_default_install_runs_the_engine_from_its_own_virtualenv(
    panel_host: PanelHost,
    stock_sshd: Callable[[str], StockSSHD],
    panel_factory: Callable[..., PanelSandbox],
    make_bot: MakeBot,
    secret_registry: SecretRegistry,
) -> None:
    """As a team runs it, without --engine-python: a virtualenv under the prefix with the
    engine pip-installed from the checkout (not importable from it: the wrapper runs
    ``python -I`` from the virtualenv). A rotation approved in Slack runs through it."""
    sandbox = panel_factory(rows=4)
    made = panel_host.setup(profile=sandbox.profile_path, own_virtualenv=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"+ install the engine from {REPO} into {panel_host.prefix}" in made.stdout
    venv_python = panel_host.prefix / "bin" / "python"
    wrapper = (panel_host.prefix / "bin" / "engine-serve").read_text()
    assert f"exec {venv_python} -I -u -m engine" in wrapper, wrapper
    where = subprocess.run([str(venv_python), "-I", "-c", "import engine; print(engine.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout  # fmt: skip
    assert where.startswith(str(panel_host.prefix)), where  # its own copy, not this checkout
    # beside the root-run engine, nothing of the bot's: no Slack SDK, web server, pydantic, TOTP
    bots = ["slack_bolt", "slack_sdk", "waitress", "pydantic", "pyotp"]
    present = subprocess.run(
        [str(venv_python), "-I", "-c",
         f"import importlib.util as u; print([m for m in {bots!r} if u.find_spec(m)])"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.strip()  # fmt: skip
    assert present == "[]", present
    again = panel_host.setup(profile=sandbox.profile_path, own_virtualenv=True)
    assert again.returncode == 0 and "Done (0 change(s))" in again.stdout, again.stdout
    assert f"ok: engine installed from {REPO} (source " in again.stdout

    sshd = stock_sshd(panel_host.user)
    entry = _entry(panel_host, sshd)
    bot = make_bot(panels=(), ssh_panels={PANEL: entry})
    old_key = sandbox.env_key()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    done = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    assert done.params.get("thread_ts") == ts
    new_key = sandbox.env_key()
    secret_registry.register_key(new_key, "rotated PANEL_ENCRYPTION_KEY")
    assert new_key != old_key
    assert sandbox.php_check_all() == []


def test_the_script_refuses_bad_input_before_changing_anything(tmp_path: Path) -> None:
    not_a_key = tmp_path / "id.pub"
    not_a_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    result = subprocess.run([str(SCRIPT), "--dry-run", str(not_a_key)], capture_output=True, text=True)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"setup-panel-host: {not_a_key} is not an OpenSSH public key (ssh-ed25519 AAAA…); give the .pub file",
    )
    key = make_key(tmp_path / "k")
    result = subprocess.run([str(SCRIPT), "--dry-run", "--from", "1.2.3.4 ; rm", str(key.private_path) + ".pub"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "--from takes sshd patterns" in result.stderr
    result = subprocess.run([str(SCRIPT), "--dry-run", "--sudoers", "/etc/sudoers.d/rotator.conf",
                             str(key.private_path) + ".pub"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "sudo skips files in sudoers.d whose name has a dot" in result.stderr
    assert shutil.which("bash")


def test_the_bot_host_script_and_the_panel_host_script_fit_together(
    panel_host: PanelHost,
    stock_sshd: Callable[[str], StockSSHD],
    panel_factory: Callable[..., PanelSandbox],
    fake_slack: FakeSlack,
    slack_secrets: SlackSecrets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bot's key made by setup-bot-host.sh goes to setup-panel-host.sh; the host key it
    pinned (after its fingerprint was confirmed) is the one sshd presents: doctor passes."""
    sandbox = panel_factory(rows=2)
    sshd = stock_sshd(panel_host.user)
    bot_etc = tmp_path / "bot-etc"
    bot_user = f"rb{secrets.token_hex(4)}"
    shown = subprocess.run(["ssh-keygen", "-lf", str(sshd.known_hosts)], capture_output=True,
                           text=True, check=True).stdout.split()[1]  # fmt: skip
    try:
        made = subprocess.run(
            [str(REPO / "deploy" / "setup-bot-host.sh"), "--user", bot_user, "--config-dir", str(bot_etc),
             "--state-dir", str(tmp_path / "bot-state"), "--bot-python", sys.executable, "--no-unit",
             "--pin", f"127.0.0.1:{sshd.port}={shown}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        panel_host.bot_key = KeyPair(bot_etc / "id_ed25519", (bot_etc / "id_ed25519.pub").read_text().strip())
        installed = panel_host.setup(profile=sandbox.profile_path)
        assert installed.returncode == 0, installed.stdout + installed.stderr

        entry = PanelEntry(name=PANEL, host="127.0.0.1", port=sshd.port, user=panel_host.user,
                           key_file=bot_etc / "id_ed25519", known_hosts=bot_etc / "known_hosts",
                           reconnect_attempts=0)  # fmt: skip
        config = write_config(tmp_path / "rotator.toml", store_url="sqlite://state.db", panels=(),
                              ssh_panels={PANEL: entry})  # fmt: skip
        status, report = _doctor(monkeypatch, {
            "SLACK_BOT_TOKEN": slack_secrets.bot_token,
            "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
            "SLACK_API_URL": fake_slack.url,
            "ROTATOR_CONFIG": str(config),
        })  # fmt: skip
        assert status == 0, report
        assert f"host key {shown}" in report
    finally:
        subprocess.run(["userdel", bot_user], capture_output=True)
