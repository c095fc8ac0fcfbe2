"""A job's own page, `/jobs/{id}`, and the API behind it (`GET /api/jobs/{id}` and its page images
`GET /api/jobs/{id}/pages/{n}`), on a live service with the real OCR backend: the page draws one box per
OCR line over the page image, scaled to the image as shown, and marks the lines read with low confidence;
it lists the sidecars and the conversation, and takes a review and a re-run."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from service.config import Config, HttpConfig, ImagesConfig, OcrConfig, StorageConfig, WatchConfig
from tests import documents
from tests.browser import CHROMIUM, Watched, open_page, scan_png, screenshot
from tests.conftest import InstrumentedBackend, wait_until
from tests.live import LiveService, running_service

KEY = "job-page-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Above what RapidOCR gives the cleanest rendered lines (0.9999+) and below what it gives a few (0.998x), so
# the scan has lines on both sides of the page's review threshold.
THRESHOLD = 0.9999
SCAN_LINES = ["民国地契一份", "Land deed 1930", "第三卷 张氏"]


@dataclass
class Jobs:
    live: LiveService
    client: httpx.Client
    ids: dict[str, int]
    inbox: Path


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def chat(live: LiveService, messages: list[dict[str, Any]]) -> int:
    reply = httpx.post(
        live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": messages},
        headers=AUTH,
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    job = live.app.store.get_by_uid(reply.json()["id"].removeprefix("chatcmpl-"))
    assert job is not None
    return job.id


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Jobs]:
    root = tmp_path_factory.mktemp("job-page")
    inbox = root / "inbox"
    inbox.mkdir()
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
        ocr=OcrConfig(review_confidence=THRESHOLD),
        watch=[WatchConfig(path=inbox, name="archive", stable_seconds=0.3, alto=True)],
    )
    pdf = documents.scan_pdf(root / "letter.pdf", [["第一页 档案", "Page one"], ["第二页 附件", "Page two"]])
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        image = {"type": "image_url", "image_url": {"url": data_url(pdf.read_bytes(), "application/pdf")}}
        ids = {
            "pdf": chat(live, [{"role": "user", "content": [image, {"type": "text", "text": "写了什么？"}]}])
        }
        photo = {
            "type": "image_url",
            "image_url": {"url": data_url(scan_png(["旧照片"])["buffer"], "image/png")},
        }
        ids["follow_up"] = chat(
            live,
            [
                {"role": "user", "content": [photo, {"type": "text", "text": "这是什么？"}]},
                {"role": "assistant", "content": "一张旧照片"},
                {"role": "user", "content": "哪一年的？"},
            ],
        )
        staged = root / "staging.png"
        staged.write_bytes(scan_png(SCAN_LINES)["buffer"])
        shutil.move(staged, inbox / "地契_001.png")
        ids["scan"] = wait_until(  # type: ignore[assignment]
            lambda: next(
                (j.id for j in live.app.store.list_jobs(source="watch") if j.status == "done"), None
            ),
            timeout=60,
        )
        wait_until(lambda: (inbox / "地契_001.png.alto.xml").exists(), timeout=30)
        with httpx.Client(base_url=live.base_url, headers=AUTH, timeout=30) as client:
            yield Jobs(live, client, ids, inbox)


def detail(jobs: Jobs, label: str) -> dict[str, Any]:
    response = jobs.client.get(f"/api/jobs/{jobs.ids[label]}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- the API ------------------------------------------------------------------------------------------------


def test_every_page_of_a_pdf_comes_in_the_pixels_of_its_ocr_boxes(jobs: Jobs) -> None:
    job = detail(jobs, "pdf")
    assert [page["url"] for page in job["pages"]] == [f"/api/jobs/{job['id']}/pages/{n}" for n in (1, 2)]
    shown = []
    for page, ocr in zip(job["pages"], job["ocr_lines"], strict=True):
        response = jobs.client.get(page["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "JPEG" and image.size == (ocr["width"], ocr["height"])
        shown.append(response.content)
    assert shown[0] != shown[1]
    assert ["第一页" in job["ocr_lines"][0]["text"], "第二页" in job["ocr_lines"][1]["text"]] == [True, True]


@pytest.mark.parametrize("number", [0, 3, 99])
def test_a_page_that_does_not_exist_is_404(jobs: Jobs, number: int) -> None:
    response = jobs.client.get(f"/api/jobs/{jobs.ids['pdf']}/pages/{number}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "api_not_found"


def test_a_folder_job_names_its_sidecars_and_others_have_none(jobs: Jobs) -> None:
    scan = detail(jobs, "scan")
    name = jobs.inbox / "地契_001.png"
    assert scan["sidecars"] == [
        {"kind": "json", "path": f"{name}.json", "exists": True},
        {"kind": "xmp", "path": f"{name}.xmp", "exists": True},
        {"kind": "alto", "path": f"{name}.alto.xml", "exists": True},
    ]
    assert detail(jobs, "pdf")["sidecars"] == []
    follow_up = detail(jobs, "follow_up")
    assert follow_up["history"] == [
        {"role": "user", "text": "这是什么？"},
        {"role": "assistant", "text": "一张旧照片"},
    ]
    assert (follow_up["reviewed_by"], follow_up["reviewed_at"]) == (None, None)


def test_the_job_page_and_its_images_need_the_key(jobs: Jobs) -> None:
    page = httpx.get(jobs.live.base_url + f"/jobs/{jobs.ids['scan']}", timeout=10)
    image = httpx.get(jobs.live.base_url + f"/api/jobs/{jobs.ids['scan']}/pages/1", timeout=10)
    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert image.status_code == 401 and image.json()["error"]["code"] == "api_unauthorized"


# -- the page -----------------------------------------------------------------------------------------------

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=30_000)
browser_only = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture
def page_of(browser: Any, jobs: Jobs) -> Iterator[Callable[[str], Any]]:
    """Open a job's page in a logged-in context; no script error allowed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    watched = Watched(context.new_page())
    watched.page.goto(jobs.live.base_url + "/login")
    watched.page.fill("#password", KEY)
    watched.page.click("button[type=submit]")
    watched.page.wait_for_selector("body.ready")

    def open_job(path: str) -> Any:
        return open_page(watched, jobs.live.base_url + path)

    yield open_job
    context.close()
    assert watched.errors == []


