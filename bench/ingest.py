"""Ingest benchmark: how much does the resident service cost on top of the bare OCR engine?

Not a test: it takes a few minutes and its numbers depend on the machine. Three measurements:

(a) **bare** — a plain loop that decodes each scan with PIL and calls `OcrEngine().read()` on it, the least
    work any front end could do. Measured before and after (b); the baseline is their mean (or the one that
    ran on a quiet machine), so drift in a shared VM's speed does not land on one side only.
(b) **service** — a real `tuwen serve` subprocess (embedded OCR backend, one `[[watch]]` on an empty inbox,
    HTTP on a free port). Once `GET /health` is 200 the scans are copied into the inbox, and the clock runs
    from the first copy until every `NAME.jpg.json` sidecar exists. Everything a user waits for is inside:
    native file events, the stability wait, hashing, the SQLite queue, decoding, OCR, sidecars (fsynced).
    Diagnostics split that time into the one-off latency before the first sidecar and the steady rate
    after it, and read the per-job timings the service recorded in its database.
(c) **decode** — a 6000×4000 JPEG brought down to the model's 1024 px: full decode + `thumbnail()` versus
    `service.images.decode_image`, which decodes in JPEG draft mode (the decoder scales by 1/2…1/8).

Shared machines are noisy: other programs' CPU use is measured during every timed stretch (from /proc/stat,
minus our own and the service's CPU time). A round is clean when others stayed under 10 % of the machine
during the service run and at least one bare loop; the headline ratio is the median over clean rounds.
Before each timed stretch the script waits (at most 10 min) for a quiet machine. The CPU-time ratio
(service process vs bare loop) is reported beside the wall ratio: it moves much less with other load.
Linux only (/proc).

Usage: `.venv/bin/python bench/ingest.py [-n 40] [--rounds 3] [--keep] [--json]`. The service is always
stopped (SIGTERM, then SIGKILL after 40 s), also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/ingest.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from bench.render import render_text_image  # noqa: E402
from bench.serving import free_port, running_service, tail, wait_healthy  # noqa: E402
from service.backends.ocr_backend import OcrEngine  # noqa: E402
from service.config import ImagesConfig  # noqa: E402
from service.images import decode_image  # noqa: E402

SCAN_SIZE = (1000, 700)
BIG_SIZE = (6000, 4000)
TARGET_RATIO = 1.10


CPUS = os.cpu_count() or 1
CLEAN_OTHER_SHARE = 0.10  # a stretch is "clean" when other programs used less than this share of all CPUs


@dataclass
class Span:
    """One timed stretch: wall time, CPU time of the program measured, CPU time of everything else."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    other_cpu_s: float = 0.0

    @property
    def other_share(self) -> float:
        """Share of the machine's CPU capacity that other programs used meanwhile (0 = quiet)."""
        return max(0.0, self.other_cpu_s) / (self.wall_s * CPUS) if self.wall_s else math.nan


@dataclass
class Round:
    """One service run and the bare loops right before and after it."""

    bare_before: Span = field(default_factory=Span)
    service: Span = field(default_factory=Span)
    bare_after: Span = field(default_factory=Span)
    startup_to_healthy_s: float = 0.0
    first_queued_s: float = 0.0  # first copy → first job row (events + stability wait + hashing + insert)
    last_queued_s: float = 0.0
    first_sidecar_s: float = 0.0
    steady_ms_per_scan: float = 0.0  # mean gap between consecutive finished_at in the service's database

    @property
    def baseline(self) -> list[Span]:
        """The flanking bare loops that ran on a quiet machine, or both when neither did."""
        flanks = [self.bare_before, self.bare_after]
        return [span for span in flanks if span.other_share < CLEAN_OTHER_SHARE] or flanks

    @property
    def bare_s(self) -> float:
        """The baseline of this round: mean wall time of `baseline`."""
        return statistics.fmean(span.wall_s for span in self.baseline)

    @property
    def ratio(self) -> float:
        """Service wall time over bare wall time (1.00 = no overhead)."""
        return self.service.wall_s / self.bare_s if self.bare_s else math.nan

    @property
    def cpu_ratio(self) -> float:
        """Service CPU time over bare CPU time: moves much less than wall time with other load."""
        bare_cpu = statistics.fmean(span.cpu_s for span in self.baseline)
        return self.service.cpu_s / bare_cpu if bare_cpu else math.nan

    @property
    def clean(self) -> bool:
        """Whether other programs stayed under `CLEAN_OTHER_SHARE` during the service run and a bare loop."""
        quiet = [span.other_share < CLEAN_OTHER_SHARE for span in (self.bare_before, self.bare_after)]
        return self.service.other_share < CLEAN_OTHER_SHARE and any(quiet)


