"""OCR reading benchmark on a held-in corpus: the old reading order (`order_lines`) against `read_page`.

Not a test: it takes minutes and its seconds depend on the machine. The corpus is rendered here, so every
character and its place in the reading order is known:

- **horizontal**: the mixed Chinese/English 1000×700 scans of `bench/ingest.py` (horizontal print);
- **vertical**: 民国-style 繁体 notices set in columns, some with a horizontal title and a red seal;
- **table**: 成绩单 score tables, ruled and unruled, with empty cells;
- **rotated**: pages of the three kinds above turned 90°, 180° and 270°;
- **faded**: horizontal scans with one line faded, blurred and grained (for the review flag).
- **pdf**: a scanner's PDF (rendered pages saved by PIL at 150 dpi, no text layer), decoded the way the
  worker does (`service.images.decode_image`: pypdfium2 at the resolution `[images] max_edge` needs);
- **heic**: phone photos of scans as HEIC, stored sideways with an EXIF orientation tag (pillow-heif),
  decoded the way the worker does (turned upright from the tag).
A PDF page with a real text layer is not measured: its text is taken as it is, with no reading at all.

Per page and reader: CER (edit distance over the reference, whitespace ignored, in reading order), reading-
order errors (reference lines that must move to restore the order: count minus the longest increasing run
of their positions in the output), for tables the cells not in their reference row and column, and the
seconds (wall and process CPU, median over `--rounds`, old and new alternating page by page). For the new
reader also: rotation right or wrong, pages marked needs_review, pages read twice. Other programs' CPU use
is measured during each run, as in `bench/ingest.py`, since the machine is shared.

Usage: `.venv/bin/python bench/ocr_corpus.py [--rounds 3] [--kinds horizontal,table] [--json] [--save DIR]`.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import random
import statistics
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/ocr_corpus.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from bench.ingest import Meter, scan_lines  # noqa: E402
from bench.render import (  # noqa: E402
    fade_region,
    render_table_image,
    render_text_image,
    render_vertical_page,
)
from service.backends.ocr_backend import OcrEngine, order_lines  # noqa: E402
from service.config import ImagesConfig  # noqa: E402
from service.images import decode_image  # noqa: E402


@dataclass
class Sample:
    """One page: its image, reference lines in reading order, table rows if a table, expected rotation."""

    kind: str
    name: str
    image: Image.Image
    units: list[str]
    table: list[list[str]] | None = None
    rotation: int = 0


@dataclass
class Reading:
    """One reader's result on one page."""

    cer: float
    order_errors: int
    units_found: int
    cell_errors: int = 0
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rotation_ok: bool | None = None
    needs_review: bool = False
    min_confidence: float = 1.0
    reads: int = 1
    text: str = ""


# -- the corpus -----------------------------------------------------------------------------------------

NOTICES: list[tuple[str | None, list[str]]] = [
    (
        "臺北縣政府佈告",
        [
            "為佈告事照得本縣近來盜匪橫行",
            "凡我居民務須互相守望",
            "如有形跡可疑之人即行報告",
            "切切此佈",
        ],
    ),
    (
        "上海市警察局通告",
        [
            "查本市各區戶口業經調查完竣",
            "所有遷入遷出人口應即申報",
            "逾期不報者依法處罰",
            "特此通告",
        ],
    ),
    (
        "廣州市教育局公告",
        [
            "本學期各校定於九月一日開學",
            "新生應於八月底前辦理註冊",
            "學費照舊章繳納",
            "此告",
        ],
    ),
    (
        None,
        [
            "民國二十五年三月十二日記",
            "是日晴天氣和暖",
            "午後偕友人遊西湖",
            "歸途購書兩冊",
        ],
    ),
    (
        None,
        [
            "敬啟者前承惠賜書籍數種",
            "拜領之餘感激莫名",
            "茲奉上拙作一冊",
            "伏乞指正為荷",
        ],
    ),
    (
        "南京市政府訓令",
        [
            "令各局處知悉",
            "奉行政院令開",
            "嗣後公文一律用國曆",
            "仰即遵照辦理",
        ],
    ),
]
SIGNATURES = [
    "中華民國三十七年五月　　縣長李德明",
    "中華民國三十六年十月　　局長王志遠",
    "中華民國二十年一月　　市長張文華",
]
SEALS = ["臺北縣印", "上海市印", "教育局印"]
NAMES = ["张三", "李四", "王五", "赵六", "陈七", "刘八"]
SUBJECTS = ["语文", "数学", "英语", "物理", "化学"]


