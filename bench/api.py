"""API benchmark: what does the service add on top of calling the backend directly?

Not a test: it takes a minute or two and its numbers depend on the machine. Same model (the tiny random
GLM-4V from bench/tinyglm.py, greedy, `max_new_tokens` 8), same image (a rendered 1000×700 scan, JPEG), same
question on both sides.

(a) **direct** — this process loads `TransformersBackend` and calls it the way a bare script would:
    `decode_image()` on the file, then `backend.stream()` with a no-op callback, which is what the worker
    calls for API jobs (they always have an `on_text` listener); `backend.answer()` is timed too.
(b) **service** — a real `tuwen serve` subprocess with the same model; sequential `POST /v1/chat/completions`
    with the image as a base64 data URL. Everything a client waits for is inside: HTTP, JSON, base64,
    the content-addressed upload write, the pre-queue decode check, SQLite queue, worker decode, generation,
    recording. (a) and (b) alternate call by call, so a shared VM's drift lands on both alike.
    Overhead = service p50 − direct stream p50, and the median of the per-round differences. The worker's
    own `latency_ms` (read from the database) splits the service time into "in the worker" and "around it"
    (HTTP, upload, pre-queue decode, queue hand-offs).
(c) **throughput** — 8 concurrent clients (threads, one httpx client each) against the same service.

Usage: `.venv/bin/python bench/api.py [-n 40] [--clients 8] [--requests 96] [--json]`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/api.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is local; never wait on a hub

import httpx  # noqa: E402

from bench.render import render_text_image  # noqa: E402
from bench.serving import free_port, running_service, wait_healthy  # noqa: E402
from bench.tinyglm import build_tiny_glm  # noqa: E402
from service.backends.base import Answer, single_image_request  # noqa: E402
from service.config import Config, ImagesConfig, ModelConfig  # noqa: E402
from service.images import decode_image  # noqa: E402

QUESTION = "图中写了什么？"
MAX_NEW_TOKENS = 8


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of `values` (share in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary(seconds: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds."""
    return {
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 0.95) * 1000, 1),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 1),
        "n": len(seconds),
    }


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1048576, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average": os.getloadavg(),
    }


# -- (a) direct ----------------------------------------------------------------------------------------


class Direct:
    """The backend in this process, called the way a bare script would, from one persistent thread.

    Why a thread: the service's model worker is a thread, and on a busy CPU box torch generation from the
    main thread measured 5-10x slower than from any other thread (OpenMP's team of the main thread); timing
    the baseline there would credit the service with a speed-up it did not earn.
    """

    def __init__(self, model_dir: Path, image_path: Path) -> None:
        from service.backends.transformers_backend import TransformersBackend

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")
        model = ModelConfig(backend="transformers", path=str(model_dir), max_new_tokens=MAX_NEW_TOKENS)
        self.backend = TransformersBackend(Config(model=model))
        self.pool.submit(self.backend.load).result()
        self.image_path = image_path
        self.limits = ImagesConfig()

    def _request(self) -> Any:
        page = decode_image(self.image_path, self.limits).pages[0]
        return single_image_request(page, QUESTION, max_new_tokens=MAX_NEW_TOKENS)

    def _timed(self, call: Callable[[], Answer]) -> tuple[float, str]:
        def run() -> tuple[float, str]:
            started = time.perf_counter()
            text = call().text
            return time.perf_counter() - started, text

        return self.pool.submit(run).result()

    def answer(self) -> tuple[float, str]:
        """Decode + `answer()`: seconds and text."""
        return self._timed(lambda: self.backend.answer(self._request()))

    def stream(self) -> tuple[float, str]:
        """Decode + `stream()` with a no-op callback (the worker's path for API jobs)."""
        return self._timed(lambda: self.backend.stream(self._request(), lambda piece: None))


# -- (b), (c) the service ------------------------------------------------------------------------------