@dataclass
class Result:
    """Everything the benchmark measured; printed as Markdown or JSON."""

    scans: int
    stable_seconds: float
    rounds: list[Round] = field(default_factory=list)
    decode_full_ms: float = 0.0
    decode_draft_ms: float = 0.0
    decode_runs: int = 0
    decode_out_size: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)

    @property
    def counted(self) -> list[Round]:
        """The rounds the headline uses: the clean ones, or all when none was clean."""
        return [r for r in self.rounds if r.clean] or self.rounds

    @property
    def ratio(self) -> float:
        """Median service/bare wall-time ratio over the counted rounds."""
        return statistics.median(r.ratio for r in self.counted) if self.rounds else math.nan

    @property
    def best_ratio(self) -> float:
        """Fastest service run over fastest bare loop, all rounds: other load only ever adds time."""
        if not self.rounds:
            return math.nan
        bare = min(span.wall_s for r in self.rounds for span in (r.bare_before, r.bare_after))
        return min(r.service.wall_s for r in self.rounds) / bare

    @property
    def cpu_ratio(self) -> float:
        """Median service/bare CPU-time ratio over the counted rounds."""
        return statistics.median(r.cpu_ratio for r in self.counted) if self.rounds else math.nan


def per_minute(count: int, seconds: float) -> float:
    """`count` events in `seconds`, as a rate per minute."""
    return count * 60.0 / seconds if seconds > 0 else 0.0


# -- measuring on a shared machine ----------------------------------------------------------------------


def system_busy_seconds() -> float:
    """CPU seconds all programs (and the hypervisor's steal) have used since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all threads (NaN once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    # After the ")" that ends the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Times a stretch and splits the machine's CPU use into ours, the measured child's, and others'."""

    def __init__(self, child_pid: int | None = None) -> None:
        self.child_pid = child_pid
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.child = process_cpu_seconds(child_pid) if child_pid else 0.0
        self.busy = system_busy_seconds()

    def stop(self) -> Span:
        """The span since construction; `cpu_s` is the child's when there is one, else this process's."""
        wall = time.perf_counter() - self.wall
        own = time.process_time() - self.own
        child = (process_cpu_seconds(self.child_pid) - self.child) if self.child_pid else 0.0
        busy = system_busy_seconds() - self.busy
        # With a child, our own CPU (polling for sidecars) is harness cost: neither the program nor others.
        return Span(wall_s=wall, cpu_s=child if self.child_pid else own, other_cpu_s=busy - own - child)


def wait_quiet(max_share: float, settle_s: float = 3.0, max_wait_s: float = 600.0) -> float:
    """Wait until other programs use less than `max_share` of the CPUs over `settle_s`; return that share."""
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = Meter()
        time.sleep(settle_s)
        share = meter.stop().other_share
        if share < max_share or time.monotonic() > deadline:
            return share


# -- inputs ---------------------------------------------------------------------------------------------


def scan_lines(index: int) -> list[str]:
    """Mixed Chinese/English lines, distinct per scan (identical files would hit the dedup cache)."""
    month, day = index % 12 + 1, index % 28 + 1
    return [
        f"档案编号 No. {index:04d}",
        f"日期 Date: 2024年{month}月{day}日",
        "姓名 Name: 王小明 Wang Xiaoming",
        f"地点 Place: 上海市 Room {100 + index}",
        "备注 Note: 照片背面手写说明",
        f"Total {index * 37 % 1000} 元 RMB",
    ]


