#!/usr/bin/env python3
"""A stand-in for a vault's CLI (vault, op, bw, aws, age, gpg), put first on a hook's PATH.

It records its argv, environment and stdin (``STANDIN_LOG``, one JSON line per call), and
fails (exit 97) if a secret (64 hex digits, as a key, or the DB password named by
``STANDIN_SECRET_RE``) is anywhere but on its stdin; a call that should carry the secret
(exit 98) fails without it. It keeps what it was given in ``STANDIN_STORE`` and gives it
back the way the real CLI's restore command does, so a test can restore from it.
"""

import base64
import json
import os
import re
import sys
from pathlib import Path

SECRET = re.compile(os.environ.get("STANDIN_SECRET_RE") or r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def _secrets_in(text: str) -> list[str]:
    return SECRET.findall(text)


def _store() -> Path:
    return Path(os.environ["STANDIN_STORE"])


def _keep(name: str, value: str) -> None:
    (_store() / (re.sub(r"[^A-Za-z0-9_.-]", "_", name))).write_text(value)


def _kept(name: str) -> str:
    return (_store() / (re.sub(r"[^A-Za-z0-9_.-]", "_", name))).read_text()


def _flag(argv: list[str], name: str) -> str:
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise SystemExit(f"stand-in: {name} missing from {argv}")


def _needs_secret(stdin: str) -> str:
    found = _secrets_in(stdin)
    if not found:
        print("stand-in: the secret was expected on stdin", file=sys.stderr)
        raise SystemExit(98)
    return found[0]


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    reads_stdin = not (tool == "vault" and argv[:2] == ["kv", "get"]) and "-d" not in argv \
        and "--decrypt" not in argv and "get" not in argv[:2] and "get-secret-value" not in argv
    stdin = sys.stdin.read() if reads_stdin else ""
    with open(os.environ["STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"tool": tool, "argv": argv, "env": dict(os.environ), "stdin_bytes": len(stdin)}) + "\n")
    elsewhere = _secrets_in(" ".join(argv)) + [
        name for name, value in os.environ.items() if _secrets_in(value)
    ]
    if elsewhere:
        print(f"stand-in {tool}: a secret outside stdin ({len(elsewhere)} places)", file=sys.stderr)
        return 97

    if tool == "vault" and argv[:2] == ["kv", "put"]:
        assert "value=-" in argv, argv
        _keep("vault:" + next(a for a in argv[2:] if not a.startswith("-")),
              _needs_secret(stdin))
    elif tool == "vault" and argv[:2] == ["kv", "get"]:
        sys.stdout.write(_kept("vault:" + argv[-1]))
    elif tool == "aws" and "put-secret-value" in argv:
        assert _flag(argv, "--secret-string") == "file:///dev/stdin", argv
        _keep("aws:" + _flag(argv, "--secret-id"), _needs_secret(stdin))
    elif tool == "aws" and "get-secret-value" in argv:
        print(_kept("aws:" + _flag(argv, "--secret-id")))
    elif tool == "op" and argv[:2] == ["item", "create"]:
        assert _flag(argv, "--template") == "/dev/stdin", argv
        item = json.loads(stdin)
        value = next(f["value"] for f in item["fields"] if f["id"] == "password")
        _keep("op:" + item["title"], _needs_secret(value))
    elif tool == "op" and argv[:2] == ["item", "get"]:
        print(_kept("op:" + argv[2]))
    elif tool == "bw" and argv == ["encode"]:
        _needs_secret(stdin)
        sys.stdout.write(base64.b64encode(stdin.encode()).decode())
    elif tool == "bw" and argv == ["create", "item"]:
        item = json.loads(base64.b64decode(stdin))
        _keep("bw:" + item["name"], _needs_secret(item["login"]["password"]))
    elif tool == "bw" and argv[:2] == ["get", "password"]:
        print(_kept("bw:" + argv[2]))
    elif tool in ("age", "gpg") and ("-d" in argv or "--decrypt" in argv):
        sealed = Path(argv[-1]).read_text()
        print(base64.b64decode(sealed.removeprefix("SEALED:")).decode().strip())
    elif tool in ("age", "gpg"):
        _needs_secret(stdin)
        Path(_flag(argv, "-o" if tool == "age" else "--output")).write_text(
            "SEALED:" + base64.b64encode(stdin.encode()).decode()
        )
    else:
        print(f"stand-in {tool}: unexpected call {argv}", file=sys.stderr)
        return 99
    return 0


if __name__ == "__main__":
    sys.exit(main())
