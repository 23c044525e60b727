"""The .env rewrite touches the bytes of one value and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import envfile
from engine.errors import BadKeyError, EnvFileError

OLD = "a" * 64
NEW = "b" * 64


@pytest.mark.parametrize(
    "line",
    [
        f"PANEL_ENCRYPTION_KEY={OLD}",
        f'PANEL_ENCRYPTION_KEY="{OLD}"',
        f"PANEL_ENCRYPTION_KEY='{OLD}'",
        f"export PANEL_ENCRYPTION_KEY={OLD}",
        f"PANEL_ENCRYPTION_KEY = {OLD}   # set at install",
        f"  PANEL_ENCRYPTION_KEY={OLD}\r",
    ],
)
def test_replace_keeps_the_form_of_the_line(line):
    before = f"# MyOsicam\nAPP_NAME=\"Panel\"\n{line}\nPANEL_LICENSE_KEY=x\n".encode()
    after = envfile.replace_key(before, "PANEL_ENCRYPTION_KEY", NEW)
    assert after == before.replace(OLD.encode(), NEW.encode())


def test_replace_keeps_a_missing_trailing_newline():
    before = f"A=1\nPANEL_ENCRYPTION_KEY={OLD}".encode()
    assert envfile.replace_key(before, "PANEL_ENCRYPTION_KEY", NEW) == f"A=1\nPANEL_ENCRYPTION_KEY={NEW}".encode()


def test_a_commented_out_key_is_left_alone():
    before = f"#PANEL_ENCRYPTION_KEY={OLD}\nPANEL_ENCRYPTION_KEY={OLD}\n".encode()
    after = envfile.replace_key(before, "PANEL_ENCRYPTION_KEY", NEW)
    assert after == f"#PANEL_ENCRYPTION_KEY={OLD}\nPANEL_ENCRYPTION_KEY={NEW}\n".encode()


def test_a_key_that_appears_in_another_value_is_not_touched():
    before = f"OLD_KEY_BACKUP={OLD}\nPANEL_ENCRYPTION_KEY={OLD}\n".encode()
    after = envfile.replace_key(before, "PANEL_ENCRYPTION_KEY", NEW)
    assert after == f"OLD_KEY_BACKUP={OLD}\nPANEL_ENCRYPTION_KEY={NEW}\n".encode()


def test_missing_or_repeated_key_is_an_error():
    with pytest.raises(EnvFileError, match="exactly once"):
        envfile.replace_key(b"A=1\n", "PANEL_ENCRYPTION_KEY", NEW)
    with pytest.raises(EnvFileError, match="exactly once"):
        envfile.replace_key(f"PANEL_ENCRYPTION_KEY={OLD}\n".encode() * 2, "PANEL_ENCRYPTION_KEY", NEW)


def test_read_key_rejects_a_short_key_without_echoing_it(tmp_path):
    env = tmp_path / ".env"
    env.write_text("PANEL_ENCRYPTION_KEY=0123456789abcdef0123\n")
    with pytest.raises(BadKeyError) as caught:
        envfile.read_key(env, "PANEL_ENCRYPTION_KEY")
    assert "0123456789abcdef" not in str(caught.value)
    assert "has 20 characters" in str(caught.value)


def test_values_reads_quotes_and_inline_comments(tmp_path):
    env = tmp_path / ".env"
    env.write_text('DB_HOST=127.0.0.1 # local\nDB_PASSWORD="p#ss word"\nDB_USERNAME=\'panel\'\n')
    assert envfile.values(env) == {"DB_HOST": "127.0.0.1", "DB_PASSWORD": "p#ss word", "DB_USERNAME": "panel"}


@settings(deadline=None)  # a loaded CI machine is not a failure
@given(
    others=st.lists(
        st.tuples(
            st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(lambda n: n != "PANEL_ENCRYPTION_KEY"),
            st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30),
        ),
        max_size=6,
    ),
    position=st.integers(min_value=0, max_value=6),
    trailing_newline=st.booleans(),
)
def test_replace_changes_exactly_the_key_bytes(others, position, trailing_newline):
    """Property: any surrounding lines come out byte for byte identical."""
    lines = [f"{name}={value}" for name, value in others]
    lines.insert(min(position, len(lines)), f"PANEL_ENCRYPTION_KEY={OLD}")
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    after = envfile.replace_key(text.encode(), "PANEL_ENCRYPTION_KEY", NEW)
    expected = "\n".join(li if not li.startswith("PANEL_ENCRYPTION_KEY=") else f"PANEL_ENCRYPTION_KEY={NEW}"
                         for li in lines) + ("\n" if trailing_newline else "")
    assert after == expected.encode()
