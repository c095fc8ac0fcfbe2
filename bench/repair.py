"""The start-up sidecar repair at archive scale: memory and time for a folder of 100,000 answered scans.

At every start each watched folder's repair looks at every finished job's sidecars (rewriting the missing
ones from the database). It streams the jobs in batches (`FileStore.finished_jobs`); the first release
loaded all of them at once (+464 MB of RSS at 100,000 jobs). Here: a real SQLite history of `--jobs`
finished folder jobs with ~800-character answers, written through the real schema, and a real folder with
every scan and its JSON sidecar present (the usual restart: nothing to rewrite, every job looked at). The
repair runs in a fresh process; its peak RSS (VmHWM) before and after, and the seconds, are printed.

Usage: `.venv/bin/python bench/repair.py [--jobs 100000] [--root /tmp/tuwen-repair]` (kept and reused).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import update  # noqa: E402

from db.files import FileStore  # noqa: E402
from db.models import Job, JobStatus  # noqa: E402
from db.store import Store  # noqa: E402
from service.events import Event  # noqa: E402
from service.queue import JobQueue  # noqa: E402

ROUND = 1000
ANSWER = "这是一张旧照片，" * 100  # ~800 characters


def build(root: Path, jobs: int) -> None:
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    store = Store(root / "tuwen.sqlite3")
    store.migrate()
    queue, files = JobQueue(store), FileStore(store)
    for start in range(0, jobs, ROUND):
        names = [f"scan-{n:06d}.png" for n in range(start, min(start + ROUND, jobs))]
        for name in names:
            (inbox / name).write_bytes(b"\x89PNG")
            (inbox / f"{name}.json").write_text("{}", encoding="utf-8")
        events = [
            Event(source="watch", source_ref="inbox", question="描述", images=(str(inbox / n),))
            for n in names
        ]

        def record(connection: object, ids: list[int], names: list[str] = names) -> None:
            rows = [
                (str(inbox / n).encode(), str(inbox / n), (4, 0, 0, i), None, i)
                for n, i in zip(names, ids, strict=True)
            ]
            files.save_many_in(connection, "watch", "inbox", rows)  # type: ignore[arg-type]

        queue.submit_backlog(events, also=record)
    with store.write_session() as session:
        session.execute(
            update(Job).values(
                status=JobStatus.DONE, answer=ANSWER, search_text=ANSWER, backend="ocr", model="m"
            )
        )
    store.close()


def measure(root: Path) -> dict[str, float]:
    """In this (fresh) process: the repair of the folder, with VmHWM before and after."""
    from service.config import WatchConfig
    from watchers.folder import FolderWatcher

    def hwm_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    store = Store(root / "tuwen.sqlite3")
    watcher = FolderWatcher(WatchConfig(path=root / "inbox", name="inbox"), JobQueue(store))
    before = hwm_mb()
    began = time.perf_counter()
    rewritten = watcher.repair_sidecars()
    seconds = time.perf_counter() - began
    after = hwm_mb()
    return {"hwm_before_mb": round(before, 1), "hwm_after_mb": round(after, 1), "seconds": round(seconds, 2),
            "rewritten": rewritten}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tuwen-repair"))
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.root)))
        return 0
    if not (args.root / "tuwen.sqlite3").exists():
        began = time.perf_counter()
        build(args.root, args.jobs)
        print(f"built {args.jobs} jobs in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    out = subprocess.run(
        [sys.executable, __file__, "--measure", "--root", str(args.root)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    growth = result["hwm_after_mb"] - result["hwm_before_mb"]
    print(
        f"Start-up repair of {args.jobs} answered scans (all sidecars present): {result['seconds']} s, "
        "peak RSS "
        f"{result['hwm_before_mb']} → {result['hwm_after_mb']} MB (+{growth:.1f} MB), "
        f"{result['rewritten']} rewritten."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
