"""Does the suite catch realistic bugs? Apply each, one at a time, and run the tests that should fail.

``python bench/mutation_check.py [--only NAME ...] [--list] [--no-baseline]``

Each mutant is a small text patch (the bug a tired person could write: a check
switched off, a field dropped from a hash, a cap removed). The tree is copied
to a temporary folder, the patch applied there, and the mutant's test subset
run against the copy (``PYTHONPATH`` points at it, so engines the tests spawn
with ``sys.executable`` run the mutated code too). A mutant is *killed* when
its tests fail, *survives* when they pass. A patch that no longer applies
(the code moved) is reported, not counted. First, each subset runs once on the
unmutated copy: a subset that already fails would kill every mutant and prove
nothing.

Not part of the test run: it takes minutes. Prints one line per mutant and
the kill rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    patches: tuple[tuple[str, str, str], ...]  # (file, old text, new text); old must be unique
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "the rotation's one pass stages values the current key does not open",
        (("engine/ops/key/preflight.py", "    if bad:\n        shown", "    if False:\n        shown"),),
        ("tests/engine/test_failures.py::test_undecryptable_value_is_named_and_nothing_changes",),
    ),
    Mutant(
        "the round trip of each sealed value is skipped",
        (("engine/ops/key/scan.py", "        if dest.open(sealed) != plain:\n", "        if False:\n"),),
        ("tests/engine/test_seal_pass.py",),
    ),
    Mutant(
        "signature not checked on interactions (clicks, modal submissions)",
        (
            (
                "bot/app.py",
                "    def _debug_log_error(self, signature: Any, timestamp: Any, body: Any) -> None:",
                "    @staticmethod\n"
                "    def _can_skip(mode: Any, body: Any) -> bool:\n"
                '        return mode == "socket_mode" or "type" in (body or {})\n\n'
                "    def _debug_log_error(self, signature: Any, timestamp: Any, body: Any) -> None:",
            ),
        ),
        ("tests/bot/test_http.py", "tests/bot/test_approval.py"),
    ),
    Mutant(
        "a replayed request (same signature) accepted",
        (("bot/app.py", "        if replayed and not retry:", "        if False:"),),
        ("tests/bot/test_http.py",),
    ),
    Mutant(
        "a non-numeric request timestamp reaches Bolt (500 and a traceback)",
        (
            (
                "bot/app.py",
                "            if not _TIMESTAMP.fullmatch(timestamp):",
                "            if False:",
            ),
        ),
        ("tests/bot/test_http.py",),
    ),
    Mutant(
        "the requester may approve their own request",
        (
            (
                "handlers/actions.py",
                "        if person == request.requester:\n"
                "            others = deps.policy.approvers_for(person)[0]\n",
                "        if False:\n"
                "            others = deps.policy.approvers_for(person)[0]\n",
            ),
        ),
        ("tests/bot/test_approval.py",),
    ),
    Mutant(
        "the requester may deny their own request",
        (
            (
                "handlers/actions.py",
                "    if person == request.requester:\n        return m.use_cancel(request_id), None",
                "    if False:\n        return m.use_cancel(request_id), None",
            ),
        ),
        ("tests/bot/test_approval.py",),
    ),
    Mutant(
        "one approval completes a request that needs two",
        (
            (
                "handlers/actions.py",
                "complete = len(approvals) >= deps.policy.approvals_required",
                "complete = True",
            ),
        ),
        ("tests/bot/test_approval.py",),
    ),
    Mutant(
        "an expired request can still be approved",
        (
            (
                "handlers/actions.py",
                "        now = deps.clock()\n        if now >= request.expires_at:\n"
                "            expired = expire_if_due(deps.store, request, now)\n"
                "            if expired is None:\n                continue\n"
                "            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)\n"
                "        if person == request.requester:",
                "        now = deps.clock()\n        if False:\n"
                "            expired = expire_if_due(deps.store, request, now)\n"
                "            if expired is None:\n                continue\n"
                "            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)\n"
                "        if person == request.requester:",
            ),
        ),
        ("tests/bot/test_approval.py", "tests/bot/test_expiry_on_click.py"),
    ),
    Mutant(
        "an expired request can still be denied",
        (
            (
                "handlers/actions.py",
                "        if now >= request.expires_at:\n"
                "            expired = expire_if_due(deps.store, request, now)\n"
                "            if expired is None:\n                continue\n"
                "            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)\n"
                "        denied = ",
                "        if False:\n"
                "            expired = expire_if_due(deps.store, request, now)\n"
                "            if expired is None:\n                continue\n"
                "            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)\n"
                "        denied = ",
            ),
        ),
        ("tests/bot/test_approval.py", "tests/bot/test_expiry_on_click.py"),
    ),
    Mutant(
        "the audit hash leaves out request_id",
        (
            (
                "bot/store/audit_chain.py",
                "canonical([seq, ts_ms, kind, request_id, actor, data, prev_hash])",
                "canonical([seq, ts_ms, kind, actor, data, prev_hash])",
            ),
        ),
        ("tests/bot/test_audit.py", "tests/bot/test_store.py", "-k", "not mysql"),
    ),
    Mutant(
        "the audit hash leaves out ts_ms",
        (
            (
                "bot/store/audit_chain.py",
                "canonical([seq, ts_ms, kind, request_id, actor, data, prev_hash])",
                "canonical([seq, kind, request_id, actor, data, prev_hash])",
            ),
        ),
        ("tests/bot/test_audit.py", "tests/bot/test_store.py", "-k", "not mysql"),
    ),
    Mutant(
        "the Approve confirmation lists every agent (no cap)",
        (
            (
                "handlers/messages.py",
                'return f"{head}{fit(what, room)}.{tail}"',
                'return f"{head}{what}.{tail}"',
            ),
            ("handlers/blocks.py", "_target(request, shown=3)", "_target(request, shown=10_000)"),
        ),
        ("tests/handlers/test_limits.py", "tests/bot/test_slack_limits.py"),
    ),
    Mutant(
        "text from people and the engine posted to Slack unescaped",
        (
            (
                "handlers/messages.py",
                '    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")',
                "    return str(value)",
            ),
        ),
        ("tests/handlers", "tests/bot/test_slack_limits.py"),
    ),
    Mutant(
        "a long thread reply posted as one oversized section",
        (
            (
                "handlers/blocks.py",
                '    return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": _sections(text)}\n\n\n'
                "def deny_modal",
                '    return {"text": text, "blocks": [{"type": "section", '
                '"text": {"type": "mrkdwn", "text": text}}]}\n\n\ndef deny_modal',
            ),
        ),
        ("tests/handlers/test_limits.py",),
    ),
    Mutant(
        "the bot gives up on a rate-limited Slack call",
        (
            (
                "bot/app.py",
                "        client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))",
                "        pass",
            ),
        ),
        ("tests/bot/test_fake_slack.py",),
    ),
    Mutant(
        "the fake engine checks nothing in the request",
        (
            (
                "tests/support/fake_engine.py",
                "        refusal = host.refuse(request, request)",
                "        refusal = None",
            ),
        ),
        ("tests/bot/test_run.py", "tests/test_support.py", "tests/bot/test_approval.py"),
    ),
    Mutant(
        "the fake Slack lets a trigger id open two modals",
        (
            (
                "bot/fakes/slack_api.py",
                "        if trigger in self._exchanged:",
                "        if False:",
            ),
        ),
        ("tests/bot/test_fake_slack.py",),
    ),
    Mutant(
        "the fake Slack updates a message that was never posted",
        (
            (
                "bot/fakes/slack_api.py",
                "                if self._messages.get(str(ts)) != params.get(\"channel\"):",
                "                if False:",
            ),
        ),
        ("tests/bot/test_fake_slack.py",),
    ),
    Mutant(
        "the fake Slack accepts unknown block types",
        (
            (
                "bot/fakes/slack_blocks.py",
                "            return [f\": unknown block type {raw.get('type')!r}\"]",
                "            return []",
            ),
        ),
        ("tests/bot/test_fake_slack.py",),
    ),
    Mutant(
        "the engine runs a plan other than the approved one",
        (
            (
                "engine/protocol/__init__.py",
                "    if request.plan_hash is not None and request.plan_hash != plan_hash(binding):",
                "    if False:",
            ),
        ),
        ("tests/engine/test_run_binding.py",),
    ),
    Mutant(
        "the new .env is not chowned to its owner",
        (("engine/envfile.py", "os.fchown(fd, ", "(lambda *a: None)(fd, "),),
        (
            "tests/engine/test_envfile.py",
            "tests/engine/test_file_safety.py",
            "tests/engine/test_production_way.py",
        ),
    ),
    Mutant(
        "free text from the engine is not redacted",
        (
            (
                "engine/protocol/__init__.py",
                '    """Hide anything that looks like key material or a credential."""\n',
                '    """Hide anything that looks like key material or a credential."""\n'
                "    return text\n",
            ),
        ),
        ("tests/engine/test_serve.py", "tests/bot/test_secrets.py"),
    ),
    Mutant(
        "the TOTP window widened to two steps",
        (("bot/totp.py", "VALID_WINDOW = 1  #", "VALID_WINDOW = 2  #"),),
        ("tests/bot/test_step_up.py", "-k", "two_steps_away"),
    ),
    Mutant(
        "the step-up try counted after the code is checked",
        (
            (
                "bot/totp.py",
                "        taken, refused = self._take_try(user_id, now)\n"
                "        if taken is None:\n"
                "            return refused or StepUpVerdict(StepUpCheck.NOT_ENROLLED)\n"
                "        try:\n"
                "            matched = self._matching_step(enrollment, code, taken, now)\n"
                "        except StoreError:\n"
                "            return self._key_mismatch(user_id)\n"
                "        if matched is not None and self.store.use_step(",
                "        failures = self.store.failures_since(user_id, now - self.window_s)\n"
                "        if len(failures) >= self.max_failures:\n"
                "            return self._limited(failures, now)\n"
                "        taken = Try(None, tuple(failures))\n"
                "        try:\n"
                "            matched = self._matching_step(enrollment, code, taken, now)\n"
                "        except StoreError:\n"
                "            return self._key_mismatch(user_id)\n"
                "        if matched is None:\n"
                "            self.store.record_failure(user_id, keep_s=self.window_s)\n"
                "        if matched is not None and self.store.use_step(",
            ),
        ),
        ("tests/bot/test_step_up_enrollment.py", "-k", "parallel"),
    ),
    Mutant(
        "a confirmed enrollment approves without an enroll admin",
        (
            (
                "bot/totp.py",
                "        if enrollment.status == AWAITING_APPROVAL:\n"
                "            return StepUpVerdict(StepUpCheck.AWAITING_APPROVAL)\n"
                "        return None",
                "        return None",
            ),
        ),
        ("tests/bot/test_step_up_enrollment.py", "-k", "another_enroll_admin"),
    ),
    Mutant(
        "the enrollment DM is kept after confirmation",
        (
            (
                "handlers/enroll.py",
                "    delete_secret(step_up_, person.user_id, person.key)\n    admins",
                "    admins",
            ),
        ),
        ("tests/bot/test_step_up_enrollment.py", "-k", "survives_confirmation"),
    ),
    Mutant(
        "an enroll admin resets their own factor without a code",
        (
            (
                "handlers/enroll.py",
                "    if user_id == person.user_id and step_up_.status",
                "    if False and step_up_.status",
            ),
        ),
        ("tests/bot/test_step_up_enrollment.py", "-k", "own_factor"),
    ),
    Mutant(
        "the requester's own code counts in a forged submission",
        (
            (
                "handlers/actions.py",
                "    rules = approve(deps, request_id, person)  # without a factor",
                "    rules = ClickOutcome(needs_code=request)  # without a factor",
            ),
            (
                "handlers/actions.py",
                "        if person == request.requester:\n",
                "        if person == request.requester and not stepped_up:\n",
            ),
        ),
        ("tests/bot/test_step_up.py", "-k", "requester_submitting"),
    ),
    Mutant(
        "the secret scan reads only WARNING and above",
        (("pyproject.toml", 'log_level = "DEBUG"\n', ""),),
        ("tests/bot/test_secrets.py", "-k", "debug_or_info"),
    ),
)


def copy_tree(into: Path) -> Path:
    tree = into / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.egg-info"
        ),
        symlinks=True,
    )
    return tree


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    """(passed, seconds, last line of pytest's output)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, f"timed out after {TIMEOUT_S} s"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode == 0, time.monotonic() - started, lines[-1] if lines else ""


def apply(tree: Path, mutant: Mutant) -> str | None:
    """Apply every patch; the reason it cannot be applied, or None."""
    for file, old, new in mutant.patches:
        path = tree / file
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        found = text.count(old)
        if found != 1:
            return f"{file}: the code to mutate was found {found} times (expected once)"
        path.write_text(text.replace(old, new), encoding="utf-8")
    return None


def restore(tree: Path, mutant: Mutant) -> None:
    for file, _, _ in mutant.patches:
        shutil.copy2(ROOT / file, tree / file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run the mutants whose name holds one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    args = parser.parse_args(argv)
    mutants = [
        mu for mu in MUTANTS if not args.only or any(word in mu.name for word in args.only)
    ]
    if args.list:
        for mu in mutants:
            print(f"{mu.name}: {' '.join(mu.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        os.chmod(tmp, 0o755)  # tests run parts as other users (www-data, an attacker)
        tree = copy_tree(Path(tmp))
        broken: set[tuple[str, ...]] = set()
        if not args.no_baseline:
            for tests in dict.fromkeys(mu.tests for mu in mutants):
                passed, seconds, last = run_tests(tree, tests)
                print(f"baseline {'ok  ' if passed else 'FAIL'} {seconds:6.1f} s  {' '.join(tests)}: {last}")
                if not passed:
                    broken.add(tests)
        killed, survived, skipped = [], [], []
        for mu in mutants:
            if mu.tests in broken:
                skipped.append(mu.name)
                print(f"SKIP      {mu.name}: its tests fail without the mutation")
                continue
            problem = apply(tree, mu)
            try:
                if problem:
                    skipped.append(mu.name)
                    print(f"SKIP      {mu.name}: {problem}")
                    continue
                passed, seconds, last = run_tests(tree, mu.tests)
            finally:
                restore(tree, mu)
            (survived if passed else killed).append(mu.name)
            verdict = "SURVIVED" if passed else "killed  "
            print(f"{verdict}  {mu.name} ({seconds:.0f} s): {last}", flush=True)
    counted = len(killed) + len(survived)
    rate = 100.0 * len(killed) / counted if counted else 0.0
    print(f"\nkill rate: {len(killed)}/{counted} = {rate:.0f} % ({len(skipped)} not applied)")
    for name in survived:
        print(f"  survived: {name}")
    return 0 if not survived and not skipped else 1


if __name__ == "__main__":
    raise SystemExit(main())