def render_scans(folder: Path, count: int) -> list[Path]:
    """Write `count` 1000×700 JPEG scans into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scan-{index:04d}.jpg"
        render_text_image(scan_lines(index), size=SCAN_SIZE).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def render_big_photo(path: Path) -> None:
    """A 6000×4000 JPEG with photo-like entropy (noise and gradients) and some text, like a camera scan."""
    # A mostly white page compresses to almost nothing and decodes unrealistically fast; noise keeps the
    # entropy-decoding work close to a real photo's.
    red = Image.linear_gradient("L").resize(BIG_SIZE)
    green = Image.effect_noise(BIG_SIZE, 48)
    blue = Image.linear_gradient("L").rotate(90).resize(BIG_SIZE)
    photo = Image.merge("RGB", (red, green, blue))
    photo.paste(render_text_image(scan_lines(1), size=(3000, 2100), font_size=100), (1500, 950))
    photo.save(path, "JPEG", quality=90)


# -- (a) the bare engine ----------------------------------------------------------------------------------


def bare_loop(engine: OcrEngine, paths: list[Path]) -> Span:
    """Decode and read every file with no service around it."""
    meter = Meter()
    for path in paths:
        with Image.open(path) as image:
            engine.read(image.convert("RGB"))
    return meter.stop()


# -- (b) the real service --------------------------------------------------------------------------------


def write_config(root: Path, inbox: Path, port: int, stable_seconds: float) -> Path:
    """A minimal config: embedded OCR, one watch, HTTP for /health, everything under `root`."""
    config = root / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[model]",
                'backend = "ocr"',
                "[storage]",
                f"data_dir = {json.dumps(str(root / 'data'))}",
                "[http]",
                'host = "127.0.0.1"',
                f"port = {port}",
                "[[watch]]",
                f"path = {json.dumps(str(inbox))}",
                'name = "bench"',
                f"stable_seconds = {stable_seconds}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config


def wait_for_sidecars(
    sidecars: list[Path], process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> list[float]:
    """Poll until every sidecar exists; return the perf_counter time each one was first seen."""
    seen: dict[Path, float] = {}
    deadline = time.perf_counter() + timeout
    while len(seen) < len(sidecars):
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(
                f"{len(seen)}/{len(sidecars)} sidecars after {timeout:.0f} s:\n{tail(log_path)}"
            )
        if process.poll() is not None:
            raise RuntimeError(f"tuwen serve exited with {process.returncode}:\n{tail(log_path)}")
        seen.update((p, now) for p in sidecars if p not in seen and p.exists())
        time.sleep(0.02)
    return sorted(seen.values())


def job_times(db_path: Path) -> tuple[list[datetime], list[datetime]]:
    """Creation and finish times (UTC) of the done jobs, read from the service's own database."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT created_at, finished_at FROM jobs WHERE status = 'done'").fetchall()
    created = sorted(_utc(row[0]) for row in rows)
    finished = sorted(_utc(row[1]) for row in rows if row[1])
    return created, finished


