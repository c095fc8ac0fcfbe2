"""PDFs through `decode_image` on real files: pages rendered at the size needed, the text layer, page limits,
pdfium objects closed, and every broken, encrypted or empty PDF turned into a bilingual catalogue message.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest

from service import pdf as pdf_module
from service.config import ImagesConfig
from service.errors import PermanentError
from service.images import decode_image, dropped_pages_note, page_ranges
from tests import documents
from tests.test_images import BLUE, GREEN, RED, WHITE, assert_bilingual, centre, close_to


@pytest.fixture
def rendered_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every bitmap pdfium renders: the proof that nothing is rendered big and shrunk."""
    seen: list[tuple[int, int]] = []
    original = pdfium.PdfPage.render

    def recording(self: pdfium.PdfPage, *args: Any, **kwargs: Any) -> pdfium.PdfBitmap:
        bitmap = original(self, *args, **kwargs)
        seen.append((bitmap.width, bitmap.height))
        return bitmap

    monkeypatch.setattr(pdfium.PdfPage, "render", recording)
    return seen


def test_every_page_comes_back_in_order_as_rgb(tmp_path: Path) -> None:
    path = documents.colour_pdf(tmp_path / "three.pdf", [RED, GREEN, BLUE])
    decoded = decode_image(path, ImagesConfig())
    assert decoded.format == "PDF"
    assert [page.mode for page in decoded.pages] == ["RGB"] * 3
    colours = zip([centre(page) for page in decoded.pages], [RED, GREEN, BLUE], strict=True)
    assert [close_to(found, wanted) for found, wanted in colours] == [True] * 3
    assert (decoded.width, decoded.height) == (612, 792)  # points
    assert (decoded.source_pages, decoded.dropped_pages, decoded.text_layer) == (3, [], [None] * 3)


@pytest.mark.parametrize(
    ("size_pt", "max_edge", "expected"),
    [
        pytest.param((612, 792), 1024, (792, 1024), id="letter-portrait"),
        pytest.param((842, 595), 1024, (1024, 724), id="a4-landscape"),
        pytest.param((216, 360), 1024, (615, 1024), id="index-card-rendered-up"),
        pytest.param((2384, 3370), 768, (544, 768), id="a0-poster-rendered-down"),
    ],
)
def test_each_page_is_rendered_once_with_its_long_edge_at_max_edge(
    tmp_path: Path,
    rendered_sizes: list[tuple[int, int]],
    size_pt: tuple[int, int],
    max_edge: int,
    expected: tuple[int, int],
) -> None:
    path = documents.colour_pdf(tmp_path / "page.pdf", [WHITE], size_pt)
    decoded = decode_image(path, ImagesConfig(max_edge=max_edge))
    # The bitmap pdfium drew is the page itself: no 600 dpi rendering shrunk afterwards.
    assert rendered_sizes == [decoded.pages[0].size] == [expected]


def test_pages_of_mixed_orientation_keep_theirs(tmp_path: Path) -> None:
    path = documents.text_pdf(tmp_path / "mixed.pdf", [["竖版"], ["横版"]], landscape_pages=(2,))
    portrait, landscape = decode_image(path, ImagesConfig(max_edge=1000)).pages
    assert portrait.size == (708, 1000) and landscape.size == (1000, 708)


def test_max_pixels_is_checked_before_rendering(
    tmp_path: Path, rendered_sizes: list[tuple[int, int]]
) -> None:
    path = documents.colour_pdf(tmp_path / "square.pdf", [WHITE], (1000, 1000))
    with pytest.raises(PermanentError) as caught:
        decode_image(path, ImagesConfig(max_edge=2048, max_pixels=1_000_000))
    assert caught.value.code == "image_bomb" and "4194304" in caught.value.message.en
    assert rendered_sizes == []


