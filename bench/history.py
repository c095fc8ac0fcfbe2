"""History at archive scale: search and export times on a SQLite database of 100,000 long jobs.

Not a test: building the database takes minutes (it is kept in `--db` and reused by later runs; the first
run also times the search migrations on it, as the first start after an upgrade would run them). Each job
is an ~800-character OCR page of Chinese words drawn from a Zipf-like vocabulary (common words are very
common, most are rare), a question and a file path, written through the real schema (migrations, triggers,
both search indexes). Then, best of `--rounds`:

- `search_jobs` (the history page's query: one page of 50 and the total) for one- and two-character terms
  that nearly every job holds, that a few hold, and that none holds, and for a three-character term;
- the same one- and two-character terms as `LIKE '%…%'` over `search_text` (what short terms did before
  the gram index);
- an export of every row through `iter_jobs` (the CSV's reader, database time only), and the same with the
  old keyset condition `created_at < ? OR (created_at = ? AND id < ?)`.

Usage: `.venv/bin/python bench/history.py [--rows 100000] [--db /tmp/tuwen-history.sqlite3] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import and_, func, insert, or_, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db.history import JobFilter, iter_jobs, search_jobs  # noqa: E402
from db.models import Job  # noqa: E402
from db.store import MIGRATIONS_DIR, Store  # noqa: E402

BATCH = 2000


def vocabulary(seed: int = 1) -> tuple[list[str], list[float]]:
    """30,000 words of 1–4 characters over 3,500 common characters, with Zipf-like weights."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]
    char_weights = [1 / (i + 1) for i in range(len(chars))]
    words = [
        "".join(rng.choices(chars, char_weights, k=rng.choice([1, 2, 2, 2, 3, 4]))) for _ in range(30000)
    ]
    return words, [1 / (i + 1) ** 0.9 for i in range(len(words))]


def build(store: Store, rows: int) -> None:
    """Jobs written as an archive from before the search indexes would have them (schema 0003)."""
    words, weights = vocabulary()
    rng = random.Random(2)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    table = Job.__table__
    for first in range(0, rows, BATCH):
        batch = []
        for n in range(first, min(rows, first + BATCH)):
            batch.append(
                {
                    "uid": uuid.uuid4().hex,
                    "created_at": start + timedelta(seconds=30 * n),
                    "source": "watch",
                    "source_ref": "archive",
                    "status": "done",
                    "question": "请转录这页档案",
                    "prompt_hash": "0" * 16,
                    "answer": "".join(rng.choices(words, weights, k=rng.randint(180, 300))),
                    "file_path": f"/scans/box{n // 100:04d}/page{n:06d}.tif",
                }
            )
        with store.engine.begin() as conn:
            conn.execute(insert(table), batch)
        print(f"\r  {min(rows, first + BATCH)} / {rows} rows", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def upgrade_to(store: Store, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def best(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1000, result


def pick_terms(store: Store) -> dict[str, str]:
    """Terms by how many jobs hold them, found from the data: common and rare 1- and 2-character ones."""
    words, _ = vocabulary()
    with store.engine.connect() as conn:

        def jobs_with(term: str) -> int:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM jobs_grams WHERE jobs_grams MATCH :q"),
                    {"q": "x" + "x".join(f"{ord(c):x}" for c in term)},
                ).scalar()
                or 0
            )

        pairs = [w for w in words if len(w) == 2]
        rare2 = next(w for w in reversed(pairs) if 0 < jobs_with(w) < 50)
        rare1 = next(chr(c) for c in range(0x4E00 + 3499, 0x4E00, -1) if 0 < jobs_with(chr(c)) < 2000)
    return {
        "1 char, in ~all jobs": words[0][0],
        "1 char, rare": rare1,
        "2 chars, common": pairs[0],
        "2 chars, rare": rare2,
        "2 chars, in no job": "龥龥",
        "3 chars": next(w for w in words if len(w) == 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/tuwen-history.sqlite3"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fresh = not args.db.exists()
    store = Store(args.db)
    if fresh:
        upgrade_to(store, "0003")
        build(store, args.rows)
        started = time.perf_counter()
        store.migrate()  # what `tuwen serve` does at its first start after an upgrade
        seconds = time.perf_counter() - started
        print(f"migrations 0004 (folded text, trigrams) and 0005 (grams), {args.rows} jobs: {seconds:.0f} s")
    store.migrate()
    print(f"database: {args.db} ({args.db.stat().st_size / 2**20:.0f} MiB)")
    print("\n| search | jobs matching | search_jobs (page of 50 + total) | LIKE scan (count) |")
    print("|---|---:|---:|---:|")
    for label, term in pick_terms(store).items():
        ms, page = best(lambda term=term: search_jobs(store, q=term), args.rounds)

        def scan(term: str = term) -> object:
            with store.read_session() as session:
                return session.scalar(
                    select(func.count()).select_from(Job).where(Job.search_text.like(f"%{term}%"))
                )

        scan_ms = f"{best(scan, 1)[0]:.0f} ms" if len(term) < 3 else "–"
        print(f"| {label} `{term}` | {page.total} | {ms:.0f} ms | {scan_ms} |")  # type: ignore[attr-defined]

    export_ms, count = best(lambda: sum(1 for _ in iter_jobs(store, JobFilter())), 3)
    print(f"\nexport of {count} rows through iter_jobs (row-value keyset): {export_ms:.0f} ms")
    old_ms, old_count = best(lambda: old_export(store), 3)
    print(f"the same with the OR keyset condition: {old_ms:.0f} ms ({old_count} rows)")
    store.close()


def old_export(store: Store, batch: int = 500) -> int:
    after, count = None, 0
    while True:
        query = select(Job)
        if after is not None:
            created, job_id = after
            query = query.where(
                or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
            )
        with store.read_session() as session:
            rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(batch)))
        count += len(rows)
        if len(rows) < batch:
            return count
        after = (rows[-1].created_at, rows[-1].id)


if __name__ == "__main__":
    main()
