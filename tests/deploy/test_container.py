"""The image as a team runs it, built and run with podman (TESTING-FACTS.md: runc, ulimits,
the host's CA bundle for pip during the build, a local debootstrap base image).

One build, then two runs: HTTP mode (``/healthz`` answers, an unsigned Slack request gets
401, the store lands on the writable /data volume, SIGTERM stops it cleanly) and Socket
Mode (it connects to the loopback stand-in and acknowledges a slash command).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.fakes.slack_api import FakeSlack
from bot.fakes.socket_mode import FakeSocketMode
from tests.bot.conftest import ALICE, AUDIT_KEY, SlackSecrets, write_config
from tests.deploy.podman import CA_BUNDLE, ensure_base_image, podman, ulimits
from tests.deploy.test_bot_host import fingerprint
from tests.support.panel import free_port
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import SSHServer

# cold: debootstrap (about 70 s on a good mirror, minutes on a slow one) and the build
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/myosicam-rotator-bot:test"
UID = 10001  # the image's rotator user


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0:
        pytest.skip("podman builds and runs images as root here")
    assert shutil.which("podman"), "podman is not installed (./test.sh installs podman, runc, debootstrap)"
    base = ensure_base_image()
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout.strip()
    podman(
        "build", "--pull=never", "--format", "docker", *ulimits(),
        "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--build-arg", f"BASE={base}",
        "-t", IMAGE, str(REPO), timeout=900,
    )  # fmt: skip
    if before and before != podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip():
        podman("rmi", before, check=False)  # the previous build's image, now untagged
    return IMAGE


@pytest.fixture
def mounts(tmp_path: Path) -> tuple[Path, Path]:
    """/config (read-only in the container) and /data (the writable store volume)."""
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    os.chown(data, UID, UID)
    (config / "audit.key").write_text(AUDIT_KEY.hex() + "\n")
    os.chown(config / "audit.key", UID, UID)
    (config / "audit.key").chmod(0o600)
    (config / "id_ed25519").write_text("")
    write_config(config / "rotator.toml", store_url="sqlite:////data/rotator.db", panels=(),
                 ssh_panels={})  # fmt: skip
    with (config / "rotator.toml").open("a") as toml:
        toml.write('\n[panels.prod-eu]\nhost = "127.0.0.1"\nport = 1\nuser = "rotator"\n'
                   'key_file = "/config/id_ed25519"\nknown_hosts = "/config/known_hosts"\n')  # fmt: skip
    os.chmod(config / "rotator.toml", 0o644)
    return config, data


def run(image: str, mounts: tuple[Path, Path], env: dict[str, str]) -> str:
    config, data = mounts
    name = f"rotator-test-{secrets.token_hex(4)}"
    environment = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
    podman("run", "-d", "--name", name, "--network", "host", *ulimits(), *environment,
           "-v", f"{config}:/config:ro", "-v", f"{data}:/data", image)  # fmt: skip
    return name


def stop(name: str) -> tuple[int, str]:
    """SIGTERM, then the exit code and the log."""
    podman("stop", "-t", "15", name, timeout=60)
    code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())
    logs = podman("logs", name).stderr + podman("logs", name).stdout
    podman("rm", "-f", name, check=False)
    return code, logs


def wait_health(port: int, name: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return dict(json.loads(response.read()))
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise AssertionError(podman("logs", name, check=False).stderr[-3000:]) from None
            time.sleep(0.2)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "-f", name, check=False)


def test_the_image_serves_http_mode_with_its_store_on_the_data_volume(
    image: str, mounts: tuple[Path, Path], fake_slack: FakeSlack, slack_secrets: SlackSecrets,
    containers: list[str],
) -> None:
    port = free_port()
    name = run(image, mounts, {
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "SLACK_API_URL": fake_slack.url,
        "PORT": str(port),
    })  # fmt: skip
    containers.append(name)
    assert wait_health(port, name) == {"ok": True}
    unsigned = urllib.request.Request(f"http://127.0.0.1:{port}/slack/events", method="POST",
                                      data=b"command=%2Frotate-help&user_id=U0ALICE")  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=5)
    assert refused.value.code == 401
    assert (mounts[1] / "rotator.db").exists()
    code, logs = stop(name)
    assert code == 0, logs
    assert f"serving Slack on http://0.0.0.0:{port}/slack/events" in logs
    assert slack_secrets.bot_token not in logs and slack_secrets.signing_secret not in logs


def test_the_image_uses_socket_mode_when_the_app_token_is_set(
    image: str, mounts: tuple[Path, Path], fake_slack: FakeSlack, slack_secrets: SlackSecrets,
    secret_registry: SecretRegistry, containers: list[str],
) -> None:
    app_token = f"xapp-1-A0ROTATOR-{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"
    secret_registry.register(app_token, "SLACK_APP_TOKEN")
    stand_in = FakeSocketMode(app_token).start().attach(fake_slack)
    try:
        port = free_port()
        name = run(image, mounts, {
            "SLACK_BOT_TOKEN": slack_secrets.bot_token,
            "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
            "SLACK_APP_TOKEN": app_token,
            "SLACK_API_URL": fake_slack.url,
            "PORT": str(port),
        })  # fmt: skip
        containers.append(name)
        stand_in.wait_connections(1, timeout=60)
        assert "/rotate-key [panel] &lt;reason&gt;" in stand_in.command("/rotate-help", "", ALICE).text
        assert wait_health(port, name) == {"ok": True}
        code, logs = stop(name)
    finally:
        stand_in.stop()
    assert code == 0, logs
    assert "serving Slack in Socket Mode" in logs and app_token not in logs


def test_a_store_left_beside_the_read_only_config_is_explained(
    image: str, mounts: tuple[Path, Path], slack_secrets: SlackSecrets
) -> None:
    """The store's default place (beside rotator.toml) is read-only in the container: one
    line says where to put it instead."""
    config, data = mounts
    toml = config / "rotator.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.startswith("store")))
    result = podman(
        "run", "--rm", *ulimits(), "-e", f"SLACK_BOT_TOKEN={slack_secrets.bot_token}",
        "-e", f"SLACK_SIGNING_SECRET={slack_secrets.signing_secret}",
        "-v", f"{config}:/config:ro", "-v", f"{data}:/data", image, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the state store (sqlite:///config/rotator.db)") and last.endswith(
        'set `store` in it to a writable place (in the container: store = "sqlite:////data/rotator.db", '
        "on the /data volume)"
    ), last


def test_the_image_runs_what_setup_bot_host_made_as_its_user(
    image: str, fake_slack: FakeSlack, slack_secrets: SlackSecrets, containers: list[str], tmp_path: Path
) -> None:
    """The documented recipe on a host that deploy/setup-bot-host.sh prepared: the script's
    user (not the image's uid 10001), its 0600 keys, bot.env's ROTATOR_CONFIG (over the
    image's), the host paths in rotator.toml (key_file, known_hosts, the store), mounted at
    the same paths. It starts, serves, keeps its store in the host's state folder."""
    base = Path(tempfile.mkdtemp(prefix="rotator-container-", dir="/var/tmp"))
    base.chmod(0o755)
    user = f"rb{secrets.token_hex(4)}"
    etc, state = base / "etc", base / "state"
    panel = SSHServer.start(tmp_path / "sshd")
    try:
        made = subprocess.run(
            [str(REPO / "deploy" / "setup-bot-host.sh"), "--user", user, "--config-dir", str(etc),
             "--state-dir", str(state), "--bot-python", sys.executable, "--no-unit",
             "--add-panel", "prod-eu", f"127.0.0.1:{panel.port}", "--pin", fingerprint(panel.host_key.public_line)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        env_file = etc / "bot.env"
        env_file.write_text(
            env_file.read_text()
            .replace("SLACK_BOT_TOKEN=\n", f"SLACK_BOT_TOKEN={slack_secrets.bot_token}\n")
            .replace("SLACK_SIGNING_SECRET=\n", f"SLACK_SIGNING_SECRET={slack_secrets.signing_secret}\n")
            + f"SLACK_API_URL={fake_slack.url}\n"
        )
        toml = etc / "rotator.toml"
        toml.write_text(toml.read_text().replace('# channels = ["C0123ROTATE"]', 'channels = ["C0ROTATE"]')
                        .replace('# approvers = ["S0SECOPS"]', 'approvers = ["S0ONCALL"]'))  # fmt: skip
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        port = free_port()
        name = f"rotator-test-{secrets.token_hex(4)}"
        podman("run", "-d", "--name", name, "--network", "host", *ulimits(), "--user", f"{uid}:{gid}",
               "--env-file", str(env_file), "-e", f"PORT={port}",
               "-v", f"{etc}:{etc}:ro", "-v", f"{state}:{state}", image)  # fmt: skip
        containers.append(name)
        assert wait_health(port, name) == {"ok": True}
        store = state / "rotator.db"
        assert store.exists() and store.stat().st_uid == uid
        code, logs = stop(name)
        assert code == 0, logs
        assert slack_secrets.bot_token not in logs and slack_secrets.signing_secret not in logs
    finally:
        panel.stop()
        subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
