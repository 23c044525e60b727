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
#: A layout that opens at least this share of the values is the panel's, and the values it
#: leaves are bad rows to name, not a sign of a wrong key or an unknown layout.
LIKELY_SHARE = 0.9
#: How many unopened values a report names; the rest are counted.
MAX_NAMED = 10


@dataclass
class ProbeReport:
    columns: dict[str, int] = field(default_factory=dict)
    opens: dict[str, dict[str, int]] = field(default_factory=dict)  # scheme label -> column -> n
    chosen: Scheme | None = None
    problem: str | None = None
    #: scheme label -> the first values (``table.column id N``) it did not open
    unopened: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "columns": self.columns,
            "opens": self.opens,
            "scheme": self.chosen.label if self.chosen else None,
            "scheme_description": self.chosen.description if self.chosen else None,
            "problem": self.problem,
            "unopened": self.unopened.get(self.chosen.label, []) if self.chosen else [],
        }


def _likely(opened: dict[Scheme, int], total: int) -> Scheme | None:
    """The one layout that opens nearly every value (``LIKELY_SHARE``), if there is one."""
    if total == 0 or not opened:
        return None
    best = max(opened.values())
    leaders = [s for s, n in opened.items() if n == best]
    return leaders[0] if len(leaders) == 1 and best >= LIKELY_SHARE * total else None


def _bad_rows_problem(scheme: Scheme, opened: int, total: int, named: list[str]) -> str:
    missing = total - opened
    shown = ", ".join(named[:MAX_NAMED])
    more = missing - min(len(named), MAX_NAMED)
    listed = shown + (f" and {more} more" if more > 0 else "")
    return (
        f"layout {scheme.label} opens {opened:,} of {total:,} stored values; "
        f"{missing:,} do not open with the current key: {listed}. Restore those values from a "
        "backup, or clear them so the panel's users enter them again; then probe again"
    )


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
        report.unopened[scheme.label] = []
    for spec in columns:
        n = 0
        counts = [0] * len(codecs)
        for rows in db.iter_values(spec, batch):
            for row_id, stored in rows:
                n += 1
                for i, codec in enumerate(codecs):
                    if codec.open(stored) is not None:
                        counts[i] += 1
                    else:
                        named = report.unopened[ALL_SCHEMES[i].label]
                        if len(named) < MAX_NAMED:
                            named.append(f"{spec.label} id {row_id}")
        report.columns[spec.label] = n
        for scheme, count in zip(ALL_SCHEMES, counts, strict=True):
            report.opens[scheme.label][spec.label] = count
    total = sum(report.columns.values())
    opened = {s: sum(report.opens[s.label].values()) for s in ALL_SCHEMES}
    fits = [s for s in ALL_SCHEMES if opened[s] == total]
    report.chosen, report.problem = _decide(fits, total)
    likely = _likely(opened, total) if not fits else None
    if likely is not None:
        report.problem = _bad_rows_problem(likely, opened[likely], total, report.unopened[likely.label])
    return report


def detect(db: PanelDB, columns: list[ColumnSpec], key_hex: str) -> Scheme:
    """The one scheme that opens a sample of every column, or ``LayoutError``.

    A few bad values in the sample don't hide the layout: the scheme that opens nearly
    all of it (``LIKELY_SHARE``) is chosen, and the caller's full preflight, which needs
    100 %, then names every value it does not open, by table, column and id.
    """
    codecs = {s: Codec(s, key_hex) for s in ALL_SCHEMES}
    opened = dict.fromkeys(ALL_SCHEMES, 0)
    seen = 0
    for spec in columns:
        for rows in db.iter_values(spec, SAMPLE_PER_COLUMN, limit=SAMPLE_PER_COLUMN):
            for _, stored in rows:
                seen += 1
                for scheme, codec in codecs.items():
                    if codec.open(stored) is not None:
                        opened[scheme] += 1
    fits = [s for s in ALL_SCHEMES if opened[s] == seen]
    chosen, problem = _decide(fits, seen)
    if chosen is None and not fits:
        chosen = _likely(opened, seen)
    if chosen is None:
        raise LayoutError(str(problem))
    return chosen
