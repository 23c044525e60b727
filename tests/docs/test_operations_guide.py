"""docs/operations.md, followed as written: the guide is a test.

Every fenced block after a ``<!-- guide-test -->`` marker runs here, line by line, in the
guide's order, with bash, as root, with a fresh Debian root's PATH (``/usr/bin/python3``
makes the virtualenvs): the bot host, the panel host, adding the panel, doctor, and after
the first rotation the panel host's checks; then day two (sections 6 to 10): the escrow
recipes installed, the Vault recipe configured from the guide's own ``panel.toml`` and
``hook.env`` lines (``<!-- guide-test: panel.toml -->``, ``<!-- guide-test: hook.env -->``),
a break-glass rotation escrowing its key, the restore from escrow into ``.env`` and
``recover``, who ran it in ``status``, the panel host's upgrade (a re-run as at install),
the bot's ``/metrics``, and the uninstall of both hosts. Between them the test does what
the guide asks a person to do: copy the bot's public key to the panel host, fill in
``bot.env`` and ``rotator.toml``, start what the unit starts (with ``--metrics``, as
section 9 says to add), request and approve a rotation in Slack, and stop the bot before
the uninstall. Slack's Web API is the stand-in (bot/fakes/slack_api.py); the bot is the
real one, run from the unit's own ExecStart as the unit's user, over Slack-signed HTTP; the
panel host is reached through Debian's stock sshd; the rotated panel is checked with its PHP.

What differs on a test machine is swapped, and only that (``Machine.localize``): user names
and folders of its own for the defaults (so that a run cannot touch a real install), a
loopback sshd's port and host key for the panel host's port 22, the test panel's profile
and name, and the vault's CLI: ``vault`` is tests/engine/escrow_standin.py, which fails if
the key reaches it anywhere but on stdin (``hook.env`` gets its PATH and log lines).

Not run here, each for a reason: ``systemctl`` (no systemd on a test machine: the unit's
ExecStart is run as its user instead), the bot host's upgrade block (``systemctl stop``
around a re-run of setup-bot-host.sh, whose re-run tests/deploy/test_install_order.py
covers), a real vault (the recipes' CLIs are stood in, as in tests/engine/test_escrow_recipes.py),
the Slack API ``curl`` for user groups (it needs slack.com), the container (tests/deploy).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.fakes.slack_api import FakeSlack
from bot.fakes.slack_signing import SlackSender
from handlers.blocks import APPROVE_ACTION
from tests.bot.conftest import ALICE, BOB, CHANNEL, ONCALL, PANEL, TEAM, SlackSecrets, card_request_id, is_card
from tests.support.panel import PanelSandbox, free_port
from tests.support.panel_host import StockSSHD, start_stock_sshd

# two virtualenvs pip-installed from the checkout, then a rotation: minutes on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operations.md"
MARKER = re.compile(r"<!-- guide-test -->\n```sh\n(.*?)\n```", re.S)
#: a file's lines the guide gives (``<!-- guide-test: panel.toml -->``), which the test writes
FILE_MARKER = re.compile(r"<!-- guide-test: ([\w.]+) -->\n```\w*\n(.*?)\n```", re.S)
STANDIN = REPO / "tests" / "engine" / "escrow_standin.py"
#: a fresh Debian root's PATH: /usr/bin/python3 (with venv) makes the virtualenvs
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def guide_blocks() -> list[list[str]]:
    """The marked blocks, in order; each a list of commands (a trailing ``\\`` joins lines)."""
    blocks = []
    for body in MARKER.findall(GUIDE.read_text(encoding="utf-8")):
        commands = [c.strip() for c in body.replace("\\\n", " ").splitlines()]
        blocks.append([c for c in commands if c and not c.startswith("#")])
    return blocks


def guide_files() -> dict[str, str]:
    """The file contents the guide gives, by name (``panel.toml``, ``hook.env``)."""
    return {name: body + "\n" for name, body in FILE_MARKER.findall(GUIDE.read_text(encoding="utf-8"))}


@dataclass
class Machine:
    """The defaults the guide uses, and what this test machine uses instead."""

    base: Path
    bot_user: str = field(default_factory=lambda: f"rb{secrets.token_hex(4)}")
    panel_user: str = field(default_factory=lambda: f"rt{secrets.token_hex(4)}")
    sudoers: Path = field(default_factory=lambda: Path(f"/etc/sudoers.d/rotator-guide-{secrets.token_hex(4)}"))
    substitutions: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.base / name

    def bot_options(self) -> str:
        return (f"--user {self.bot_user} --prefix {self.path('bot-opt')} --config-dir {self.path('bot-etc')} "
                f"--state-dir {self.path('bot-state')} --unit-dir {self.path('units')} "
                f"--panel-user {self.panel_user}")  # fmt: skip

    def panel_options(self) -> str:
        return (f"--user {self.panel_user} --prefix {self.path('panel-opt')} "
                f"--config-dir {self.path('panel-etc')} --state-dir {self.path('panel-state')} "
                f"--sudoers {self.sudoers} --bin-dir {self.path('bin')}")  # fmt: skip

    def localize(self, command: str) -> str:
        """The guide's command with this machine's names (longest defaults first)."""
        for default, here in [
            ("/opt/myosicam-rotator-bot", str(self.path("bot-opt"))),
            ("/etc/myosicam-rotator-bot", str(self.path("bot-etc"))),
            ("/var/lib/myosicam-rotator-bot", str(self.path("bot-state"))),
            ("/opt/myosicam-rotator", str(self.path("panel-opt"))),
            ("/etc/myosicam-rotator", str(self.path("panel-etc"))),
            ("/var/lib/myosicam-rotator", str(self.path("panel-state"))),
        ]:
            command = command.replace(default, here)
        command = re.sub(r"(?<=-u )rotator-bot\b", self.bot_user, command)
        command = re.sub(r"^(sudo )?myosicam-rotator\b", lambda m: f"{m[1] or ''}{self.path('bin')}/myosicam-rotator",
                         command)  # fmt: skip
        command = command.replace("deploy/setup-bot-host.sh", f"{REPO}/deploy/setup-bot-host.sh {self.bot_options()}")
        command = command.replace("deploy/setup-panel-host.sh",
                                  f"{REPO}/deploy/setup-panel-host.sh {self.panel_options()}")  # fmt: skip
        for default, here in self.substitutions:
            command = command.replace(default, here)
        return command

    def run(self, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = FRESH_PATH
        done = subprocess.run(["bash", "-c", self.localize(command)], cwd=cwd, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=600)  # fmt: skip
        self.outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture
def machine() -> Iterator[Machine]:
    if os.geteuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("the guide's install runs as root, with sudo")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3")
    # not pytest's tmp_path (0700 root): the bot's user must reach its own folders
    base = Path(tempfile.mkdtemp(prefix="rotator-guide-", dir="/var/tmp"))
    base.chmod(0o755)
    for name in ("units", "panel-home"):
        (base / name).mkdir()
    here = Machine(base)
    yield here
    for script, options in (("setup-bot-host.sh", here.bot_options()), ("setup-panel-host.sh", here.panel_options())):
        subprocess.run(["bash", "-c", f"{REPO}/deploy/{script} {options} --uninstall --purge"],
                       capture_output=True, timeout=120)  # fmt: skip
    for user in (here.bot_user, here.panel_user):
        subprocess.run(["userdel", "--remove", user], capture_output=True)
    here.sudoers.unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)


def _unit(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


class CmdlineWatch:
    """Reads every process's argv from /proc until stopped; keeps what holds a secret."""

    def __init__(self, secrets_: list[str], marker: str) -> None:
        self.secrets, self.marker = secrets_, marker
        self.leaks: list[str] = []
        self.seen_marker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CmdlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if self.marker in argv:
                    self.seen_marker += 1
                if any(s in argv for s in self.secrets):
                    self.leaks.append(argv)


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None:
                said = process.stderr.read() if process.stderr else ""
                raise AssertionError(f"the bot exited {process.returncode}: {said}") from None
            assert time.monotonic() < deadline, "the bot did not listen"
            time.sleep(0.1)


