"""The escrow recipes in deploy/escrow/ through the engine's real hook runner (issue 22, item 1).

Each recipe runs as the escrow hook of a real rotate-key, against a stand-in for its CLI
(tests/engine/escrow_standin.py, first on the hook's PATH) that records argv, environment
and stdin and fails if the new key is anywhere but on its stdin. What the vault CLI needs
comes from a root-only ``hook_env_file`` and a ``hook_environment`` name; the engine's other
variables never reach it. The documented restore gives the key back, and key from escrow ->
``.env`` -> ``recover`` brings a panel whose ``.env`` was lost mid-rotation back.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import fingerprint
from tests.engine.runner import REPO, crash_at, run_engine
from tests.support.secrets_scan import register_secret

ESCROW = REPO / "deploy" / "escrow"
STANDIN = Path(__file__).with_name("escrow_standin.py")
TOOLS = ("vault", "op", "bw", "aws", "age", "gpg")
KEY = "PANEL_ENCRYPTION_KEY"


def restore_argv(recipe: str, panel: str, fp: str, escrow_dir: Path) -> list[str]:
    """The restore command each recipe's header (and docs/operations.md) gives."""
    item = f"myosicam {panel} {KEY} {fp}"
    return {
        "vault.sh": ["vault", "kv", "get", "-mount=secret", "-field=value", f"myosicam/{panel}/{KEY}"],
        "aws-secretsmanager.sh": ["aws", "secretsmanager", "get-secret-value", "--secret-id",
                                  f"myosicam/{panel}/{KEY}", "--query", "SecretString", "--output", "text"],
        "1password.sh": ["op", "item", "get", item, "--vault", "MyOsicam", "--fields", "label=password", "--reveal"],
        "bitwarden.sh": ["bw", "get", "password", item],
        "age-file.sh": ["age", "-d", "-i", "identity.txt", str(escrow_dir / f"{panel}-{KEY}-{fp}.age")],
        "gpg-file.sh": ["gpg", "--decrypt", str(escrow_dir / f"{panel}-{KEY}-{fp}.gpg")],
    }[recipe]


class Vaults:
    """A bin folder of stand-in CLIs, their log and store, and the hook_env_file for them."""

    def __init__(self, root: Path) -> None:
        self.bin, self.store, self.escrow_dir = root / "bin", root / "store", root / "escrowed"
        for folder in (self.bin, self.store, self.escrow_dir):
            folder.mkdir()
        self.log = root / "standin.jsonl"
        for tool in TOOLS:
            (self.bin / tool).symlink_to(STANDIN)
        STANDIN.chmod(0o755)
        self.token = "hvs." + secrets.token_hex(12)
        register_secret(self.token, "VAULT_TOKEN")
        self.env_file = root / "hook.env"
        self.env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "STANDIN_LOG": str(self.log),
            "STANDIN_STORE": str(self.store),
            "VAULT_TOKEN": self.token,
            "ESCROW_OP_VAULT": "MyOsicam",
            "BW_SESSION": self.token,
            "AWS_REGION": "eu-central-1",
            "ESCROW_DIR": str(self.escrow_dir),
            "ESCROW_AGE_RECIPIENTS": str(root / "recipients.txt"),
            "ESCROW_GPG_RECIPIENT": "security@example.net",
        }
        self.env_file.write_text("# what the escrow CLIs need\n" + "".join(
            f"{name}={value}\n" for name, value in self.env.items()))
        self.env_file.chmod(0o600)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.env},
                              cwd=self.escrow_dir, check=False, timeout=30)


@pytest.fixture
def vaults(tmp_path: Path) -> Vaults:
    return Vaults(tmp_path)


def _profile(panel, vaults: Vaults, recipe: str, **more: Any) -> Path:
    return panel.write_profile(
        escrow_command=[str(ESCROW / recipe)], escrow_label=recipe.removesuffix(".sh"),
        hook_env_file=str(vaults.env_file), hook_environment=["VAULT_ADDR"], **more,
    )


@pytest.mark.parametrize("recipe", sorted(p.name for p in ESCROW.glob("*.sh")))
def test_each_recipe_escrows_the_new_key_on_stdin_only_and_gives_it_back(panel_factory, vaults, recipe):
    panel = panel_factory(rows=3)
    old_key = panel.env_key()
    slack = "xoxb-" + secrets.token_hex(12)
    register_secret(slack, "SLACK_BOT_TOKEN")
    profile = _profile(panel, vaults, recipe)

    run = run_engine(profile, "rotate-key", "--yes", "--json",
                     env={"VAULT_ADDR": "https://vault.example.net:8200", "SLACK_BOT_TOKEN": slack})
    new_key = panel.env_key()
    register_secret(new_key, "new key")

    assert run.returncode == 0, run.stdout + run.stderr
    assert new_key != old_key and panel.php_check_all() == []
    assert f"escrowed ({recipe.removesuffix('.sh')})" in run.step("stage")["detail"]
    calls = vaults.calls()
    assert calls, "the recipe called no CLI"
    for call in calls:
        assert new_key not in " ".join(call["argv"]) and new_key not in json.dumps(call["env"])
        assert call["env"].get("VAULT_TOKEN") == vaults.token  # from hook_env_file
        assert call["env"].get("VAULT_ADDR") == "https://vault.example.net:8200"  # hook_environment
        assert "SLACK_BOT_TOKEN" not in call["env"] and slack not in json.dumps(call["env"])
        assert call["env"]["ROTATOR_KEY_FINGERPRINT"] == fingerprint(new_key)
    restored = vaults.run(restore_argv(recipe, "sandbox", fingerprint(new_key), vaults.escrow_dir))
    assert (restored.returncode, restored.stdout.strip()) == (0, new_key), restored.stderr
    assert not run.leaks()


