"""Trust checks on a real `tuwen serve`: touched scans stay one record; `tuwen ask` beside the service.

    .venv/bin/python bench/trust.py [--scans 100]

1. `--scans` rendered scans are dropped into a watched folder and answered; every sidecar is hashed; every
   scan is then touched (mtime moved, as a sync tool or a backup does), the folder rescanned, and the
   sidecars hashed again. Reports how many sidecars changed (target 0) and how many jobs exist (target one
   per scan).
2. `tuwen ask` is run five times beside the running service (it hands its job to the service) and timed.

Prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.render import render_text_image  # noqa: E402
from bench.serving import free_port, running_service, wait_healthy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecars(inbox: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(inbox.iterdir()) if p.suffix in (".json", ".xmp")}


def _jobs(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tuwen-trust-") as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        port = free_port()
        config = root / "config.toml"
        config.write_text(
            f'[storage]\ndata_dir = "data"\n[http]\nport = {port}\n'
            f'[[watch]]\npath = "inbox"\nname = "inbox"\nstable_seconds = 0.5\nrescan_seconds = 2\n',
            encoding="utf-8",
        )
        for index in range(args.scans):
            image = render_text_image([f"档案 第{index}号", f"Box {index}"], size=(600, 240), font_size=36)
            image.save(inbox / f"scan{index:03d}.png")
        with running_service(config, root / "serve.log") as process:
            wait_healthy(port, process, root / "serve.log")
            started = time.monotonic()
            while len(_sidecars(inbox)) < 2 * args.scans:
                if time.monotonic() - started > 900:
                    raise SystemExit("scans were not all answered within 15 minutes")
                time.sleep(0.5)
            answered_in = time.monotonic() - started
            before = _sidecars(inbox)
            jobs_before = _jobs(root / "data" / "tuwen.sqlite3")
            later = time.time() + 60
            for scan in inbox.glob("*.png"):
                os.utime(scan, (later, later))
            time.sleep(8)  # several rescans (rescan_seconds = 2) and native events
            after = _sidecars(inbox)
            jobs_after = _jobs(root / "data" / "tuwen.sqlite3")
            changed = sum(1 for name, digest in before.items() if after.get(name) != digest)
            asks: list[float] = []
            probe = inbox.parent / "ask.png"
            render_text_image(["问一问 beside"], size=(400, 120), font_size=32).save(probe)
            for _ in range(5):
                began = time.monotonic()
                result = subprocess.run(
                    [sys.executable, "-m", "service.cli", "ask", str(probe), "-c", str(config)],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                asks.append(time.monotonic() - began)
                if result.returncode != 0:
                    raise SystemExit(f"tuwen ask failed: {result.stderr[-500:]}")
    print("## Trust checks (`bench/trust.py`)\n")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, embedded OCR.\n")
    print("| measure | result |")
    print("|---|---|")
    print(f"| scans answered | {args.scans} in {answered_in:.1f} s |")
    print(f"| sidecars changed after touching every scan | {changed} of {len(before)} |")
    print(f"| jobs before / after touching | {jobs_before} / {jobs_after} |")
    print(
        f"| `tuwen ask` beside the running service (5 runs) | median {statistics.median(asks):.2f} s, "
        f"max {max(asks):.2f} s (process start, hand-off, answer) |"
    )
    return 0 if changed == 0 and jobs_after == jobs_before == args.scans else 1


if __name__ == "__main__":
    sys.exit(main())