def horizontal_samples() -> list[Sample]:
    """Eight 1000×700 scans of `bench/ingest.py`, the baseline for the 1.2× speed budget."""
    return [
        Sample("horizontal", f"h{i}", render_text_image(scan_lines(i)), scan_lines(i)) for i in range(1, 9)
    ]


def vertical_samples() -> list[Sample]:
    """Six notices and letters in columns; the first three with a title, a signature and a seal."""
    samples = []
    for i, (title, body) in enumerate(NOTICES):
        columns = [*body, SIGNATURES[i]] if i < 3 else body
        image = render_vertical_page(columns, title=title, stamp=SEALS[i] if i < 3 else None)
        units = ([title] if title else []) + [c.replace("\u3000", "") for c in columns]
        units += [SEALS[i]] if i < 3 else []
        samples.append(Sample("vertical", f"v{i}", image, units))
    return samples


def table_samples() -> list[Sample]:
    """Six score tables (3–5 subjects, 3–6 pupils, one or two empty cells); every other one unruled."""
    rng = random.Random(7)
    samples = []
    for i in range(6):
        subjects = SUBJECTS[: 3 + i % 3]
        rows = [["姓名", *subjects]]
        for name in NAMES[: 3 + i % 4]:
            rows.append([name, *(str(rng.randint(55, 99)) for _ in subjects)])
        for _ in range(1 + i % 2):
            rows[rng.randint(1, len(rows) - 1)][rng.randint(1, len(subjects))] = ""
        title = f"学生成绩单 {1985 + i}年"
        image = render_table_image(rows, title=title, grid=i % 2 == 0)
        samples.append(Sample("table", f"t{i}", image, [title, *("".join(r) for r in rows)], rows))
    return samples


def rotated_samples() -> list[Sample]:
    """Two pages of each kind above turned 90°, 180° and 270° clockwise (18 pages)."""
    samples = []
    sources = horizontal_samples()[:2] + vertical_samples()[:2] + table_samples()[:2]
    for source in sources:
        for degrees in (90, 180, 270):
            image = source.image.rotate(-degrees, expand=True)
            name = f"{source.name}-r{degrees}"
            samples.append(Sample("rotated", name, image, source.units, source.table, (360 - degrees) % 360))
    return samples


# Two strengths of one badly scanned line (36 px text): faint and grainy, and fainter, blurred and grainier.
FADES = [(0.8, 1.6, 50), (1.0, 1.8, 60)]