def test_max_pages_keeps_the_first_pages_and_names_the_rest(
    tmp_path: Path, rendered_sizes: list[tuple[int, int]]
) -> None:
    path = documents.colour_pdf(tmp_path / "five.pdf", [RED, GREEN, BLUE, WHITE, RED])
    decoded = decode_image(path, ImagesConfig(max_pages=2))
    colours = [centre(page) for page in decoded.pages]
    assert [close_to(found, wanted) for found, wanted in zip(colours, [RED, GREEN], strict=True)] == [
        True
    ] * 2
    assert (decoded.source_pages, decoded.dropped_pages) == (5, [3, 4, 5])
    assert decoded.text_layer == [None, None]
    assert len(rendered_sizes) == 2  # pages left out are not rendered at all
    note = dropped_pages_note(decoded)
    assert note is not None and note.code == "pages_dropped"
    assert "only the first 2" in note.en and "pages 3-5" in note.en and "第 3-5 页" in note.zh


@pytest.mark.parametrize(
    ("numbers", "text"),
    [([3, 4, 5], "3-5"), ([2, 4, 5, 6, 9], "2, 4-6, 9"), ([7], "7"), ([], "")],
)
def test_page_ranges_are_short(numbers: list[int], text: str) -> None:
    assert page_ranges(numbers) == text


# --- the text layer -------------------------------------------------------------------------------------


def test_a_born_digital_pdf_gives_its_own_text_per_page(tmp_path: Path) -> None:
    pages = [["民国三十年 地契一份", "Land deed, 1941"], ["第二页：四至界址", "Page two: the boundaries"]]
    decoded = decode_image(documents.text_pdf(tmp_path / "deed.pdf", pages), ImagesConfig())
    assert decoded.text_layer == ["\n".join(lines) for lines in pages]
    assert len(decoded.pages) == 2  # the pixels are still there for the model


def test_an_ocr_layer_over_a_scan_is_used(tmp_path: Path) -> None:
    lines = ["县档案馆藏 民国时期土地登记簿", "第一册 第十二页", "Land register, vol. 1, p. 12", "户主 张三"]
    path = documents.scan_with_text_pdf(tmp_path / "ocred.pdf", lines, invisible_over_page=True)
    (text,) = decode_image(path, ImagesConfig()).text_layer
    assert text is not None and [line in text for line in lines] == [True] * 4


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda tmp: documents.scan_pdf(tmp / "scan.pdf", [["扫描件"]]), id="scan-without-text"),
        pytest.param(
            lambda tmp: documents.scan_with_text_pdf(
                tmp / "stamped.pdf", ["Scanned by the county archive, 2024"], invisible_over_page=False
            ),
            id="scan-with-a-stamped-line",
        ),
        pytest.param(lambda tmp: documents.text_pdf(tmp / "short.pdf", [["第三章"]]), id="three-characters"),
    ],
)
def test_pages_without_real_text_go_to_ocr(tmp_path: Path, build: Any) -> None:
    assert decode_image(build(tmp_path), ImagesConfig()).text_layer == [None]


@pytest.mark.parametrize(
    ("text", "real"),
    [
        pytest.param("民国三十年地契一份，四至界址分明", True, id="chinese"),
        pytest.param("Land deed of 1941, county archive", True, id="latin"),
        pytest.param("\ufffd" * 30, False, id="no-unicode-map"),
        pytest.param("\ue000\ue001\ue002" * 10, False, id="private-use-glyphs"),
        pytest.param("Land deed of 1941" + "\ufffd" * 4, False, id="one-in-five-unmapped"),
        pytest.param("  \n\t  ", False, id="blank"),
    ],
)
def test_what_counts_as_real_text(text: str, real: bool) -> None:
    assert pdf_module.looks_like_text(text) is real


def test_page_text_is_cleaned_of_pdfium_line_ends_and_controls() -> None:
    assert pdf_module.clean_text("第一行  \r\n第二\x02行\r\n\r\n") == "第一行\n第二行"


# --- pdfium objects and threads ----------------------------------------------------------------------------


