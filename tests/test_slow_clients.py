"""Slow and greedy clients cannot make the service unreachable (real sockets against a real server).

- a connection that never finishes its headers is closed after `[http] header_timeout_seconds`;
- a body trickled in byte by byte is a 408 after `[http] body_timeout_seconds`, holding no queue slot;
- past `[http] max_connections` new requests get a 503 at once, and the service answers again after;
- `tuwen serve` run with few file descriptors (RLIMIT_NOFILE) survives a flood of connections, still
  answers /health afterwards, and logs the accept failures at most about once a second.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.live import LiveService, running_service


@pytest.fixture
def live(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    config = make_config(
        http={
            "header_timeout_seconds": 1.0,
            "body_timeout_seconds": 1.5,
            "keep_alive_seconds": 2,
            "max_connections": 8,
        }
    )
    with running_service(config, backend_factory) as running:
        yield running


def _address(live: LiveService) -> tuple[str, int]:
    host, port = live.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_headers_that_never_end_are_cut_off(live: LiveService) -> None:
    sock = socket.create_connection(_address(live))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
    started = time.monotonic()
    assert _closed_by_server(sock, within=5.0)
    assert time.monotonic() - started < 4.0
    sock.close()
    assert httpx.get(live.base_url + "/health", timeout=5).status_code == 200


def test_a_trickled_body_is_a_408_and_holds_no_slot(live: LiveService) -> None:
    sock = socket.create_connection(_address(live))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    started = time.monotonic()
    answer = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < 6 and b"\r\n\r\n" not in answer:
        try:
            sock.sendall(b" ")
        except OSError:
            break
        try:
            answer += sock.recv(4096)
        except TimeoutError:
            continue
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 5
    assert live.app.queue.slots_in_use() == 0


def test_past_max_connections_requests_get_503_and_service_recovers(live: LiveService) -> None:
    idle = [socket.create_connection(_address(live)) for _ in range(10)]
    try:
        refused = httpx.get(live.base_url + "/health", timeout=5)
    finally:
        for sock in idle:
            sock.close()
    assert refused.status_code == 503
    assert wait_until(lambda: httpx.get(live.base_url + "/health", timeout=5).status_code == 200, timeout=15)


def _preexec_low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.timeout(180)
def test_a_connection_flood_with_few_file_descriptors_does_not_take_the_service_down(tmp_path: Path) -> None:
    from tests.test_serve import REPO, _free_port, _write_config

    port = _free_port()
    config = _write_config(tmp_path, port)
    text = config.read_text(encoding="utf-8").replace(
        f"port = {port}", f"port = {port}\nmax_connections = 2000\nheader_timeout_seconds = 3"
    )
    config.write_text(text, encoding="utf-8")
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "-c", str(config)],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_preexec_low_fd_limit,
        )
    flood: list[socket.socket] = []
    try:
        wait_until(lambda: _health(port) == 200, timeout=60)
        started = time.monotonic()
        for _ in range(400):  # more connections than the process has descriptors
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(3)
        flooded_for = time.monotonic() - started
        for sock in flood:
            sock.close()
        flood.clear()
        assert wait_until(lambda: _health(port) == 200, timeout=30)
    finally:
        for sock in flood:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    assert code == 0
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    accept_errors = [line for line in lines if "accept" in line.lower() and "error" in line.lower()]
    assert len(accept_errors) <= flooded_for + 5  # about once a second at most, not a flood of lines


def _health(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code
    except httpx.HTTPError:
        return 0
