"""Several servers serving one model (`[openai] base_urls`: one vLLM per GPU, say): which one gets a request.

Least in flight, as nginx's `least_conn` and vLLM's own data-parallel router do: a server that is slow
right now (a long generation, a bigger batch) gets fewer new requests without anyone measuring latency.
A server that refuses or drops connections is left out for a while (backoff from 2 s to 60 s), and the
request goes to another at once; once its time is up it gets requests again, and the first success brings
it back for good. When every server is out, the one whose time is up first is tried anyway: with a single
server this is just "keep trying", as before. Busy replies (503/429) do not take a server out: that is
its queue talking, and the request is retried with backoff as usual.

Each endpoint's state is what `/health` and `/metrics` show (`ComponentStatus` of kind `model-endpoint`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.retry import Availability, Backoff
from service.supervisor import ComponentStatus

log = logging.getLogger(f"tuwen.{__name__}")


@dataclass
class Endpoint:
    """One server: requests in flight, answers so far, and whether it is left out (until when)."""

    url: str
    in_flight: int = 0
    answered: int = 0
    failed: int = 0
    out_until: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=2.0, cap=60.0))
    availability: Availability = field(init=False)

    def __post_init__(self) -> None:
        self.availability = Availability(log, f"model server {self.url}")

    def status(self) -> ComponentStatus:
        """This server as `/health` lists it."""
        a = self.availability
        return ComponentStatus(
            self.url, "model-endpoint", "running" if a.available else "unavailable", 0, a.reason, a.since
        )


class Endpoints:
    """Picks a server per request and keeps count (thread-safe: the dispatcher sends from many threads)."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("at least one server URL is needed")
        self.all = [Endpoint(url) for url in urls]
        self._lock = threading.Lock()
        self._turn = 0

    @contextmanager
    def use(self, avoid: frozenset[str] = frozenset()) -> Iterator[Endpoint]:
        """The server for one attempt, counted in flight while the block runs. `avoid`: already tried."""
        endpoint = self._pick(avoid)
        try:
            yield endpoint
        finally:
            with self._lock:
                endpoint.in_flight -= 1

    def _pick(self, avoid: frozenset[str]) -> Endpoint:
        now = time.monotonic()
        with self._lock:
            usable = [e for e in self.all if e.out_until <= now and e.url not in avoid]
            if not usable:  # all out (or tried): the one back soonest, so one server means "keep trying"
                usable = [min(self.all, key=lambda e: (e.url in avoid, e.out_until))]
            # Ties go round: equal servers share the work instead of the first one taking it all.
            self._turn += 1
            endpoint = min(
                usable, key=lambda e: (e.in_flight, (self.all.index(e) - self._turn) % len(self.all))
            )
            endpoint.in_flight += 1
            return endpoint

    def succeeded(self, endpoint: Endpoint) -> None:
        """An answer came back: the server is in."""
        with self._lock:
            endpoint.answered += 1
            endpoint.out_until = 0.0
            endpoint.backoff.reset()
        endpoint.availability.ok()

    def unreachable(self, endpoint: Endpoint, reason: str) -> None:
        """Connecting failed or the connection dropped: leave the server out for a while."""
        with self._lock:
            endpoint.failed += 1
            endpoint.out_until = time.monotonic() + endpoint.backoff.next_delay()
        endpoint.availability.failed(reason)

    def others_usable(self, tried: frozenset[str]) -> bool:
        """Whether a server not yet tried is in right now (then a failed request moves there at once)."""
        now = time.monotonic()
        with self._lock:
            return any(e.out_until <= now and e.url not in tried for e in self.all)

    def statuses(self) -> list[ComponentStatus]:
        """Every server's state, for `/health` and `/metrics`."""
        return [endpoint.status() for endpoint in self.all]

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per server (for `/metrics`)."""
        with self._lock:
            return {e.url: e.in_flight for e in self.all}
