"""`tuwen batch DIR`: a one-off bulk run over a folder, with a progress bar, resumable.

Every file becomes a job like the watcher's (source "batch"), so the run is in the history. Running the
same command again after an interruption picks up where it stopped: files already answered with the same
prompt are not sent to the model again, and jobs the interrupted run had queued are adopted. Beside a
running `tuwen serve` the jobs go to the service (`service.oneshot`). With `--sidecars` every file gets its
sidecars, also those answered by an earlier, interrupted run, and those the service answered for us.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from db.models import Job, JobStatus
from service.config import WatchConfig
from service.csvcells import spreadsheet_cell
from service.events import Event, Priority, Source
from service.files import display_path
from service.images import sha256_file
from service.messages import msg
from service.oneshot import OneShot, RunAborted
from service.patterns import compile_patterns
from service.queue import prompt_hash


def collect_files(folder: Path, ignores: Iterable[str], recursive: bool = True) -> list[Path]:
    """Regular files under `folder`, ignored names (and ignored folders) left out, in a stable order.

    FIFOs, sockets and devices are left out too: reading one would block or never end.
    """
    ignore = compile_patterns(ignores)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if recursive and not ignore.match(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not ignore.match(name) and path.is_file():
                found.append(path)
    return found


def run_batch(
    run: OneShot,
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
        print(str(msg("cli_no_images", path=display_path(folder))), file=sys.stderr)
        return 1
    wanted_hash = prompt_hash(prompt)
    uids: list[str] = []
    finished: dict[str, Job] = {}
    for path in files:
        st = path.stat()
        previous = run.store.latest_job_for_file(display_path(path), st.st_size, st.st_mtime, wanted_hash)
        if previous is not None and previous.status in (JobStatus.DONE, JobStatus.FAILED):
            finished[previous.uid] = previous
            uids.append(previous.uid)
            continue
        if previous is not None:  # queued by an interrupted run: adopt it
            uids.append(previous.uid)
            if run.worker is not None:
                run.worker.answer_only({previous.uid})
            continue
        event = Event(
            source=Source.BATCH,
            source_ref=display_path(folder),
            question=prompt,
            images=(str(path),),
            priority=Priority.CLI,
            sha256=sha256_file(path),
            file_size=st.st_size,
            file_mtime=st.st_mtime,
        )
        uids.append(run.submit(event, dedup=True).uid)

    watch = WatchConfig(path=folder, prompt=prompt) if sidecars else None
    write = _sidecar_writer(watch)
    for job in finished.values():
        write(job)  # answered by an earlier run: its sidecars may never have been written
    progress = tqdm(total=len(uids), initial=len(finished), unit="file", desc="tuwen batch")

    def on_finished(job: Job) -> None:
        write(job)
        finished[job.uid] = job
        progress.update(1)

    status = 0
    run.start()
    try:
        run.wait([uid for uid in uids if uid not in finished], on_finished)
    except RunAborted as exc:
        print(str(exc.message), file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        progress.close()
        # What the database says now: a running service may have finished more than we had seen.
        done_now = sum(1 for job in run.store.jobs_by_uids(uids) if job.status == JobStatus.DONE)
        print(f"\n{msg('cli_batch_interrupted', done=done_now, total=len(uids))}", file=sys.stderr)
        return 130
    finally:
        progress.close()
    jobs = [finished[uid] for uid in uids if uid in finished]
    done = sum(1 for job in jobs if job.status == JobStatus.DONE)
    failed = sum(1 for job in jobs if job.status == JobStatus.FAILED)
    if csv_out is not None:
        write_results_csv(csv_out, jobs)
    print(str(msg("cli_batch_summary", done=done, failed=failed, total=len(uids))))
    return status or (0 if done == len(uids) else 1)


def _sidecar_writer(watch: WatchConfig | None):  # type: ignore[no-untyped-def]
    if watch is None:
        return lambda job: None
    from service.sidecars.output import write_sidecars_for_job

    def write(job: Job) -> None:
        if job.file_path:
            write_sidecars_for_job(job, watch)

    return write


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
