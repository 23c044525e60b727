"""A new key must never be one this panel has had before."""

from __future__ import annotations

import pytest

from engine.context import Context
from engine.errors import KeyReuseError
from engine.events import Emitter
from engine.ops.key import rotation
from engine.profile import load_profile
from tests.engine.runner import rotate
from tests.support.secrets_scan import register_secret


def test_a_generated_key_equal_to_an_earlier_one_is_refused(panel_factory, monkeypatch):
    """Rotate once, then make the generator return the first key again: refused, nothing changed."""
    panel = panel_factory(rows=3)
    first_key = panel.env_key()
    assert rotate(panel.profile_path).returncode == 0
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")
    rows, env = panel.stored_values(), panel.env_path.read_bytes()
    monkeypatch.setattr(rotation, "new_key_hex", lambda: first_key)
    events: list[dict] = []

    with pytest.raises(KeyReuseError, match="used before on this panel"):
        rotation.KeyRotation(
            Context(load_profile(panel.profile_path), Emitter("r-reuse", [events.append])),
            rotation_id="r-reuse",
        ).run()

    assert (panel.stored_values(), panel.env_path.read_bytes()) == (rows, env)
    assert not (panel.root / "journal" / "rotation.json").exists()
    assert [e["state"] for e in events if e.get("name") == "stage"] == ["started", "failed"]