def test_every_pdfium_object_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []  # strong references: a closed object here was closed by us, not by the GC

    class RecordingDocument(pdfium.PdfDocument):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def __getitem__(self, index: int) -> pdfium.PdfPage:
            page = super().__getitem__(index)
            made.append(page)
            return page

    for name in ("render", "get_textpage"):
        original = getattr(pdfium.PdfPage, name)

        def recording(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            made.append(_original(self, *args, **kwargs))
            return made[-1]

        monkeypatch.setattr(pdfium.PdfPage, name, recording)
    monkeypatch.setattr(pdf_module.pdfium, "PdfDocument", RecordingDocument)
    decode_image(
        documents.text_pdf(tmp_path / "two.pdf", [["Page one, with enough text"], ["Two"]]), ImagesConfig()
    )
    kinds = sorted(type(obj).__name__ for obj in made)
    assert kinds == ["PdfBitmap"] * 2 + ["PdfPage"] * 2 + ["PdfTextPage"] * 2 + ["RecordingDocument"]
    assert [obj.raw for obj in made] == [None] * len(made)


def test_pdfs_decode_correctly_from_several_threads_at_once(tmp_path: Path) -> None:
    paths = [documents.text_pdf(tmp_path / f"{n}.pdf", [[f"Archive document number {n}"]]) for n in range(4)]
    texts: dict[int, str | None] = {}

    def decode(number: int) -> None:
        texts[number] = decode_image(paths[number], ImagesConfig()).text_layer[0]

    threads = [threading.Thread(target=decode, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert texts == {n: f"Archive document number {n}" for n in range(4)}


# --- failures --------------------------------------------------------------------------------------------


def _cut(build: Any, keep: Any) -> Any:
    def cut(tmp: Path) -> Path:
        path = build(tmp)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
        return path

    return cut


def _deed(tmp: Path) -> Path:
    return documents.text_pdf(tmp / "deed.pdf", [["Land deed of 1941"], ["Page two"]])


def _scan(tmp: Path) -> Path:
    return documents.scan_pdf(tmp / "scan.pdf", [["第一页"], ["第二页"], ["第三页"]])


def _header_then_garbage(tmp: Path) -> Path:
    (tmp / "fake.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n")
    return tmp / "fake.pdf"


@pytest.mark.parametrize(
    ("build", "code"),
    [
        pytest.param(
            lambda tmp: documents.encrypted_pdf(tmp / "locked.pdf", user_password="open-sesame"),
            "pdf_encrypted",
            id="needs-a-password",
        ),
        pytest.param(_cut(_deed, lambda n: n // 2), "pdf_broken", id="text-pdf-cut-in-half"),
        pytest.param(_cut(_scan, lambda n: n * 3 // 4), "pdf_broken", id="scan-pdf-three-quarters"),
        pytest.param(_cut(_deed, lambda n: n - 40), "pdf_broken", id="last-40-bytes-missing"),
        pytest.param(_cut(_deed, lambda n: 100), "pdf_broken", id="only-the-header"),
        pytest.param(_header_then_garbage, "pdf_broken", id="pdf-header-then-garbage"),
        pytest.param(lambda tmp: documents.empty_pdf(tmp / "empty.pdf"), "pdf_empty", id="zero-pages"),
    ],
)
def test_bad_pdfs_give_a_bilingual_permanent_error(tmp_path: Path, build: Any, code: str) -> None:
    with pytest.raises(PermanentError) as caught:
        decode_image(build(tmp_path), ImagesConfig())
    assert caught.value.code == code
    assert_bilingual(caught.value)


def test_a_pdf_with_only_an_owner_password_reads_normally(tmp_path: Path) -> None:
    path = documents.encrypted_pdf(tmp_path / "restricted.pdf", user_password=None)
    assert decode_image(path, ImagesConfig()).text_layer == [documents.SECRET]


def test_pdfiums_stale_error_code_does_not_leak_into_the_next_file(tmp_path: Path) -> None:
    # pdfium leaves its last error alone when it refuses a PDF without pages: after a password-protected
    # file, an empty one must still be called empty, not password-protected.
    locked = documents.encrypted_pdf(tmp_path / "locked.pdf", user_password="pw")
    empty = documents.empty_pdf(tmp_path / "empty.pdf")
    codes = []
    for path in (locked, empty, locked, empty):
        with pytest.raises(PermanentError) as caught:
            decode_image(path, ImagesConfig())
        codes.append(caught.value.code)
    assert codes == ["pdf_encrypted", "pdf_empty"] * 2