def test_the_install_guide_works_as_written_up_to_a_verified_rotation(
    machine: Machine,
    panel_factory,  # type: ignore[no-untyped-def]
    fake_slack: FakeSlack,
    slack_secrets: SlackSecrets,
) -> None:
    blocks = guide_blocks()
    assert len(blocks) == 12, f"the guide's marked blocks changed: {blocks}"
    bot_host, panel_host, add_panel, doctor, after = blocks[:5]
    escrow_install, escrowed_rotation, restore, who_ran, panel_upgrade, metrics, uninstall = blocks[5:]
    files = guide_files()
    assert set(files) == {"panel.toml", "hook.env"}, files
    sandbox: PanelSandbox = panel_factory(rows=6)
    sshd: StockSSHD = start_stock_sshd(machine.path("sshd"), machine.panel_user)
    machine.substitutions += [
        ("BOT_HOST_IP", "127.0.0.1"),
        ("/var/www/myosicam", str(sandbox.panel_root)),
        (f"{REPO}/deploy/setup-panel-host.sh",
         f"{REPO}/deploy/setup-panel-host.sh --host-key {machine.path('sshd')}/ssh_host_ed25519_key.pub "
         f"--profile {sandbox.profile_path}"),
        ("prod-eu.example.net", f"127.0.0.1:{sshd.port}"),
    ]  # fmt: skip
    bot_process: subprocess.Popen[str] | None = None
    try:
        # 2.1 the bot host, first
        bot_etc = machine.path("bot-etc")
        for command in bot_host:
            machine.run(command, cwd=REPO)
            if "--dry-run" in command:
                assert "would:" in machine.outputs[-1] and not bot_etc.exists()

        # what the script tells a person to run next is the guide's doctor command
        assert machine.localize(doctor[0]) in machine.outputs[-1], machine.outputs[-1]
        assert "ROTATOR_AUDIT_KEY_FILE" not in machine.outputs[-1]  # keygen's audit-key line, for the enrollment key

        # 2.2 the panel host, with the bot's public key copied over
        shutil.copy(bot_etc / "id_ed25519.pub", machine.path("panel-home") / "id_ed25519.pub")
        for command in panel_host:
            machine.run(command, cwd=machine.path("panel-home"))
        printed = re.search(r"This host's SSH key: (SHA256:\S+)", machine.outputs[-2])
        assert printed, machine.outputs[-2]
        machine.substitutions.append(("SHA256:…", printed[1]))

        # 2.3 the panel, on the bot host, with the fingerprint the panel host printed
        for command in add_panel:
            machine.run(command, cwd=REPO)

        # 2.4 fill in bot.env and rotator.toml as the guide says (the Slack stand-in's URL too)
        env_file = bot_etc / "bot.env"
        text = env_file.read_text()
        text = text.replace("SLACK_BOT_TOKEN=\n", f"SLACK_BOT_TOKEN={slack_secrets.bot_token}\n")
        text = text.replace("SLACK_SIGNING_SECRET=\n", f"SLACK_SIGNING_SECRET={slack_secrets.signing_secret}\n")
        env_file.write_text(text + f"SLACK_API_URL={fake_slack.url}\n")
        toml = bot_etc / "rotator.toml"
        toml.write_text(toml.read_text().replace('# channels = ["C0123ROTATE"]', f'channels = ["{CHANNEL}"]')
                        .replace('# approvers = ["S0SECOPS"]', f'approvers = ["{ONCALL}"]'))  # fmt: skip

        # doctor, as the guide prints it: no secret on any process's command line meanwhile
        watched = [slack_secrets.bot_token, slack_secrets.signing_secret]
        with CmdlineWatch(watched, marker="-m bot doctor") as watch:
            for command in doctor:
                checked = machine.run(command, cwd=REPO)
        assert watch.seen_marker > 0, "the watch never saw doctor running"
        assert watch.leaks == []
        assert f"ok    panel {PANEL} probe" in checked.stdout, checked.stdout

        # "systemctl enable --now": what the generated unit runs, as its user (HTTP mode as a
        # drop-in would add it; systemd does not run on this machine)
        unit = _unit(machine.path("units") / "myosicam-rotator-bot.service")
        port = free_port()
        bot_process = subprocess.Popen(
            ["sudo", "-u", unit["User"], "sh", "-c",
             f'set -a; . {unit["EnvironmentFile"]}; exec {unit["ExecStart"]} --http --port {port} --metrics'],
            cwd=unit["WorkingDirectory"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={"PATH": FRESH_PATH},
        )  # fmt: skip
        _wait_for_port(port, bot_process)

        # 2.5 the first rotation: requested and approved in Slack, over signed HTTP
        slack = SlackSender(url=f"http://127.0.0.1:{port}/slack/events", signing_secret=slack_secrets.signing_secret,
                            verification_token=slack_secrets.verification_token, team_id=TEAM, channel_id=CHANNEL,
                            trigger_ids=fake_slack.issue_trigger_id)  # fmt: skip
        old_key = sandbox.env_key()
        asked = slack.command("/rotate-key", f"{PANEL} first rotation after install", ALICE)
        assert asked.status == 200, asked.answer
        card = fake_slack.wait_for("chat.postMessage", is_card, timeout=60)[-1]
        approved = slack.click(APPROVE_ACTION, card_request_id(card), BOB, str(card.response["ts"]))
        assert approved.status == 200, approved.answer
        fake_slack.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=180)
        new_key = sandbox.env_key()
        assert new_key != old_key
        assert sandbox.php_check_all() == []  # the panel's own PHP opens every credential

        for command in after:
            machine.run(command, cwd=machine.path("panel-home"))
        status = machine.outputs[-2]
        assert status.startswith("Nothing unfinished"), status
        assert f"rotate-key: ok · requested by {ALICE} · approved by {BOB}" in status, status

        # 6. escrow into a vault: the recipes installed, the profile and hook.env as the guide gives them
        for command in escrow_install:
            machine.run(command, cwd=REPO)
        panel_toml, hook_env = machine.path("panel-etc") / "panel.toml", machine.path("panel-etc") / "hook.env"
        assert (hook_env.stat().st_uid, stat.S_IMODE(hook_env.stat().st_mode)) == (0, 0o600)
        assert os.access(machine.path("panel-opt") / "escrow" / "vault.sh", os.X_OK)
        profile_text = panel_toml.read_text()
        assert 'escrow = "none"\n' in profile_text, profile_text
        panel_toml.write_text(profile_text.replace('escrow = "none"\n', machine.localize(files["panel.toml"])))
        vault_bin, vault_store = machine.path("vault-bin"), machine.path("vault-store")
        vault_bin.mkdir()
        vault_store.mkdir()
        (vault_bin / "vault").symlink_to(STANDIN)
        STANDIN.chmod(0o755)
        standin = {"PATH": f"{vault_bin}:{FRESH_PATH}", "STANDIN_LOG": str(machine.path("vault.jsonl")),
                   "STANDIN_STORE": str(vault_store)}  # fmt: skip
        hook_env.write_text(files["hook.env"] + "".join(f"{k}={v}\n" for k, v in standin.items()))
        env_before = sandbox.env_path.read_bytes()  # .env as a backup taken before the next rotation holds it
        for command in escrowed_rotation:
            machine.run(command, cwd=machine.path("panel-home"))
        assert "escrowed (vault)" in machine.outputs[-1], machine.outputs[-1]
        escrowed_key = sandbox.env_key()
        assert escrowed_key != new_key
        calls = [json.loads(line) for line in machine.path("vault.jsonl").read_text().splitlines()]
        assert [c["argv"][:2] for c in calls] == [["kv", "put"]], calls  # the stand-in checked: stdin only
        (escrowed_fp,) = [a.split("=", 1)[1] for a in calls[0]["argv"] if a.startswith("fingerprint=")]
        assert re.fullmatch(r"[0-9a-f]{16}", escrowed_fp) and escrowed_fp in machine.outputs[-1]  # the new key's

        # the restore: .env replaced by the older copy, then key from escrow -> .env -> recover
        sandbox.env_path.write_bytes(env_before)
        lost = subprocess.run(["bash", "-c", machine.localize("myosicam-rotator probe")], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert lost.returncode != 0, lost.stdout  # the guide: probe finds no value opening
        machine.substitutions += [
            ("vault kv get", "env " + " ".join(f"{k}={v}" for k, v in standin.items()) + " vault kv get"),
            ("myosicam/prod-eu/", f"myosicam/{tomllib.loads(panel_toml.read_text())['name']}/"),
        ]
        for command in restore:
            machine.run(command, cwd=machine.path("panel-home"))
        assert sandbox.env_key() == escrowed_key
        assert sandbox.php_check_all() == []

        # 7. who ran the break-glass rotation
        for command in who_ran:
            machine.run(command, cwd=machine.path("panel-home"))
        assert "rotate-key: ok · requested by cli:root ·" in machine.outputs[-1], machine.outputs[-1]

        # 8. the panel host's upgrade: a re-run as at install keeps panel.toml (its escrow lines)
        for command in panel_upgrade:
            machine.run(command, cwd=machine.path("panel-home"))
        assert "kept as it is" in machine.outputs[-2] and "vault.sh" in panel_toml.read_text()

        # 9. the bot's metrics (started with --metrics above)
        machine.substitutions.append(("127.0.0.1:3000", f"127.0.0.1:{port}"))
        for command in metrics:
            machine.run(command, cwd=REPO)
        exposed = machine.outputs[-1]
        assert 'myosicam_rotations_total{op="rotate-key",outcome="done"} 1.0' in exposed, exposed
        assert f'myosicam_panel_up{{panel="{PANEL}"}} 1.0' in exposed, exposed

        # 10. uninstall (the bot stopped first, as the guide says)
        bot_process.terminate()
        bot_process.communicate(timeout=20)
        bot_process = None
        for command in uninstall:
            machine.run(command, cwd=REPO)
        for user in (machine.bot_user, machine.panel_user):
            assert subprocess.run(["id", user], capture_output=True).returncode != 0, f"{user} is still there"
        assert not machine.sudoers.exists() and not (machine.path("bin") / "myosicam-rotator").exists()
        assert not (machine.path("units") / "myosicam-rotator-bot.service").exists()
        journal = Path(tomllib.loads(panel_toml.read_text())["journal_dir"])  # the test panel's profile's
        kept = [bot_etc / "id_ed25519", bot_etc / "audit.key", env_file, toml, panel_toml,
                journal / "runs.jsonl"]  # fmt: skip
        assert [p for p in kept if not p.exists()] == []
        assert any(machine.path("bot-state").iterdir()), "the store (the audit log) is kept"

        everything = "\n".join(machine.outputs)
        assert slack_secrets.bot_token not in everything and slack_secrets.signing_secret not in everything
        assert new_key not in everything and old_key not in everything and escrowed_key not in everything
    finally:
        if bot_process is not None:
            bot_process.terminate()
            try:
                bot_process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                bot_process.kill()
        sshd.stop()
