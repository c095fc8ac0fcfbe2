"""The per-watch CSV catalogue: Excel-friendly encoding, safe concurrent appends, exact round trips."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.sidecars.catalogue import COLUMNS, CatalogueRow, append_catalogue_row, read_catalogue
from service.sidecars.sidecar import SidecarRecord

BOM = "\ufeff".encode()
TIME = datetime(2025, 3, 1, 9, 30, 15, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def row(file: str, answer: str | None = "一家五口 / a family of five", **changes: object) -> CatalogueRow:
    values: dict[str, object] = {
        "file": file,
        "time": TIME,
        "status": "done",
        "question": "请描述 / describe",
        "answer": answer,
        "ocr_text": "光荣之家",
    }
    values.update(changes)
    return CatalogueRow(**values)  # type: ignore[arg-type]


def raw_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


def test_bom_and_header_once_then_two_rows(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tuwen-catalogue.csv"
    append_catalogue_row(path, row("a.jpg"))
    append_catalogue_row(path, row("b.jpg", status="failed", answer=None, error="损坏 / corrupt"))
    data = path.read_bytes()
    assert data.startswith(BOM) and data.count(BOM) == 1
    rows = raw_rows(path)
    assert rows[0] == list(COLUMNS) and [r[0] for r in rows].count("file") == 1
    assert rows[1] == [
        "a.jpg",
        "2025-03-01T09:30:15+00:00",
        "done",
        "请描述 / describe",
        "一家五口 / a family of five",
        "光荣之家",
        "",
        "",
    ]
    assert rows[2][2] == "failed" and rows[2][4] == "" and rows[2][6] == "损坏 / corrupt"
    assert len(rows) == 3


def test_newlines_commas_and_quotes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    tricky = 'line one, with comma\nline "two"\r\nline 三；"end"'
    append_catalogue_row(path, row('x,y "z".jpg', answer=tricky, correction="改正\n第二行"))
    append_catalogue_row(path, row("next.jpg"))
    rows = read_catalogue(path)
    assert [r["file"] for r in rows] == ['x,y "z".jpg', "next.jpg"]
    assert rows[0]["answer"] == tricky and rows[0]["correction"] == "改正\n第二行"


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd"])
def test_formula_like_cells_are_neutralised(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    append_catalogue_row(path, row("a.jpg", answer=text))
    assert read_catalogue(path)[0]["answer"] == "'" + text


def test_control_characters_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    append_catalogue_row(path, row("a.jpg", answer="a\x00b\x07c\td"))
    assert read_catalogue(path)[0]["answer"] == "abc\td"


def test_from_record_maps_every_column() -> None:
    record = SidecarRecord(
        status="failed",
        file_name="scan.jpg",
        question="问",
        answer=None,
        ocr_text=None,
        sha256="00",
        model="m",
        model_version="v",
        backend="ocr",
        created_at=TIME,
        width=None,
        height=None,
        error="错 / wrong",
        job_id="j",
        prompt_hash="p",
        correction="改",
    )
    assert CatalogueRow.from_record(record, file="2025/scan.jpg") == CatalogueRow(
        file="2025/scan.jpg",
        time=TIME,
        status="failed",
        question="问",
        answer=None,
        ocr_text=None,
        error="错 / wrong",
        correction="改",
    )


def test_a_torn_last_row_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    append_catalogue_row(path, row("a.jpg"))
    with path.open("ab") as handle:
        handle.write("b.jpg,2025-03-01T09:30:15+00:00,done,问".encode())  # a crash mid-row
    append_catalogue_row(path, row("c.jpg"))
    rows = raw_rows(path)
    assert rows[1][0] == "a.jpg" and rows[2][0] == "b.jpg"
    assert rows[3] == row("c.jpg").cells()


def test_concurrent_threads_lose_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"

    def worker(n: int) -> None:
        for i in range(25):
            append_catalogue_row(path, row(f"t{n}-{i}.jpg", answer=f'答案 {n}-{i}\n第二行, "引号"'))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = read_catalogue(path)
    assert len(rows) == 200
    assert {r["file"]: r["answer"] for r in rows} == {
        f"t{n}-{i}.jpg": f'答案 {n}-{i}\n第二行, "引号"' for n in range(8) for i in range(25)
    }
    assert path.read_bytes().count(BOM) == 1


def test_concurrent_processes_lose_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    script = (
        "import sys\nfrom datetime import UTC, datetime\nfrom pathlib import Path\n"
        "from service.sidecars.catalogue import CatalogueRow, append_catalogue_row\n"
        "for i in range(60):\n"
        "    append_catalogue_row(Path(sys.argv[1]), CatalogueRow(f'p{sys.argv[2]}-{i}.jpg',"
        " datetime.now(UTC), 'done', '问', '答\\n二'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(n)], cwd=REPO) for n in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    rows = read_catalogue(path)
    assert sorted(r["file"] for r in rows) == sorted(f"p{n}-{i}.jpg" for n in range(3) for i in range(60))
    assert {r["answer"] for r in rows} == {"答\n二"}
    assert path.read_bytes().count(BOM) == 1


def test_preformatted_time_is_written_as_given(tmp_path: Path) -> None:
    path = tmp_path / "tuwen-catalogue.csv"
    append_catalogue_row(path, row("a.jpg", time="2025-03-01T17:30:15+08:00"))
    assert read_catalogue(path)[0]["time"] == "2025-03-01T17:30:15+08:00"