def faded_samples() -> list[Sample]:
    """Eight scans with their fourth line faded, blurred and grained (four per strength in `FADES`)."""
    samples = []
    for i in range(8):
        lines = scan_lines(20 + i)
        contrast, blur, noise = FADES[i // 4]
        band = (20, 36 + 3 * 65 - 8, 980, 36 + 3 * 65 + 56)  # render_text_image: margin 36, step 65
        image = fade_region(render_text_image(lines), band, contrast=contrast, blur=blur, noise=noise, seed=i)
        samples.append(Sample("faded", f"f{i}", image, lines))
    return samples


def _decoded(data: bytes, suffix: str) -> list[Image.Image]:
    """Pages of a file as the worker sees them (written to a temporary file, decoded by service.images)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"page{suffix}"
        path.write_bytes(data)
        return decode_image(path, ImagesConfig(), "bench").pages


def pdf_samples() -> list[Sample]:
    """Four horizontal scans in one scanner PDF (A4 pages at 150 dpi), decoded page by page."""
    lines = [scan_lines(40 + i) for i in range(4)]
    images = [render_text_image(page, size=(1240, 1754), font_size=56) for page in lines]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:], resolution=150)
    pages = _decoded(buffer.getvalue(), ".pdf")
    return [Sample("pdf", f"p{i}", page, lines[i]) for i, page in enumerate(pages)]


def heic_samples() -> list[Sample]:
    """Four phone photos of scans as HEIC, stored turned 90° with orientation 6 ("turn 90° clockwise")."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    samples = []
    for i in range(4):
        lines = scan_lines(60 + i)
        sideways = render_text_image(lines).rotate(90, expand=True)
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        sideways.save(buffer, "HEIF", exif=exif.tobytes(), quality=90)
        (page,) = _decoded(buffer.getvalue(), ".heic")
        samples.append(Sample("heic", f"e{i}", page, lines))
    return samples


KINDS: dict[str, Callable[[], list[Sample]]] = {
    "horizontal": horizontal_samples,
    "vertical": vertical_samples,
    "table": table_samples,
    "rotated": rotated_samples,
    "faded": faded_samples,
    "pdf": pdf_samples,
    "heic": heic_samples,
}


# -- scoring ----------------------------------------------------------------------------------------------


def squash(text: str) -> str:
    return "".join(text.split())


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def unit_positions(units: list[str], text: str) -> list[int]:
    """Where each reference line starts in the (whitespace-free) output; -1 when it is not found."""
    out = squash(text)
    positions = []
    for unit in map(squash, units):
        match = difflib.SequenceMatcher(None, out, unit, autojunk=False).find_longest_match()
        found = match.size >= max(2, len(unit) // 2)
        positions.append(match.a - match.b if found else -1)
    return positions


def order_errors(positions: list[int]) -> int:
    """Lines found minus the longest run of them in increasing position."""
    found = [p for p in positions if p >= 0]
    tails: list[int] = []
    for p in found:
        i = bisect_left(tails, p)
        tails[i : i + 1] = [p]
    return len(found) - len(tails)


def cell_errors(table: list[list[str]], text: str, separator: str | None) -> int:
    """Reference cells not at their row and column (rows found by the pupil's name in the first cell)."""
    rows = {}
    for line in text.split("\n"):
        cells = [c.strip() for c in (line.split(separator) if separator else line.split())]
        if cells:
            rows.setdefault(cells[0], cells)
    errors = 0
    for reference in table:
        got = rows.get(reference[0], [])
        errors += sum(1 for c, cell in enumerate(reference) if (got[c] if c < len(got) else "") != cell)
    return errors


def score(sample: Sample, text: str) -> Reading:
    reference = squash("".join(sample.units))
    positions = unit_positions(sample.units, text)
    reading = Reading(
        cer=edit_distance(reference, squash(text)) / len(reference),
        order_errors=order_errors(positions),
        units_found=sum(1 for p in positions if p >= 0),
        text=text,
    )
    return reading


# -- running ----------------------------------------------------------------------------------------------


def old_read(engine: OcrEngine, image: Image.Image) -> str:
    """The reader before this change: RapidOCR's public call, lines by `order_lines`."""
    result = engine._get()(image)
    if result.boxes is None or not result.txts:
        return ""
    return "\n".join(order_lines(result.boxes.tolist(), list(result.txts)))


def run(samples: list[Sample], rounds: int) -> tuple[list[tuple[Sample, Reading, Reading]], list[float]]:
    engine = OcrEngine()
    old_read(engine, samples[0].image)  # build the sessions and warm every model once
    engine.read_page(samples[0].image)
    results: list[tuple[Sample, Reading, Reading]] = []
    other_shares: list[float] = []
    for sample in samples:
        old = new = None
        for round_number in range(rounds):
            for which in ("old", "new") if round_number % 2 == 0 else ("new", "old"):
                meter = Meter()
                wall, cpu = time.perf_counter(), time.process_time()
                if which == "old":
                    text = old_read(engine, sample.image)
                else:
                    page = engine.read_page(sample.image)
                    text = page.text
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                other_shares.append(meter.stop().other_share)
                if which == "old":
                    old = old or score(sample, text)
                    old.wall_s.append(wall)
                    old.cpu_s.append(cpu)
                else:
                    if new is None:
                        new = score(sample, text)
                        new.rotation_ok = page.rotation == sample.rotation
                        new.needs_review, new.reads = page.needs_review, page.reads
                        new.min_confidence = min((line.confidence for line in page.lines), default=1.0)
                    new.wall_s.append(wall)
                    new.cpu_s.append(cpu)
        assert old is not None and new is not None
        if sample.table is not None:
            old.cell_errors = cell_errors(sample.table, old.text, None)
            new.cell_errors = cell_errors(sample.table, new.text, "\t")
        results.append((sample, old, new))
    return results, other_shares


# -- reporting --------------------------------------------------------------------------------------------


def summarise(results: list[tuple[Sample, Reading, Reading]]) -> dict[str, dict[str, float]]:
    """Per kind: mean CER, summed order and cell errors, mean per-page median seconds, new-reader flags."""
    kinds: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(s.kind for s, _, _ in results):
        rows = [(s, o, n) for s, o, n in results if s.kind == kind]
        cells = sum(len(s.table) * len(s.table[0]) for s, _, _ in rows if s.table)
        kinds[kind] = {
            "pages": len(rows),
            "units": sum(len(s.units) for s, _, _ in rows),
            "cer_old": statistics.fmean(o.cer for _, o, _ in rows),
            "cer_new": statistics.fmean(n.cer for _, _, n in rows),
            "order_old": sum(o.order_errors for _, o, _ in rows),
            "order_new": sum(n.order_errors for _, _, n in rows),
            "cells": cells,
            "cells_old": sum(o.cell_errors for _, o, _ in rows),
            "cells_new": sum(n.cell_errors for _, _, n in rows),
            "wall_old": statistics.fmean(statistics.median(o.wall_s) for _, o, _ in rows),
            "wall_new": statistics.fmean(statistics.median(n.wall_s) for _, _, n in rows),
            "cpu_old": statistics.fmean(statistics.median(o.cpu_s) for _, o, _ in rows),
            "cpu_new": statistics.fmean(statistics.median(n.cpu_s) for _, _, n in rows),
            "rotation_ok": sum(1 for _, _, n in rows if n.rotation_ok),
            "needs_review": sum(1 for _, _, n in rows if n.needs_review),
            "read_twice": sum(1 for _, _, n in rows if n.reads > 1),
            "with_errors": sum(1 for _, _, n in rows if n.cer > 0 or n.cell_errors),
            "with_errors_flagged": sum(1 for _, _, n in rows if (n.cer or n.cell_errors) and n.needs_review),
        }
        for t in REVIEW_THRESHOLDS:
            kinds[kind][f"flagged_at_{t}"] = sum(1 for _, _, n in rows if n.min_confidence < t)
    return kinds


REVIEW_THRESHOLDS = (0.9, 0.93, 0.95, 0.97)


def markdown(kinds: dict[str, dict[str, float]], other_shares: list[float], rounds: int) -> str:
    lines = [
        "| kind | pages | CER old → new | order errors old → new (of lines) | table cells wrong old → new |"
        " s/page wall old → new | s/page CPU old → new | rotation right | needs_review | read twice |",
        "|---|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    for kind, k in kinds.items():
        cells = f"{k['cells_old']:.0f} → {k['cells_new']:.0f} (of {k['cells']:.0f})" if k["cells"] else "–"
        lines.append(
            f"| {kind} | {k['pages']:.0f} | {k['cer_old']:.3f} → {k['cer_new']:.3f} "
            f"| {k['order_old']:.0f} → {k['order_new']:.0f} (of {k['units']:.0f}) | {cells} "
            f"| {k['wall_old']:.3f} → {k['wall_new']:.3f} | {k['cpu_old']:.3f} → {k['cpu_new']:.3f} "
            f"| {k['rotation_ok']:.0f}/{k['pages']:.0f} | {k['needs_review']:.0f} | {k['read_twice']:.0f} |"
        )
    lines += [
        "",
        "| kind | pages with any error (CER > 0 or a cell wrong) | of those flagged needs_review |"
        + "".join(f" pages with a line < {t} |" for t in REVIEW_THRESHOLDS),
        "|---|---:|---:|" + "---:|" * len(REVIEW_THRESHOLDS),
    ]
    for kind, k in kinds.items():
        flagged = "".join(f" {k[f'flagged_at_{t}']:.0f} |" for t in REVIEW_THRESHOLDS)
        lines.append(f"| {kind} | {k['with_errors']:.0f} | {k['with_errors_flagged']:.0f} |{flagged}")
    if "horizontal" in kinds:
        h = kinds["horizontal"]
        lines.append("")
        lines.append(
            f"Horizontal print, new/old seconds per page: wall {h['wall_new'] / h['wall_old']:.3f}×, "
            f"CPU {h['cpu_new'] / h['cpu_old']:.3f}× (budget 1.2×); median of {rounds} rounds per page."
        )
    busy = sorted(other_shares)
    lines.append(
        f"Other programs' share of the CPUs during the timed reads: median {statistics.median(busy):.0%}, "
        f"max {busy[-1]:.0%}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed reads per page and reader (median)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds to run")
    parser.add_argument("--json", action="store_true", help="print JSON (per page and per kind)")
    parser.add_argument("--save", type=Path, help="write the corpus images and both readings here")
    args = parser.parse_args(argv)
    samples = [s for kind in args.kinds.split(",") for s in KINDS[kind]()]
    results, shares = run(samples, args.rounds)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for sample, old, new in results:
            sample.image.save(args.save / f"{sample.name}.png")
            (args.save / f"{sample.name}.old.txt").write_text(old.text, encoding="utf-8")
            (args.save / f"{sample.name}.new.txt").write_text(new.text, encoding="utf-8")
    kinds = summarise(results)
    if args.json:
        pages = [{"kind": s.kind, "name": s.name, "old": asdict(o), "new": asdict(n)} for s, o, n in results]
        report = {"kinds": kinds, "pages": pages, "other_share": shares}
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(markdown(kinds, shares, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
