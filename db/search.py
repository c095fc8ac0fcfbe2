"""Keyword search over the folded job text: which index answers each term, and a fast count.

Every whitespace-separated term of a query must occur (AND), folded first (`db.folding.fold`). A term of
three or more characters is looked up in the trigram index `jobs_fts`; a shorter one in the gram index
`jobs_grams` (`db.grams`). Terms reach FTS5 only as quoted strings (trigram) or hex tokens (grams), never
as query syntax, so `"`, `*`, `NEAR(`, `OR`, `-` and `'--` are just characters to look for.

On PostgreSQL there are no FTS5 tables: every term is `search_text LIKE '%term%'`, which the GIN trigram
index of migration 0004 (`pg_trgm`) serves (for one- and two-character terms it has no trigram to look up
and reads the rows). Which form a condition takes is decided when the statement is compiled for the
store's dialect (`_Indexed`), so callers build one query; the two shortcuts below are SQLite's.

Two shortcuts keep a search of the whole history fast (measured in bench/history.py):
- the count of a search with no other filter is taken from the indexes alone (`fast_count`), not by
  joining every matching job row;
- a short term that many jobs contain (more than 1 in `DENSE`) is matched with `LIKE` on the page query:
  walking the newest jobs finds a page of them within a few hundred rows, where `id IN (…)` would first
  gather every matching id. Both give the same rows: the grams are exactly the substrings LIKE finds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    and_,
    func,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

from db.folding import fold
from db.grams import GRAMS_TABLE, MAX_GRAM, gram_token
from db.models import FTS_TABLE, Job

# The FTS tables, described only as far as queries need them (their own MetaData: migrations must not see
# them). The hidden column named like the table is what FTS5's MATCH operator is applied to.
_META = MetaData()
_FTS = Table(FTS_TABLE, _META, Column("rowid", Integer), Column(FTS_TABLE, Text))
_GRAMS = Table(GRAMS_TABLE, _META, Column("rowid", Integer), Column(GRAMS_TABLE, Text))
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A short term in more than 1 job in DENSE is matched by LIKE on the page query (see above).
DENSE = 50


@dataclass(frozen=True)
class Terms:
    """A query's folded terms: the short ones (gram index) and the long ones (trigram index)."""

    short: list[str] = field(default_factory=list)
    long: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, q: str) -> Terms:
        # FTS5 reads its query as a C string: a NUL would end it mid-quote ("unterminated string").
        # NFKC can turn a character into a space (or lengthen a term: ﬃ is ffi), so split again after folding.
        folded = [part for term in _CONTROL_CHARS.sub(" ", q).split() for part in fold(term).split()]
        unique = list(dict.fromkeys(folded))
        return cls([t for t in unique if len(t) <= MAX_GRAM], [t for t in unique if len(t) > MAX_GRAM])

    def __bool__(self) -> bool:
        return bool(self.short or self.long)

    def long_match(self) -> str:
        # Each term a quoted FTS5 string (inner quotes doubled): no operator, prefix or column syntax.
        return " ".join('"' + term.replace('"', '""') + '"' for term in self.long)

    def short_match(self, terms: list[str] | None = None) -> str:
        return " ".join(gram_token(term) for term in (self.short if terms is None else terms))


def _long_ids(terms: Terms) -> Select[tuple[int]]:
    return select(_FTS.c.rowid).where(_FTS.c[FTS_TABLE].match(terms.long_match()))


def _short_ids(terms: Terms, which: list[str] | None = None) -> Select[tuple[int]]:
    return select(_GRAMS.c.rowid).where(_GRAMS.c[GRAMS_TABLE].match(terms.short_match(which)))


class _Indexed(ColumnElement[bool]):
    """Jobs whose search_text holds every one of `terms`: the SQLite index's `ids`, or LIKE elsewhere."""

    type = Boolean()
    inherit_cache = False  # the terms are not bound parameters a cached statement could take again

    def __init__(self, ids: Select[tuple[int]], terms: list[str]) -> None:
        self.ids = ids
        self.terms = terms


@compiles(_Indexed, "sqlite")
def _through_fts5(element: _Indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(Job.id.in_(element.ids), **kw)


@compiles(_Indexed)
def _through_like(element: _Indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(and_(*(_contains(term) for term in element.terms)), **kw)


def _contains(term: str) -> ColumnElement[bool]:
    return Job.search_text.like("%" + _escape_like(term) + "%", escape="\\")


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def text_conditions(q: str) -> list[ColumnElement[bool]]:
    """Conditions for a keyword query (every term must occur), through the indexes only."""
    terms = Terms.of(q)
    conditions: list[ColumnElement[bool]] = []
    if terms.long:
        conditions.append(_Indexed(_long_ids(terms), terms.long))
    if terms.short:
        conditions.append(_Indexed(_short_ids(terms), terms.short))
    return conditions


def fast_count(session: Session, q: str) -> int:
    """How many jobs match keyword query `q` (no other filter), from the indexes without touching jobs."""
    terms = Terms.of(q)
    if not terms:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)
    if not _sqlite(session):
        return int(session.scalar(select(func.count()).select_from(Job).where(*text_conditions(q))) or 0)
    if terms.short and terms.long:
        query = select(func.count()).select_from(
            _short_ids(terms).where(_GRAMS.c.rowid.in_(_long_ids(terms))).subquery()
        )
    elif terms.short:
        query = select(func.count()).select_from(_short_ids(terms).subquery())
    else:
        query = select(func.count()).select_from(_long_ids(terms).subquery())
    return int(session.scalar(query) or 0)


def page_conditions(session: Session, q: str) -> list[ColumnElement[bool]]:
    """Conditions for the page query of `q`: as `text_conditions`, but dense short terms through LIKE."""
    terms = Terms.of(q)
    if not terms.short or not _sqlite(session):
        return text_conditions(q)
    newest = session.scalar(select(func.max(Job.id))) or 0
    dense: list[str] = []
    sparse: list[str] = []
    for term in terms.short:
        matches = session.scalar(select(func.count()).select_from(_short_ids(terms, [term]).subquery())) or 0
        (dense if matches * DENSE > newest else sparse).append(term)
    conditions: list[ColumnElement[bool]] = []
    if terms.long:
        conditions.append(Job.id.in_(_long_ids(terms)))
    if sparse:
        conditions.append(Job.id.in_(_short_ids(terms, sparse)))
    conditions += [_contains(term) for term in dense]
    return conditions


def _escape_like(term: str) -> str:
    # Backslash first, so the escapes added for % and _ are not escaped again.
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
