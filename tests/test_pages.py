"""The pages in a real browser (Debian's chromium driven by Playwright) against a live service with OCR.

Answers from the embedded OCR backend contain the text of the rendered scan, so what the browser shows can
be checked exactly. Set TUWEN_SCREENSHOTS=/some/dir to keep a screenshot of each page.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bench.render import render_text_image
from service.config import Config
from service.http.auth import Auth, Scope
from tests.browser import CHROMIUM, Watched, open_page, scan_png, screenshot
from tests.live import LiveService, running_service

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
# Answers come from real OCR on 2 shared cores; on a loaded CI machine one can take several seconds.
expect.set_options(timeout=30_000)

KEY = "pages-test-key-0123456789"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    """A fresh browser context and page; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    context.set_default_timeout(10_000)
    watched = Watched(context.new_page())
    yield watched
    context.close()
    assert watched.errors == []


@pytest.fixture
def live(make_config: Callable[..., Config], backend_factory: Any) -> Callable[..., Any]:
    """Start a live service; keyword arguments are config tables to override."""

    def start(**tables: Any) -> Any:
        return running_service(make_config(**tables), backend_factory)

    return start


def ask_on_web(page: Any, lines: list[str], question: str) -> None:
    """Pick a scan on the ask tab and ask about it; waits for the streamed answer to finish."""
    page.set_input_files("#file", scan_png(lines))
    page.fill("#question", question)
    page.click("#send")
    expect(page.locator(".bubble.assistant").last).not_to_have_class(re.compile("pending"), timeout=20_000)