def test_the_standin_fails_a_recipe_that_puts_the_key_on_argv(panel_factory, vaults, tmp_path):
    """The stand-in can fail: the old 1Password example (key as an assignment argument) is refused."""
    panel = panel_factory(rows=2)
    old_key = panel.env_key()
    on_argv = ["sh", "-c", 'op item edit "myosicam $ROTATOR_PANEL" "key[password]=$(cat)"']
    profile = panel.write_profile(escrow_command=on_argv, hook_env_file=str(vaults.env_file))

    run = run_engine(profile, "rotate-key", "--yes", "--json")

    assert run.returncode != 0 and run.closing["code"] == "hook_failed"
    assert "escrow failed (exit 97)" in run.closing["message"]
    assert panel.env_key() == old_key and panel.php_check_all() == []


@pytest.mark.parametrize(("mode", "owner", "said"), [
    (0o640, None, "can be read by others (mode 0640): chmod 600"),
    (0o604, None, "can be read by others (mode 0604): chmod 600"),
    (0o600, "nobody", "must be owned by root"),
])
def test_a_hook_env_file_others_could_read_is_refused_before_any_change(
        panel_factory, vaults, mode, owner, said):
    panel = panel_factory(rows=2)
    old_key, rows = panel.env_key(), panel.stored_values()
    vaults.env_file.chmod(mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        import pwd
        os.chown(vaults.env_file, pwd.getpwnam(owner).pw_uid, -1)
    profile = _profile(panel, vaults, "vault.sh")

    run = run_engine(profile, "rotate-key", "--yes", "--json")

    assert run.returncode != 0
    assert said in run.closing["message"] and str(vaults.env_file) in run.closing["message"]
    assert vaults.token not in run.stdout + run.stderr
    assert vaults.calls() == []
    assert (panel.env_key(), panel.stored_values()) == (old_key, rows)
    assert stat.S_IMODE(vaults.env_file.stat().st_mode) == mode


def test_restore_key_from_escrow_into_env_then_recover(panel_factory, vaults):
    """The engine dies after the rows moved to the new key and `.env` is then lost (restored
    from an older backup holding some other key): `recover` refuses to guess; the key from
    the vault, put into `.env` with put-key-in-env, lets `recover` finish the rotation."""
    panel = panel_factory(rows=6)
    profile = _profile(panel, vaults, "vault.sh")
    crash = crash_at(profile, "state:RESTARTED", "rotate-key", "--yes", "--json")
    assert crash.returncode == -9
    escrowed = vaults.run(restore_argv("vault.sh", "sandbox", "", vaults.escrow_dir)).stdout.strip()
    register_secret(escrowed, "new key (escrow)")
    stray = secrets.token_hex(32)
    panel.set_env_key(stray)  # the lost .env, restored from an old backup

    refused = run_engine(profile, "recover", "--json")
    assert refused.returncode != 0 and "belongs to neither side" in refused.closing["message"]

    put = subprocess.run(
        [str(ESCROW / "put-key-in-env"), str(panel.env_path)],
        input=vaults.run(restore_argv("vault.sh", "sandbox", "", vaults.escrow_dir)).stdout,
        capture_output=True, text=True, check=False,
    )
    assert put.returncode == 0, put.stderr
    assert escrowed not in put.stdout + put.stderr
    recovered = run_engine(profile, "recover", "--json")

    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert recovered.closing["state"] == "DONE"
    assert panel.env_key() == escrowed
    assert panel.php_check_all() == []


def test_the_vault_recipe_escrows_the_new_database_password_on_its_own_path(panel_factory, vaults):
    """rotate-db-password through the same script: filed under DB_PASSWORD, never on argv."""
    panel = panel_factory(rows=2, server=True)
    password_re = r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]{32}(?![A-Za-z0-9_.-])"
    with vaults.env_file.open("a") as env_file:
        env_file.write(f"STANDIN_SECRET_RE={password_re}\n")
    vaults.env["STANDIN_SECRET_RE"] = password_re
    profile = _profile(panel, vaults, "vault.sh", db_password_escrow_command=[str(ESCROW / "vault.sh")])

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")
    new = panel.env_path.read_text().split('DB_PASSWORD="', 1)[1].split('"', 1)[0]
    register_secret(new, "new DB_PASSWORD")

    assert run.returncode == 0, run.stdout + run.stderr
    calls = vaults.calls()
    assert [c["env"]["ROTATOR_SECRET"] for c in calls] == ["DB_PASSWORD"]
    assert new not in " ".join(calls[0]["argv"]) and new not in json.dumps(calls[0]["env"])
    restored = vaults.run(["vault", "kv", "get", "-mount=secret", "-field=value", "myosicam/sandbox/DB_PASSWORD"])
    assert (restored.returncode, restored.stdout.strip()) == (0, new), restored.stderr
