"""One-shot command-line runs (`tuwen ask`, `tuwen batch`) beside, or without, a running service.

When a `tuwen serve` node is alive on the same database (its heartbeat is fresh, `service.nodes`), the
command only writes its jobs into the shared queue and waits for their results in the database: the service
owns the model, and a second copy of a 9B model beside it would not fit on the GPU (nor should two
processes fight over it). With no service running, the command starts a model worker of its own that
answers only the command's jobs, as before. Either way every job is in the history like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from db.models import Job
from service.backends.registry import create_backend
from service.config import Config
from service.events import Event
from service.messages import Message, msg
from service.nodes import cli_node_name, live_nodes, requeue_orphans
from service.queue import JobQueue, WorkerUnavailable
from service.storage import open_store
from service.worker import BackendFactory, ModelWorker

log = logging.getLogger(f"tuwen.{__name__}")

POLL_SECONDS = 0.2
NODE_CHECK_SECONDS = 5.0


class RunAborted(Exception):
    """The jobs cannot be answered now (the model failed to load, the service went away)."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


class OneShot:
    """The queue a command submits to, and whoever answers it (a running service, or our own worker)."""

    def __init__(self, config: Config, *, backend_factory: BackendFactory = create_backend) -> None:
        self.config = config
        self.store = open_store(config)
        self.queue = JobQueue(self.store)
        nodes = live_nodes(self.store, config.node.lease_seconds)
        self.service = nodes[0].name if nodes else None
        self.worker: ModelWorker | None = None
        self._next_node_check = time.monotonic() + NODE_CHECK_SECONDS
        if self.service is None:
            # Jobs an interrupted earlier command (or a crashed service) left running go back to the queue.
            requeue_orphans(self.store, config.node.lease_seconds)
            self.worker = ModelWorker(
                config, self.store, self.queue, backend_factory, only_uids=set(), node=cli_node_name()
            )
        else:
            log.info("tuwen serve is running on node %s: it answers this command's jobs", self.service)

    def submit(self, event: Event, *, dedup: bool = False) -> Job:
        """Queue one event (the running service, or our worker, will answer it)."""
        job = self.queue.submit(event, dedup=dedup)
        if self.worker is not None:
            self.worker.answer_only({job.uid})
        return job

    def start(self) -> None:
        """Start our own worker when no service answers for us."""
        if self.worker is not None:
            self.worker.start()

    def wait(self, uids: Iterable[str], on_finished: Callable[[Job], None]) -> None:
        """Call `on_finished(job)` for each job as it finishes, until all have; `RunAborted` if impossible."""
        try:
            asyncio.run(self.queue.wait_all(uids, on_finished, gone=self._gone, tick=POLL_SECONDS))
        except WorkerUnavailable:
            worker = self.worker
            if worker is not None:
                raise RunAborted(worker.error or msg("cli_model_failed")) from None
            raise RunAborted(msg("cli_service_gone", node=self.service)) from None

    def _gone(self) -> bool:
        """Nobody will answer: our worker failed, or the service we handed the jobs to stopped."""
        if self.worker is not None:
            return self.worker.state in ("failed", "dead")
        now = time.monotonic()
        if now < self._next_node_check:
            return False
        self._next_node_check = now + NODE_CHECK_SECONDS
        return not live_nodes(self.store, self.config.node.lease_seconds)

    def close(self) -> None:
        """Stop our worker (jobs in hand go back to the queue) and close the database."""
        if self.worker is not None:
            self.worker.stop()
        self.store.close()
