"""`tuwen batch DIR`: a one-off bulk run over a folder, with a progress bar, resumable.

Every file becomes a job like the watcher's (source "batch"), so the run is in the history. Running the
same command again after an interruption picks up where it stopped: files already answered with the same
prompt are not sent to the model again, and jobs the interrupted run had queued are adopted.
"""

from __future__ import annotations

import csv
import fnmatch
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from db.models import Job, JobStatus
from service.csvcells import spreadsheet_cell
from service.events import Event, Priority
from service.images import sha256_file
from service.messages import msg
from service.queue import prompt_hash


def collect_files(folder: Path, ignores: Iterable[str], recursive: bool = True) -> list[Path]:
    """Regular files under `folder`, ignored names (and ignored folders) left out, in a stable order.

    FIFOs, sockets and devices are left out too: reading one would block or never end.
    """
    patterns = tuple(ignores)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(
            d for d in dirnames if recursive and not any(fnmatch.fnmatch(d, p) for p in patterns)
        )
        found.extend(
            Path(dirpath) / name
            for name in sorted(filenames)
            if not any(fnmatch.fnmatch(name, p) for p in patterns) and (Path(dirpath) / name).is_file()
        )
    return found


def run_batch(
    app: Any,
    folder: Path,
    prompt: str,
    *,
    recursive: bool,
    ignores: Iterable[str],
    csv_out: Path | None,
    sidecars: bool,
) -> int:
    """Answer every file; print a summary; 0 when all are done, 1 when some failed or nothing was found."""
    files = collect_files(folder, ignores, recursive)
    if not files:
        print(str(msg("cli_no_images", path=folder)), file=sys.stderr)
        app.store.close()
        return 1
    wanted_hash = prompt_hash(prompt)
    uids: list[str] = []
    finished: dict[str, Job] = {}
    for path in files:
        st = path.stat()
        previous = app.store.latest_job_for_file(str(path), st.st_size, st.st_mtime, wanted_hash)
        if previous is not None and previous.status in (JobStatus.DONE, JobStatus.FAILED):
            finished[previous.uid] = previous
            uids.append(previous.uid)
            continue
        if previous is not None:  # queued by an interrupted run: adopt it
            uids.append(previous.uid)
            continue
        event = Event(
            source="batch",
            source_ref=str(folder),
            question=prompt,
            images=(str(path),),
            priority=Priority.CLI,
            sha256=sha256_file(path),
            file_size=st.st_size,
            file_mtime=st.st_mtime,
        )
        uids.append(app.queue.submit(event, dedup=True).uid)

    watch = None
    if sidecars:
        from service.config import WatchConfig
        from watchers.output import write_sidecars_for_job

        watch = WatchConfig(path=folder, prompt=prompt)
    progress = tqdm(total=len(uids), initial=len(finished), unit="file", desc="tuwen batch")
    lock = threading.Lock()
    all_done = threading.Event()
    if len(finished) == len(uids):
        all_done.set()

    def on_finished(job: Job) -> None:
        if job.uid not in uids:
            return
        if watch is not None:
            write_sidecars_for_job(job, watch, catalogue=False)
        with lock:
            finished[job.uid] = job
            progress.update(1)
            if len(finished) == len(uids):
                all_done.set()

    app.queue.add_finished_listener(on_finished)
    app.worker.answer_only(set(uids))
    app.start()
    try:
        while not all_done.wait(0.5):
            if app.worker.state in ("failed", "dead"):
                print(str(app.worker.error), file=sys.stderr)
                break
    except KeyboardInterrupt:
        print(
            "\n已中断；再次运行同一命令即可继续 / interrupted; run the same command again to resume",
            file=sys.stderr,
        )
    finally:
        progress.close()
        app.stop()
    jobs = [finished[uid] for uid in uids if uid in finished]
    done = sum(1 for job in jobs if job.status == JobStatus.DONE)
    failed = sum(1 for job in jobs if job.status == JobStatus.FAILED)
    if csv_out is not None:
        write_results_csv(csv_out, jobs)
    print(f"完成 {done}，失败 {failed}，共 {len(uids)} / done {done}, failed {failed}, of {len(uids)}")
    return 0 if done == len(uids) else 1


def write_results_csv(path: Path, jobs: Iterable[Job]) -> None:
    """A results table Excel opens with Chinese intact (UTF-8 with BOM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "status", "time", "question", "answer", "ocr_text", "error"])
        for job in jobs:
            when = (job.finished_at or job.created_at).isoformat(timespec="seconds")
            row = [job.file_path, job.status, when, job.question, job.answer, job.ocr_text, job.error]
            writer.writerow([spreadsheet_cell(value) for value in row])
