"""The rotation's one pass, batch by batch: what it proves about each value it stages."""

from __future__ import annotations

import secrets

import pytest

from engine.cipher import Codec, Scheme
from engine.db import Literal
from engine.errors import VerificationError
from engine.ops.key.scan import Rewrite, Written, _seal_batch
from engine.ops.key.verify import check_written

SCHEME = Scheme.parse("iv12_tag_ct/hex")


class _TamperingCodec(Codec):
    """Seals like the real one, then flips one bit of the stored text: what a layout bug
    or a corrupted buffer would write."""

    __slots__ = ()

    def seal(self, plaintext: bytes) -> str:
        good = super().seal(plaintext)
        return good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]


def _rows(codec: Codec, n: int) -> list[tuple[int, str]]:
    return [(i, codec.seal(f"pw-{i}".encode())) for i in range(1, n + 1)]


def test_every_staged_value_opens_under_the_new_key_to_its_plaintext() -> None:
    old, new = Codec(SCHEME, secrets.token_hex(32)), Codec(SCHEME, secrets.token_hex(32))
    part = _seal_batch((old, new), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), _rows(old, 5))

    assert (part.staged, part.roundtrip_failed, part.n_neither, part.kept) == (5, 0, 0, 0)
    assert part.written.count == 5
    assert len(part.statements) == 1 and part.statements[0].count("),(") == 4


def test_a_sealed_value_that_does_not_open_again_is_counted_and_stops_the_rotation() -> None:
    key = secrets.token_hex(32)
    old, broken = Codec(SCHEME, secrets.token_hex(32)), _TamperingCodec(SCHEME, key)
    part = _seal_batch((old, broken), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), _rows(old, 4))

    assert part.roundtrip_failed == 4
    rewrite = Rewrite(roundtrip_failed=part.roundtrip_failed, sealed={"t.c": Written()})
    with pytest.raises(VerificationError, match="did not open again under the new key"):
        check_written(db=None, columns=[], rewrite=rewrite)  # type: ignore[arg-type]


def test_values_the_current_key_does_not_open_are_named_and_not_staged() -> None:
    old, new, other = (Codec(SCHEME, secrets.token_hex(32)) for _ in range(3))
    rows = [*_rows(old, 3), (9, other.seal(b"foreign"))]
    part = _seal_batch((old, new), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), rows)

    assert (part.staged, part.n_neither, part.neither_at) == (3, 1, ["t.c id 9"])