BOX_GEOMETRY = """() => {
    const img = document.querySelector(".page img");
    const svg = document.querySelector(".page svg.ocr-boxes");
    const frame = img.getBoundingClientRect();
    return {
        natural: [img.naturalWidth, img.naturalHeight],
        viewBox: svg.getAttribute("viewBox"),
        image: [frame.x, frame.y, frame.width, frame.height],
        overlay: Object.values(svg.getBoundingClientRect().toJSON()).slice(0, 4),
        boxes: [...svg.querySelectorAll("polygon")].map((p) => {
            const r = p.getBoundingClientRect();
            return [r.x, r.y, r.width, r.height];
        }),
    };
}"""


@browser_only
def test_the_job_page_draws_one_box_per_ocr_line_scaled_to_the_image(
    jobs: Jobs, page_of: Callable[[str], Any]
) -> None:
    job = detail(jobs, "scan")
    (ocr,) = job["ocr_lines"]
    lines = ocr["lines"]
    low = [line["confidence"] < ocr["review_threshold"] for line in lines]
    assert ocr["review_threshold"] == THRESHOLD and 0 < sum(low) < len(lines) == len(SCAN_LINES)
    page = page_of(f"/jobs/{job['id']}")
    expect(page.locator("h1")).to_have_text("地契_001.png")
    expect(page.locator(".page img")).to_have_js_property("complete", True)
    screenshot(page, "job")
    shown = page.evaluate(BOX_GEOMETRY)
    assert shown["natural"] == [ocr["width"], ocr["height"]]
    assert shown["viewBox"] == f"0 0 {ocr['width']} {ocr['height']}"
    assert shown["overlay"] == pytest.approx(shown["image"], abs=1)
    assert len(shown["boxes"]) == len(lines)
    # Each box sits where its corners put it, in the image's pixels scaled to the image on screen.
    x0, y0, width, _ = shown["image"]
    scale = width / ocr["width"]
    for (bx, by, bw, bh), line in zip(shown["boxes"], lines, strict=True):
        xs, ys = [x for x, _ in line["box"]], [y for _, y in line["box"]]
        expected = [
            x0 + min(xs) * scale,
            y0 + min(ys) * scale,
            (max(xs) - min(xs)) * scale,
            (max(ys) - min(ys)) * scale,
        ]
        assert [bx, by, bw, bh] == pytest.approx(expected, abs=2.5)  # the stroke adds a pixel or two
    classes = page.locator("polygon").evaluate_all("ps => ps.map(p => p.classList.contains('low'))")
    assert classes == low
    assert page.locator(".ocr-lines li.low").count() == sum(low)
    expect(page.locator(".ocr-lines li .text")).to_have_text([line["text"] for line in lines])
    expect(page.locator("#sidecars li")).to_have_count(3)
    expect(page.locator("#sidecars")).to_contain_text(f"{jobs.inbox / '地契_001.png'}.alto.xml")
    expect(page.locator("#sidecars")).not_to_contain_text("尚未写出")


