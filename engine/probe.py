"""Which ciphertext scheme does this panel use? Read-only, from the stored values.

``probe`` counts, per column, how many values each of the candidate schemes
opens with the current key and picks the one that opens 100 %. ``detect``
is the fast path for ``plan`` and ``rotate-key``: it narrows the candidates on
a sample, and the caller's full preflight then proves the choice on every value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.cipher import ALL_SCHEMES, Codec, Scheme
from engine.db import PanelDB
from engine.errors import LayoutError, NotTransactionalError
from engine.profile import ColumnSpec

SAMPLE_PER_COLUMN = 64


@dataclass
class ProbeReport:
    columns: dict[str, int] = field(default_factory=dict)
    opens: dict[str, dict[str, int]] = field(default_factory=dict)  # scheme label -> column -> n
    chosen: Scheme | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "columns": self.columns,
            "opens": self.opens,
            "scheme": self.chosen.label if self.chosen else None,
            "scheme_description": self.chosen.description if self.chosen else None,
            "problem": self.problem,
        }


def _decide(fits: list[Scheme], total: int) -> tuple[Scheme | None, str | None]:
    if total == 0:
        return None, (
            "no stored values, so the ciphertext layout cannot be detected; "
            "set `ciphertext` in the profile (e.g. \"iv12_tag_ct/hex\")"
        )
    if not fits:
        return None, (
            "no known layout opens every stored value with the current key: "
            "the key in .env may be wrong, or the panel uses a layout this engine does not know"
        )
    if len(fits) > 1:
        names = ", ".join(s.label for s in fits)
        return None, f"several layouts open every value ({names}); set `ciphertext` in the profile"
    return fits[0], None


def require_transactions(db: PanelDB, columns: list[ColumnSpec]) -> None:
    """Refuse tables whose storage engine has no transactions (MyISAM, Aria, MEMORY...).

    The rotation rewrites every value in one transaction and relies on rolling it
    back; on such a table each UPDATE would be final the moment it ran.
    """
    tables = sorted({spec.table for spec in columns})
    if not tables:
        return
    marks = ", ".join(["%s"] * len(tables))
    rows = db.query(
        "SELECT t.TABLE_NAME, t.ENGINE, e.TRANSACTIONS FROM information_schema.TABLES t "
        "LEFT JOIN information_schema.ENGINES e ON e.ENGINE = t.ENGINE "
        f"WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' AND t.TABLE_NAME IN ({marks})",
        tables,
        doing="reading the tables' storage engines",
    )
    bad = sorted((str(name), str(engine)) for name, engine, transactions in rows if transactions != "YES")
    if bad:
        listed = ", ".join(f"{name} ({engine})" for name, engine in bad)
        first = bad[0][0]
        raise NotTransactionalError(
            f"these tables use a storage engine without transactions: {listed}. The rotation "
            "rewrites every value in one transaction and could not roll back on them; convert "
            f"each first (e.g. ALTER TABLE `{first}` ENGINE=InnoDB). Nothing was changed"
        )


def probe(db: PanelDB, columns: list[ColumnSpec], key_hex: str, batch: int) -> ProbeReport:
    """Full count for every candidate (read-only; reads each column once)."""
    require_transactions(db, columns)
    report = ProbeReport()
    codecs = [Codec(s, key_hex) for s in ALL_SCHEMES]
    for scheme in ALL_SCHEMES:
        report.opens[scheme.label] = {}
    for spec in columns:
        n = 0
        counts = [0] * len(codecs)
        for rows in db.iter_values(spec, batch):
            for _, stored in rows:
                n += 1
                for i, codec in enumerate(codecs):
                    if codec.open(stored) is not None:
                        counts[i] += 1
        report.columns[spec.label] = n
        for scheme, count in zip(ALL_SCHEMES, counts, strict=True):
            report.opens[scheme.label][spec.label] = count
    total = sum(report.columns.values())
    fits = [s for s in ALL_SCHEMES if sum(report.opens[s.label].values()) == total]
    report.chosen, report.problem = _decide(fits, total)
    return report


def detect(db: PanelDB, columns: list[ColumnSpec], key_hex: str) -> Scheme:
    """The one scheme that opens a sample of every column, or ``LayoutError``."""
    candidates = list(ALL_SCHEMES)
    codecs = {s: Codec(s, key_hex) for s in candidates}
    seen = 0
    for spec in columns:
        for rows in db.iter_values(spec, SAMPLE_PER_COLUMN, limit=SAMPLE_PER_COLUMN):
            for _, stored in rows:
                seen += 1
                candidates = [s for s in candidates if codecs[s].open(stored) is not None]
    chosen, problem = _decide(candidates, seen)
    if chosen is None:
        raise LayoutError(str(problem))
    return chosen