def _utc(value: object) -> datetime:
    # The store writes naive UTC text timestamps.
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def service_run(paths: list[Path], work: Path, stable_seconds: float, timeout: float, result: Round) -> None:
    """Measurement (b): copy the scans into a watched inbox of a real `tuwen serve`, wait for sidecars."""
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    port = free_port()
    config = write_config(work, inbox, port, stable_seconds)
    log_path = work / "tuwen-serve.log"
    with running_service(config, log_path) as process:
        result.startup_to_healthy_s = wait_healthy(port, process, log_path)
        targets = [inbox / p.name for p in paths]
        sidecars = [t.with_name(t.name + ".json") for t in targets]
        wall_started = datetime.now(UTC)
        meter = Meter(process.pid)
        for source, target in zip(paths, targets, strict=True):
            shutil.copyfile(source, target)  # fresh mtime, like a scanner writing a new file
        seen = wait_for_sidecars(sidecars, process, log_path, timeout)
        span = meter.stop()
    # The clock stops when the last sidecar was seen, not when the meter was read just after.
    span.wall_s = seen[-1] - meter.wall
    result.service = span
    result.first_sidecar_s = seen[0] - meter.wall
    created, finished = job_times(work / "data" / "tuwen.sqlite3")
    result.first_queued_s = (created[0] - wall_started).total_seconds()
    result.last_queued_s = (created[-1] - wall_started).total_seconds()
    if len(finished) > 1:
        result.steady_ms_per_scan = (finished[-1] - finished[0]).total_seconds() * 1000 / (len(finished) - 1)


# -- (c) decoding ------------------------------------------------------------------------------------------


