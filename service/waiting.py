"""Waiting for a job's result: the one wait the API, the chat bots and the command line share.

A job is finished by the worker of this process (its future resolves at once) or by another process on the
same database (a running `tuwen serve` that a `tuwen ask` handed its job to, another node): the store is
looked at every `tick` seconds for that. The wait ends with the finished job, `TimeoutError` after
`timeout`, or `WorkerUnavailable` as soon as `gone()` says nobody will answer (the worker died, the service
the command handed its job to stopped), so nobody waits out a timeout for a model that is not there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from db.models import Job, JobStatus
from service.errors import WorkerUnavailable

if TYPE_CHECKING:
    from service.queue import JobQueue

FINISHED = (JobStatus.DONE, JobStatus.FAILED)


async def wait_for(
    queue: JobQueue, uid: str, timeout: float | None, gone: Callable[[], bool], tick: float
) -> Job:
    """The finished job `uid` (see the module docstring)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    future = queue.result(uid)
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {uid} not finished within {timeout} s")
            step = tick if remaining is None else min(remaining, tick)
            done, _ = await asyncio.wait({waiting}, timeout=step)
            if done:
                return waiting.result()
            job = await asyncio.to_thread(queue.store.get_by_uid, uid)
            if job is not None and job.status in FINISHED:  # finished by another process
                return job
            if gone():
                raise WorkerUnavailable()
    finally:
        queue.forget_result(uid, future)


async def wait_for_all(
    queue: JobQueue,
    uids: Iterable[str],
    on_finished: Callable[[Job], None],
    gone: Callable[[], bool],
    tick: float,
) -> None:
    """Call `on_finished(job)` as each job finishes (in any process), until all have; `WorkerUnavailable`
    when `gone()` says the rest will not be answered."""
    pending = set(uids)
    while pending:
        jobs = await asyncio.to_thread(queue.store.jobs_by_uids, sorted(pending))
        for job in jobs:
            if job.status in FINISHED:
                pending.discard(job.uid)
                on_finished(job)
        if not pending:
            return
        if gone():
            raise WorkerUnavailable()
        await asyncio.sleep(tick)
