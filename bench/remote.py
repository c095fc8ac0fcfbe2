"""Keeping a remote model busy: a real `tuwen serve` against a stand-in for vLLM with a fixed latency.

    .venv/bin/python bench/remote.py [--latency 0.5] [--scans 400] [--concurrency 8,32,64] [--profile]

The stand-in (`bench/fake_openai.py`, aiohttp in this process) answers every request after `--latency`
seconds and has no concurrency limit, like a continuously batching server with room to spare. tuwen serve
runs in its own process with the `openai` backend, one watched folder and the HTTP API.

1. **Backlog throughput** for each `--concurrency` C: `--scans` (at least 25 × C, so that every run lasts
   some 25 of the server's latencies) tiny distinct PNG scans are copied into the watched folder at once;
   scans/s from the first copy to the last job recorded (read from the service's own database), against
   the ideal C ÷ latency. Target: ≥ 90 % of ideal while the ideal is below the spine's ceiling. The first
   answer cannot come before the folder's stability wait (0.2 s here) plus one latency: over 400 scans at
   C = 64 that alone was a tenth of the ideal run. "Steady" is the rate between the 10th and the 90th
   percentile of the answers, by the time each was recorded: the backlog's pace once it runs.
2. **The spine's ceiling**: the same with latency 0 and C = 64 (what the service itself can do per second:
   claim, decode, encode, send, record, write two sidecars, notice the file). With `--profile`, py-spy
   samples the service meanwhile and the top functions by own time are printed (where the time goes).
3. **Interactive latency during a backlog**: with C = 8 and the backlog filling every slot, 20 API
   questions one after another; p50/p95 against the latency. Target: p95 ≤ latency + 0.5 s.

Prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench.fake_openai import MODEL, FakeOpenAIServer  # noqa: E402
from bench.serving import free_port, running_service, wait_healthy  # noqa: E402

KEY = "bench-" + "k" * 26


def make_scans(folder: Path, count: int, start: int = 0) -> list[Path]:
    """`count` distinct 96×48 PNGs (distinct content, so no answer is reused from another)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(start, start + count):
        image = Image.new("L", (96, 48), 255)
        ImageDraw.Draw(image).text((4, 16), f"No. {n:06d}", fill=0)
        path = folder / f"s{n:06d}.png"
        image.save(path)
        paths.append(path)
    return paths


def write_config(root: Path, server: str, port: int, concurrency: int) -> Path:
    config = root / "config.toml"
    config.write_text(
        f"""
[model]
backend = "openai"
[openai]
base_url = "{server}"
model = "{MODEL}"
concurrency = {concurrency}
max_retries = 1
[storage]
data_dir = "{root / "data"}"
[http]
host = "127.0.0.1"
port = {port}
api_key = "{KEY}"
max_queue = 64
[logging]
level = "WARNING"
[[watch]]
path = "{root / "inbox"}"
name = "bench"
stable_seconds = 0.2
rescan_seconds = 3600
""",
        encoding="utf-8",
    )
    return config