def median_ms(action: Callable[[], object], runs: int) -> float:
    """Median wall time of `action` over `runs` runs, in milliseconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def decode_full(path: Path, max_edge: int) -> Image.Image:
    """What a plain PIL user writes: decode everything, then shrink (same filter as tuwen's)."""
    with Image.open(path) as image:
        image.load()  # after load() thumbnail() can no longer use draft mode: the full decode is paid
        rgb = image.convert("RGB")
    rgb.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def decode_run(work: Path, runs: int, result: Result) -> None:
    """Measurement (c): full decode + resize versus tuwen's draft-mode decode of a 6000×4000 JPEG."""
    big = work / "big-6000x4000.jpg"
    render_big_photo(big)
    limits = ImagesConfig.model_validate({})  # the shipped defaults (max_edge 1024)
    full_size = decode_full(big, limits.max_edge).size
    draft_size = decode_image(big, limits).pages[0].size
    if full_size != draft_size:
        result.notes.append(f"decode outputs differ in size: full {full_size}, draft {draft_size}")
    result.decode_out_size = draft_size
    result.decode_runs = runs
    result.decode_full_ms = median_ms(lambda: decode_full(big, limits.max_edge), runs)
    result.decode_draft_ms = median_ms(lambda: decode_image(big, limits), runs)
    result.notes.append(f"6000×4000 test JPEG: {big.stat().st_size / 1e6:.1f} MB")


# -- report -------------------------------------------------------------------------------------------------


def _span_cell(span: Span) -> str:
    return f"{span.wall_s:.2f} s ({span.other_share:.0%})"


def markdown(result: Result) -> str:
    """The results as Markdown tables."""
    n, rounds = result.scans, result.rounds
    verdict = "meets" if result.ratio <= TARGET_RATIO else "misses"
    clean = sum(r.clean for r in rounds)
    rows = [
        "Times for all scans; in brackets, the share of the machine's CPUs other programs used meanwhile.",
        "",
        "| Round | (a) bare before | (b) service | (a) bare after | Bare scans/min | Service scans/min "
        "| Wall ratio | CPU ratio | Clean |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    rows += [
        f"| {i} | {_span_cell(r.bare_before)} | {_span_cell(r.service)} | {_span_cell(r.bare_after)} "
        f"| {per_minute(n, r.bare_s):.1f} | {per_minute(n, r.service.wall_s):.1f} | {r.ratio:.3f}× "
        f"| {r.cpu_ratio:.3f}× | {'yes' if r.clean else 'no'} |"
        for i, r in enumerate(rounds, start=1)
    ]
    basis = f"{clean} clean round(s)" if clean else f"all {len(rounds)} rounds (none was clean)"
    rows += [
        "",
        f"**Service / bare wall time, median of {basis}: {result.ratio:.3f}×** "
        f"({verdict} the {TARGET_RATIO:.2f}× target). Fastest service run / fastest bare loop: "
        f"{result.best_ratio:.3f}×. CPU-time ratio: {result.cpu_ratio:.3f}×.",
        "",
        "| Service diagnostics | " + " | ".join(f"round {i}" for i in range(1, len(rounds) + 1)) + " |",
        "|---|" + "---:|" * len(rounds),
    ]

    def line(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    rows += [
        line(
            "start-up until `/health` is 200 (not timed)", [f"{r.startup_to_healthy_s:.1f} s" for r in rounds]
        ),
        line(
            f"first copy → first job queued (events, {result.stable_seconds:g} s stability, hash)",
            [f"{r.first_queued_s:.2f} s" for r in rounds],
        ),
        line("first copy → last job queued", [f"{r.last_queued_s:.2f} s" for r in rounds]),
        line("first copy → first sidecar", [f"{r.first_sidecar_s:.2f} s" for r in rounds]),
        line("service ms/scan, steady (DB finish times)", [f"{r.steady_ms_per_scan:.0f}" for r in rounds]),
        line("bare ms/scan", [f"{r.bare_s * 1000 / n:.0f}" for r in rounds]),
        line(
            "CPU s: service during (b) / bare loops",
            [
                f"{r.service.cpu_s:.1f} / {statistics.fmean(span.cpu_s for span in r.baseline):.1f}"
                for r in rounds
            ],
        ),
        "",
        f"| (c) {BIG_SIZE[0]}×{BIG_SIZE[1]} JPEG → {result.decode_out_size[0]}×{result.decode_out_size[1]} "
        f"| Median of {result.decode_runs} |",
        "|---|---:|",
        f"| full decode + `thumbnail()` (plain PIL) | {result.decode_full_ms:.0f} ms |",
        f"| draft-mode decode (`service.images.decode_image`) | {result.decode_draft_ms:.0f} ms |",
        f"| speed-up | {result.decode_full_ms / max(result.decode_draft_ms, 1e-9):.1f}× |",
    ]
    rows += ([""] + [f"- {note}" for note in result.notes]) if result.notes else []
    return "\n".join(rows)


def as_json(result: Result) -> str:
    """The results as JSON, derived figures included."""
    data = asdict(result) | {
        "ratio": result.ratio,
        "cpu_ratio": result.cpu_ratio,
        "target_ratio": TARGET_RATIO,
    }
    for raw, r in zip(data["rounds"], result.rounds, strict=True):
        raw.update(bare_s=r.bare_s, ratio=r.ratio, cpu_ratio=r.cpu_ratio, clean=r.clean)
        for name in ("bare_before", "service", "bare_after"):
            raw[name]["other_share"] = getattr(r, name).other_share
    return json.dumps(data, ensure_ascii=False, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run (a) and (b) alternately, then (c), and print the results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=40, help="number of scans (default 40)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (scans, logs, databases)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--rounds", type=int, default=3, help="service runs, each between two bare loops")
    parser.add_argument("--stable-seconds", type=float, default=0.5, help="the watch's stable_seconds")
    parser.add_argument("--decode-runs", type=int, default=5, help="runs per decode path (median)")
    parser.add_argument(
        "--quiet",
        type=float,
        default=CLEAN_OTHER_SHARE,
        help="before each stretch, wait (≤10 min) until others use less than this CPU share; 1 = never",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tuwen-bench-"))
    result = Result(scans=args.n, stable_seconds=args.stable_seconds)
    try:
        paths = render_scans(work / "scans", args.n)
        engine = OcrEngine()
        # The service warms its engine before /health turns 200; do the same so neither side pays it.
        engine.read(Image.open(paths[0]).convert("RGB"))
        wait_quiet(args.quiet)
        bare = bare_loop(engine, paths)
        for index in range(args.rounds):
            current = Round(bare_before=bare)
            wait_quiet(args.quiet)
            service_run(
                paths, work / f"round-{index + 1}", args.stable_seconds, max(120.0, bare.wall_s * 5), current
            )
            wait_quiet(args.quiet)
            current.bare_after = bare = bare_loop(engine, paths)
            result.rounds.append(current)
        engine.close()
        decode_run(work, args.decode_runs, result)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(as_json(result) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