@browser_only
def test_the_job_page_shows_every_page_the_conversation_and_takes_a_correction(
    jobs: Jobs, page_of: Callable[[str], Any]
) -> None:
    pdf = page_of(f"/jobs/{jobs.ids['pdf']}")
    expect(pdf.locator(".page img")).to_have_count(2)
    expect(pdf.locator(".page-lines h3")).to_have_text(["第 1 页", "第 2 页"])
    page = page_of(f"/jobs/{jobs.ids['follow_up']}")
    expect(page.locator("#conversation .turn .text")).to_have_text(
        ["这是什么？", "一张旧照片", "哪一年的？", detail(jobs, "follow_up")["answer"]]
    )
    page.fill("#review textarea", "1950 年前后的家庭合影")
    page.locator("#review button.secondary").click()
    expect(page.locator("#review .saved")).to_have_text("已保存")
    expect(page.locator("#review-state .badge")).to_have_text("已更正")
    job = jobs.live.app.store.get(jobs.ids["follow_up"])
    assert job is not None and (job.review_status, job.correction) == ("corrected", "1950 年前后的家庭合影")


@browser_only
@pytest.mark.parametrize("status", [404, 405])
def test_re_run_shows_what_the_server_answered(
    jobs: Jobs, page_of: Callable[[str], Any], status: int
) -> None:
    # POST /api/jobs/{id}/rerun is another part's; here it answers as a server without it would.
    error = {
        "error": {"message": f"服务器说 {status} / the server said {status}", "type": "invalid_request_error"}
    }
    page = page_of(f"/jobs/{jobs.ids['scan']}")
    requests: list[tuple[str, str | None]] = []

    def answer(route: Any) -> None:
        requests.append((route.request.method, route.request.headers.get("content-type")))
        route.fulfill(status=status, content_type="application/json", body=json.dumps(error))

    page.route("**/api/jobs/*/rerun", answer)
    page.click("#rerun")
    expect(page.locator("#rerun-status")).to_have_text(f"服务器说 {status} / the server said {status}")
    expect(page.locator("#rerun-status")).to_have_class("saved error")
    assert requests == [("POST", "application/json")]


@browser_only
def test_re_run_links_to_the_new_job(jobs: Jobs, page_of: Callable[[str], Any]) -> None:
    page = page_of(f"/jobs/{jobs.ids['scan']}")
    page.route("**/api/jobs/*/rerun", lambda route: route.fulfill(status=200, json={"id": 4242}))
    page.click("#rerun")
    expect(page.locator("#rerun-status")).to_contain_text("已重新排队")
    expect(page.locator("#rerun-status a")).to_have_attribute("href", "/jobs/4242")


@browser_only
def test_an_unknown_job_says_so(jobs: Jobs, page_of: Callable[[str], Any]) -> None:
    page = page_of("/jobs/999999")
    expect(page.locator("#job-error")).to_contain_text("找不到")
    expect(page.locator("#job")).to_be_hidden()