@contextmanager
def tuwen_serve(root: Path, model_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`tuwen serve` with the tiny model; always stopped on exit (SIGTERM, then SIGKILL)."""
    config = root / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[model]",
                'backend = "transformers"',
                f"path = {json.dumps(str(model_dir))}",
                f"max_new_tokens = {MAX_NEW_TOKENS}",
                "[storage]",
                f"data_dir = {json.dumps(str(root / 'data'))}",
                "[http]",
                'host = "127.0.0.1"',
                f"port = {port}",
                "max_queue = 64",
                "[logging]",
                'level = "WARNING"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    with running_service(config, root / "serve.log") as process:
        wait_healthy(port, process, root / "serve.log")
        yield process


def interleaved(direct: Direct, client: httpx.Client, body: dict[str, Any], count: int) -> dict[str, Any]:
    """`count` rounds of direct answer, direct stream and one API call, so drift hits all three alike."""
    times: dict[str, list[float]] = {"answer": [], "stream": [], "service": []}
    texts: set[str] = set()
    uids: list[str] = []
    for round_number in range(count + 3):  # the first 3 rounds warm up and are not counted
        answer_s, answer_text = direct.answer()
        stream_s, stream_text = direct.stream()
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json=body)
        service_s = time.perf_counter() - started
        response.raise_for_status()
        texts |= {answer_text, stream_text, response.json()["choices"][0]["message"]["content"]}
        if round_number >= 3:
            times["answer"].append(answer_s)
            times["stream"].append(stream_s)
            times["service"].append(service_s)
            uids.append(response.json()["id"].removeprefix("chatcmpl-"))
    return {"times": times, "same_answer": len(texts) == 1, "uids": uids}


def throughput(base_url: str, body: dict[str, Any], clients: int, total: int) -> dict[str, Any]:
    """`clients` threads sharing `total` requests; requests/s over the wall time, and latency."""
    remaining = iter(range(total))
    lock = threading.Lock()
    seconds: list[float] = []
    statuses: list[int] = []

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                started = time.perf_counter()
                status = client.post("/v1/chat/completions", json=body).status_code
                with lock:
                    seconds.append(time.perf_counter() - started)
                    statuses.append(status)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": total,
        "ok": statuses.count(200),
        "other_statuses": sorted({s for s in statuses if s != 200}),
        "wall_s": round(wall, 2),
        "requests_per_s": round(statuses.count(200) / wall, 2),
        **summary(seconds),
    }


def worker_latency(db_path: Path, uids: list[str]) -> dict[str, float]:
    """The worker's own processing time (`latency_ms`) for the given jobs."""
    with sqlite3.connect(db_path) as conn:
        marks = ",".join("?" * len(uids))
        rows = conn.execute(f"SELECT latency_ms FROM jobs WHERE uid IN ({marks})", uids).fetchall()
    return summary([float(row[0]) / 1000 for row in rows])


def main() -> int:
    """Run (a), (b), (a) again, (c); print a report (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="sequential calls per side (default 40)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96, help="requests in the throughput run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuwen-bench-api-") as temp:
        root = Path(temp)
        model_dir = build_tiny_glm(root / "tiny-glm4v")
        image_path = root / "scan.jpg"
        render_text_image(
            ["图问档案馆 1956", "Archive scan", "第三排左起"], size=(1000, 700), font_size=40
        ).save(image_path, "JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(image_path.read_bytes()).decode()
        parts = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
        body = {
            "model": "tuwen",
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": MAX_NEW_TOKENS,
        }
        direct = Direct(model_dir, image_path)
        port = free_port()
        with (
            tuwen_serve(root, model_dir, port),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client,
        ):
            sequential = interleaved(direct, client, body, args.n)
            concurrent = throughput(str(client.base_url), body, args.clients, args.requests)
        in_worker = worker_latency(root / "data" / "tuwen.sqlite3", sequential["uids"])
    times = sequential["times"]
    stream, service = summary(times["stream"]), summary(times["service"])
    report = {
        "machine": machine(),
        "image": f"1000x700 JPEG, {len(url) // 1024} KB as a data URL",
        "direct_answer": summary(times["answer"]),
        "direct_stream": stream,
        "service": service,
        "service_in_worker": in_worker,
        "overhead_p50_ms": round(service["p50_ms"] - stream["p50_ms"], 1),
        "overhead_p95_ms": round(service["p95_ms"] - stream["p95_ms"], 1),
        "paired_overhead_p50_ms": round(
            statistics.median(s - d for s, d in zip(times["service"], times["stream"], strict=True)) * 1000, 1
        ),
        "around_worker_p50_ms": round(service["p50_ms"] - in_worker["p50_ms"], 1),
        "same_answer": sequential["same_answer"],
        "throughput": concurrent,
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