def recorded(db: Path) -> int:
    """Finished folder jobs, read from the service's database (read-only, beside its writer)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE source='watch' AND status IN ('done','failed')"
            )
            return int(row.fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def steady_rate(db: Path) -> float:
    """Answers per second between the 10th and the 90th percentile of the run's answers (by finish time).

    The whole-run rate also holds the start (the stability wait, the first latency with nothing answered
    yet) and the last wave; this is the rate the backlog runs at meanwhile.
    """
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            "SELECT finished_at FROM jobs WHERE source='watch' ORDER BY finished_at"
        ).fetchall()
    times = [datetime.fromisoformat(row[0]).timestamp() for row in rows]
    first, last = int(0.1 * len(times)), int(0.9 * len(times))
    return (last - first) / (times[last] - times[first]) if times[last] > times[first] else 0.0


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (Linux /proc), all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def backlog_run(
    server: FakeOpenAIServer, latency: float, concurrency: int, scans: int, profile: bool = False
) -> dict[str, Any]:
    """One service, one backlog: scans/s, the most requests the server saw at once, and the profile."""
    server.latency, server.max_in_flight = latency, 0
    with tempfile.TemporaryDirectory(prefix="tuwen-remote-") as tmp:
        root = Path(tmp)
        (root / "inbox").mkdir()
        staged = make_scans(root / "staged", scans)
        port = free_port()
        config = write_config(root, server.url, port, concurrency)
        with running_service(config, root / "serve.log") as process:
            wait_healthy(port, process, root / "serve.log")
            spy = _start_profile(process.pid, root / "profile.txt") if profile else None
            cpu_before = process_cpu_seconds(process.pid)
            started = time.perf_counter()
            for path in staged:
                os.rename(path, root / "inbox" / path.name)  # a scanner's atomic drop
            db = root / "data" / "tuwen.sqlite3"
            while recorded(db) < scans:
                if process.poll() is not None or time.perf_counter() - started > 600:
                    raise SystemExit(f"backlog did not finish:\n{(root / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            steady = steady_rate(db)
            user, system = (b - a for a, b in zip(cpu_before, process_cpu_seconds(process.pid), strict=True))
            top = _stop_profile(spy, root / "profile.txt") if spy else []
    return {
        "concurrency": concurrency,
        "latency": latency,
        "scans": scans,
        "seconds": round(seconds, 2),
        "per_s": round(scans / seconds, 1),
        "steady_per_s": round(steady, 1),
        "ideal_per_s": round(concurrency / latency, 1) if latency else None,
        "max_in_flight": server.max_in_flight,
        # The service's own CPU time per job (all its threads): what a job costs whatever else runs.
        "cpu_ms_per_job": round((user + system) / scans * 1000, 2),
        "user_ms_per_job": round(user / scans * 1000, 2),
        "system_ms_per_job": round(system / scans * 1000, 2),
        "profile": top,
    }


def interactive_run(server: FakeOpenAIServer, latency: float, questions: int = 20) -> dict[str, float]:
    """API questions one after another while a backlog fills every backlog slot (C = 8)."""
    server.latency = latency
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with tempfile.TemporaryDirectory(prefix="tuwen-remote-") as tmp:
        root = Path(tmp)
        (root / "inbox").mkdir()
        port = free_port()
        config = write_config(root, server.url, port, 8)
        with running_service(config, root / "serve.log") as process:
            wait_healthy(port, process, root / "serve.log")
            backlog = int(8 / latency * (questions * (latency + 0.5) + 10))  # enough to outlast the questions
            for path in make_scans(root / "staged", backlog):
                os.rename(path, root / "inbox" / path.name)
            time.sleep(2 + latency)  # the backlog is in flight
            seconds = []
            with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
                for n in range(questions):
                    parts = [
                        {"type": "text", "text": f"问题 {n}"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ]
                    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}]}
                    began = time.perf_counter()
                    response = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                    seconds.append(time.perf_counter() - began)
                    if response.status_code != 200:
                        raise SystemExit(f"question {n}: HTTP {response.status_code} {response.text[:300]}")
            pending = backlog - recorded(root / "data" / "tuwen.sqlite3")
    ordered = sorted(seconds)
    return {
        "latency": latency,
        "questions": questions,
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "max_s": round(ordered[-1], 3),
        "backlog_still_pending": pending,
    }


def _start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("(py-spy not installed: `pip install py-spy` for --profile)", file=sys.stderr)
        return None
    # --gil: only the thread holding the GIL, i.e. where the service's Python time goes (not its waits).
    command = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    command += [] if os.environ.get("BENCH_ALL_THREADS") else ["--gil"]
    command += os.environ.get("BENCH_SPY_ARGS", "").split()  # e.g. "--threads --idle" for a closer look
    command += ["--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profile(spy: subprocess.Popen[bytes], out: Path, top: int = 14) -> list[tuple[str, float]]:
    """py-spy's collapsed stacks → tuwen's functions by inclusive share of the GIL-holding samples."""
    spy.send_signal(2)
    spy.wait(30)
    shutil.copyfile(out, Path(tempfile.gettempdir()) / "tuwen-remote-profile.txt")  # for a closer look
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        ours = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            if any(f"/{package}/" in "/" + where for package in ("service", "watchers", "db", "bots")):
                module = where.split("/")[-2] + "/" + where.split("/")[-1].split(":")[0]
                ours.add(f"{module} {name.split('.')[-1] if '.' in name else name}")
        for name in ours:
            inclusive[name] += int(count)
    return [(name, round(100 * n / total, 1)) for name, n in inclusive.most_common(top)] if total else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--scans", type=int, default=400)
    parser.add_argument("--concurrency", default="8,32,64")
    parser.add_argument("--ceiling-scans", type=int, default=1500)
    parser.add_argument("--ceiling-concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="ceiling runs; the median is reported")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--parts", default="ceiling,backlog,interactive", help="which measurements to run")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    server = FakeOpenAIServer()
    server.record_bodies = False
    server.start()
    try:
        ceiling: dict[str, Any] | None = None
        ceilings: list[dict[str, Any]] = []
        if "ceiling" in parts:
            ceilings = [
                backlog_run(server, 0.0, args.ceiling_concurrency, args.ceiling_scans, args.profile)
                for _ in range(args.repeat)
            ]
            ceiling = sorted(ceilings, key=lambda run: float(run["per_s"]))[len(ceilings) // 2]
        levels = args.concurrency.split(",") if "backlog" in parts else []
        runs = [backlog_run(server, args.latency, int(c), max(args.scans, 25 * int(c))) for c in levels]
        interactive = interactive_run(server, args.latency) if "interactive" in parts else None
    finally:
        server.stop()
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}.\n")
    print(
        "| concurrency | latency | scans | seconds | scans/s | ideal | of ideal | steady scans/s (of ideal) "
        "| max in flight |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        ideal = float(run["ideal_per_s"])
        share, steady = float(run["per_s"]) / ideal, float(run["steady_per_s"])
        cells = [run["concurrency"], f"{run['latency']} s", run["scans"], run["seconds"], run["per_s"]]
        cells += [ideal, f"{share:.0%}", f"{steady} ({steady / ideal:.0%})", run["max_in_flight"]]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if ceiling is not None:
        print(
            f"\nSpine ceiling (latency 0, concurrency {ceiling['concurrency']}, {ceiling['scans']} scans): "
            f"**{ceiling['per_s']} jobs/s** ({ceiling['seconds']} s); the service's own CPU time "
            f"{ceiling['cpu_ms_per_job']} ms per job ({ceiling['user_ms_per_job']} user, "
            f"{ceiling['system_ms_per_job']} system)."
        )
        if len(ceilings) > 1:
            print(f"All {len(ceilings)} runs (jobs/s): " + ", ".join(str(run["per_s"]) for run in ceilings))
    if ceiling is not None and ceiling["profile"]:
        print("\nWhere the service's Python time goes (py-spy --gil, inclusive share of samples):\n")
        for name, share in ceiling["profile"]:
            print(f"- {share} % `{name}`")
    if interactive is None:
        return 0
    i = interactive
    print(
        f"\nInteractive amid a backlog (C = 8, latency {i['latency']} s, {i['questions']} questions in a row"
        f"): p50 {i['p50_s']} s, p95 {i['p95_s']} s, max {i['max_s']} s; "
        f"{i['backlog_still_pending']} backlog scans still pending at the end."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
