"""Starting and stopping a real `tuwen serve` for the benchmarks (one place, used by every bench script)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tuwen_command(config: Path) -> list[str]:
    """`tuwen serve -c CONFIG` with this checkout's code and interpreter."""
    return [sys.executable, "-m", "service.cli", "serve", "-c", str(config)]


@contextmanager
def running_service(config: Path, log_path: Path, **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """`tuwen serve` in the background with its output in `log_path`; stopped with SIGTERM afterwards."""
    # No stray TUWEN_* overrides from the caller's shell: the config file says everything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUWEN_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # type: ignore[call-overload]
            tuwen_command(config), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, **popen
        )
    try:
        yield process
    finally:
        stop_process(process)


STOP_GRACE_S = 40.0  # longer than the service's own 30 s stop timeout
HEALTH_TIMEOUT_S = 180.0


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_healthy(
    port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = HEALTH_TIMEOUT_S
) -> float:
    """Seconds until `/health` answered 200; SystemExit with the log's tail if it dies or never gets there."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"tuwen serve exited ({process.returncode}):\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"tuwen serve not healthy within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