def ask_via_api(svc: LiveService, lines: list[str]) -> dict[str, Any]:
    """A web-sourced job made through the API, for the history and review tests."""
    import base64

    png = scan_png(lines)["buffer"]
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {
        "model": "tuwen",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "写了什么？"},
                ],
            }
        ],
    }
    reply = httpx.post(
        svc.base_url + "/v1/chat/completions", json=body, headers={"X-Tuwen-Source": "web"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_ask_streams_the_answer_and_follow_ups_stay_in_the_conversation(live: Any, watched: Watched) -> None:
    with live() as svc:
        page = open_page(watched, svc.base_url + "/")
        ask_on_web(page, ["青铜器档案", "Bronze 1930"], "这张图上写了什么？")
        expect(page.locator(".bubble.assistant .text").last).to_contain_text("青铜器档案")
        # The OCR backend answers no question: a small badge says so, and the text carries no banner.
        expect(page.locator(".bubble.assistant .badge.ocr").last).to_have_text("仅文字识别")
        assert "OCR" not in page.locator(".bubble.assistant .text").last.inner_text()
        page.fill("#question", "再说一遍？")
        page.keyboard.press("Enter")
        expect(page.locator(".bubble.assistant")).to_have_count(2)
        expect(page.locator(".bubble.assistant").last).not_to_have_class(re.compile("pending"))
        expect(page.locator(".bubble.assistant .text").last).to_contain_text("Bronze 1930")
        screenshot(page, "ask")
        page.click("#new-conversation")
        expect(page.locator(".bubble")).to_have_count(0)
        first, second = sorted(svc.app.store.list_jobs(), key=lambda job: job.id)
    assert (first.source, second.source) == ("web", "web")
    assert first.conversation_id and first.conversation_id == second.conversation_id
    assert [turn["role"] for turn in second.history] == ["user", "assistant"]
    assert second.images == first.images  # the follow-up resent the picture
    assert second.question == "再说一遍？"


PASTE_AND_DROP = """async (png) => {
    const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
    const file = new File([bytes], "pasted.png", { type: "image/png" });
    const data = new DataTransfer();
    data.items.add(file);
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
    const pasted = document.getElementById("preview").src;
    const drop = new DragEvent("drop", { dataTransfer: data, bubbles: true });
    document.getElementById("dropzone").dispatchEvent(drop);
    return [pasted, document.getElementById("preview").src];
}"""


def test_paste_and_drop_pick_the_image_and_errors_show_bilingual(live: Any, watched: Watched) -> None:
    import base64

    with live() as svc:
        page = open_page(watched, svc.base_url + "/")
        png = base64.b64encode(scan_png(["粘贴"])["buffer"]).decode()
        pasted, dropped = page.evaluate(PASTE_AND_DROP, png)
        page.set_input_files("#file", {"name": "broken.png", "mimeType": "image/png", "buffer": b"not a png"})
        page.fill("#question", "这是什么？")
        page.click("#send")
        expect(page.locator("#ask-error")).to_contain_text("不是可识别的图片格式")
        expect(page.locator("#ask-error")).to_contain_text("not a recognised image format")
        expect(page.locator("#question")).to_have_value("这是什么？")  # kept for another try
    assert pasted.startswith("blob:") and dropped.startswith("blob:") and pasted != dropped


def test_pdfs_and_untyped_heic_files_can_be_asked_about_and_others_are_refused(
    live: Any, watched: Watched, tmp_path: Path
) -> None:
    from tests import documents

    pdf = documents.scan_pdf(tmp_path / "letter.pdf", [["档案来信", "Archive letter"]]).read_bytes()
    heic = documents.photo_bytes(render_text_image(["手机照片", "Phone photo"], size=(600, 300)), "HEIF")
    with live() as svc:
        page = open_page(watched, svc.base_url + "/")
        page.set_input_files(
            "#file", {"name": "notes.docx", "mimeType": "application/msword", "buffer": b"PK"}
        )
        expect(page.locator("#ask-error")).to_contain_text("不支持这种文件")
        for name, mime, data, text in [
            ("letter.pdf", "application/pdf", pdf, "档案来信"),
            ("IMG_0042.HEIC", "", heic, "手机照片"),  # no type: what desktop browsers give for HEIC
        ]:
            page.click("#new-conversation")
            page.set_input_files("#file", {"name": name, "mimeType": mime, "buffer": data})
            page.fill("#question", "写了什么？")
            page.click("#send")
            expect(page.locator(".bubble.assistant .text").last).to_contain_text(text)
        stored = sorted(Path(job.images[0]).suffix for job in svc.app.store.list_jobs())
    assert stored == [".heic", ".pdf"]


def test_history_search_export_and_review(live: Any, watched: Watched) -> None:
    with live() as svc:
        ask_via_api(svc, ["民国地契一份", "Land deed"])
        ask_via_api(svc, ["旧照片 1950", "Old photo"])
        page = open_page(watched, svc.base_url + "/#history")
        expect(page.locator("#history-rows tr")).to_have_count(2)
        page.fill("#q", "地契")
        page.click("#filters button[type=submit]")
        expect(page.locator("#history-rows tr")).to_have_count(1)
        row = page.locator("#history-rows tr").first
        expect(row).to_contain_text("民国地契一份")
        expect(row.locator(".badge.ocr")).to_have_text("仅文字识别")
        expect(row.locator("img.thumb")).to_have_js_property("complete", True)
        assert row.locator("img.thumb").evaluate("img => img.naturalWidth") > 0
        screenshot(page, "history")

        with page.expect_download() as download_info:
            page.click("#export")
        csv_bytes = Path(download_info.value.path()).read_bytes()
        assert csv_bytes.startswith(b"\xef\xbb\xbf")
        assert "民国地契一份" in csv_bytes.decode("utf-8-sig")
        assert "旧照片" not in csv_bytes.decode("utf-8-sig")  # the export follows the search

        row.locator("button.link").click()
        card = page.locator(".review-card").first
        card.locator("textarea").fill("这是一份民国时期的地契")
        card.locator("button.secondary").click()
        expect(card.locator(".saved")).to_have_text("已保存")
        expect(page.locator("#stats-reviewed")).to_contain_text("1")
        page.click("#sample")
        expect(page.locator(".review-card")).to_have_count(1)
        expect(page.locator(".review-card").first).to_contain_text("旧照片")
        page.locator(".review-card button.primary").first.click()
        expect(page.locator(".review-card .saved").first).to_have_text("已保存")
        expect(page.locator("#stats-accuracy")).to_contain_text("50.0%")
        screenshot(page, "review")
        jobs = httpx.get(svc.base_url + "/api/jobs", params={"review": "corrected"}).json()["items"]
    assert [job["correction"] for job in jobs] == ["这是一份民国时期的地契"]


def test_untrusted_text_stays_text(live: Any, watched: Watched) -> None:
    hostile = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
    with live(feed={"sources": ["web"]}) as svc:  # the hall screen shows web questions here
        page = open_page(watched, svc.base_url + "/")
        ask_on_web(page, hostile, "<b>粗体</b>？")
        answer = page.locator(".bubble.assistant .text").last
        expect(answer).to_contain_text("<img src=x onerror=alert(2)>")
        expect(page.locator(".bubble.user .text")).to_have_text("<b>粗体</b>？")
        page.goto(svc.base_url + "/#history")
        expect(page.locator("#history-rows tr")).to_contain_text("<script>alert(1)</script>")
        feed = open_page(watched, svc.base_url + "/feed")
        expect(feed.locator(".feed-card .answer")).to_contain_text("<img src=x onerror=alert(2)>")
        assert feed.locator("main img[src='x'], main script, main b").count() == 0
        feed.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert watched.dialogs == []


def test_kiosk_presets_follow_ups_and_idle_reset(live: Any, watched: Watched) -> None:
    kiosk = {"title": "看展品", "presets": ["这是什么？", "有什么故事？"], "idle_seconds": 5, "max_turns": 2}
    with live(kiosk=kiosk) as svc:
        page = open_page(watched, svc.base_url + "/kiosk")
        expect(page.locator("#title")).to_have_text("看展品")
        page.get_by_role("button", name="这是什么？").click()
        expect(page.locator("#kiosk-error")).to_have_text("请先拍一张照片")
        page.set_input_files("#camera", scan_png(["青花瓷瓶", "Ming vase"]))
        page.get_by_role("button", name="这是什么？").click()
        expect(page.locator(".qa .a").first).to_contain_text("Ming vase")
        expect(page.locator(".qa.pending")).to_have_count(0)
        page.fill("#question", "能再讲讲吗？")
        page.click("#free button")
        expect(page.locator(".qa")).to_have_count(2)
        expect(page.locator(".qa.pending")).to_have_count(0)
        expect(page.locator(".qa .a").last).to_contain_text("青花瓷瓶")  # the follow-up is about the photo
        expect(page.locator("#turns")).to_contain_text("问完")  # max_turns reached
        expect(page.get_by_role("button", name="有什么故事？")).to_be_disabled()
        screenshot(page, "kiosk")
        expect(page.locator("#idle-warning")).to_be_visible(timeout=5_000)
        expect(page.locator(".qa")).to_have_count(0, timeout=8_000)
        html = page.content()
        photo_src = page.locator("#photo").get_attribute("src")
        jobs = svc.app.store.list_jobs()
    assert "青花瓷瓶" not in html and "Ming vase" not in html and "能再讲讲" not in html
    assert photo_src is None
    assert {job.source for job in jobs} == {"kiosk"}
    assert len({job.conversation_id for job in jobs}) == 1


def test_feed_shows_a_new_folder_job_without_reloading(live: Any, watched: Watched, tmp_path: Path) -> None:
    with live(feed={"watches": [str(tmp_path / "inbox")], "title": "新到展品"}) as svc:
        page = open_page(watched, svc.base_url + "/feed")
        expect(page.locator("#title")).to_have_text("新到展品")
        expect(page.locator("#status")).to_have_class(re.compile("live"))
        page.evaluate("window.sameDocument = true")
        staged = tmp_path / "staging.png"
        staged.write_bytes(scan_png(["敦煌壁画摹本", "Dunhuang"])["buffer"])
        shutil.move(staged, tmp_path / "inbox" / "dunhuang-01.png")
        card = page.locator(".feed-card").first
        expect(card).to_contain_text("敦煌壁画摹本", timeout=20_000)
        expect(card).to_contain_text("dunhuang-01.png")
        expect(card.locator("img")).to_have_js_property("complete", True)
        assert card.locator("img").evaluate("img => img.naturalWidth") > 0
        assert page.evaluate("window.sameDocument") is True
        screenshot(page, "feed")


def test_a_key_protects_the_pages(live: Any, watched: Watched) -> None:
    auth = Auth(KEY)
    with live(http={"api_key": SecretStr(KEY)}) as svc:
        page = watched.page
        page.goto(svc.base_url + "/")
        expect(page).to_have_url(svc.base_url + "/login")
        page.wait_for_selector("body.ready")
        screenshot(page, "login")
        page.fill("#password", "not-the-key")
        page.click("button[type=submit]")
        expect(page.locator("#wrong")).to_be_visible()
        page.fill("#password", KEY)
        page.click("button[type=submit]")
        expect(page).to_have_url(svc.base_url + "/")
        page.wait_for_selector("body.ready")
        expect(page.locator("#logout")).to_be_visible()
        assert page.evaluate("fetch('/api/review/stats').then(r => r.status)") == 200
        (cookie,) = page.context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Lax")
        ask_on_web(page, ["会话测试 Session"], "写了什么？")  # the session's CSRF token goes with the POST
        expect(page.locator(".bubble.assistant .text").last).to_contain_text("会话测试")
        page.goto(svc.base_url + "/#review")
        page.click("#sample")
        page.locator(".review-card button.primary").first.click()
        expect(page.locator(".review-card .saved").first).to_have_text("已保存")
        page.click("#logout")
        expect(page).to_have_url(svc.base_url + "/login")
        replayed = httpx.get(
            svc.base_url + "/api/review/stats", headers={"Cookie": f"{cookie['name']}={cookie['value']}"}
        )
        (job,) = svc.app.store.list_jobs()

        refused = page.goto(svc.base_url + "/kiosk")
        wrong_token = page.goto(svc.base_url + "/kiosk?token=" + auth.token(Scope.FEED))
        kiosk = open_page(watched, svc.base_url + "/kiosk?token=" + auth.token(Scope.KIOSK))
        expect(kiosk.locator("#title")).to_have_text("拍一拍，问一问")
        kiosk.set_input_files("#camera", scan_png(["钥匙测试"]))
        kiosk.locator("#presets button").first.click()
        expect(kiosk.locator(".qa .a").first).to_contain_text("钥匙测试")
        feed = open_page(watched, svc.base_url + "/feed?token=" + auth.token(Scope.FEED))
        expect(feed.locator("#status")).to_have_class(re.compile("live"))
    assert (refused.status, wrong_token.status) == (401, 401)
    assert replayed.status_code == 401  # logging out ended the session on the server, not just in the browser
    assert (job.source, job.review_status) == ("web", "correct")


def test_the_logout_link_asks_first_and_the_login_throttle_explains_itself(
    live: Any, watched: Watched
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with live(http={"api_key": SecretStr(KEY)}) as svc:
        page = watched.page
        page.goto(svc.base_url + "/login")
        page.fill("#password", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body.ready")
        confirm = open_page(watched, svc.base_url + "/logout")
        expect(confirm.locator("h1")).to_have_text("要退出登录吗？")
        assert (
            confirm.evaluate("fetch('/api/review/stats').then(r => r.status)") == 200
        )  # asking ends nothing
        confirm.click("#logout")
        expect(confirm).to_have_url(svc.base_url + "/login")
        assert page.evaluate("fetch('/api/review/stats').then(r => r.status)") == 401

        def wrong_try(_: int) -> int:
            return httpx.post(svc.base_url + "/login", data={"key": "wrong"}, timeout=30).status_code

        with ThreadPoolExecutor(10) as pool:
            assert set(pool.map(wrong_try, range(10))) == {401}
        page.fill("#password", KEY)
        with page.expect_response(svc.base_url + "/login") as answer:
            page.click("button[type=submit]")
        page.wait_for_selector("body.ready")
        expect(page.locator("#throttled")).to_be_visible()
        expect(page.locator("#throttled")).to_contain_text(re.compile(r"尝试次数过多，请 \d+ 秒后再试"))
        screenshot(page, "login-throttled")
        page.click("#lang")
        expect(page.locator("#throttled")).to_contain_text(re.compile(r"too many tries; please wait \d+ s"))
    assert answer.value.status == 429 and answer.value.headers["retry-after"].isdigit()
    assert page.context.cookies() == []


def test_the_language_switch_is_remembered(live: Any, watched: Watched) -> None:
    with live() as svc:
        page = open_page(watched, svc.base_url + "/")
        expect(page.locator("[data-tab=history]")).to_have_text("历史记录")
        page.click("#lang")
        expect(page.locator("[data-tab=history]")).to_have_text("History")
        page.reload()
        page.wait_for_selector("body.ready")
        expect(page.locator("[data-tab=history]")).to_have_text("History")
        expect(page.locator("#lang")).to_have_text("中文")
