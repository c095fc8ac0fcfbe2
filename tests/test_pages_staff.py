"""The pages staff work with, in a real chromium against a live service with OCR: phones and tablets (no
sideways scrolling at 390 px, the history as cards), accessibility (axe-core: nothing critical or serious,
a label on every control, one h1 per page), the feed's and the kiosk's English, review at scale (batches,
j/k/1/e), and reports on demand.

axe-core is vendored in tests/assets/axe.min.js (MPL-2.0, see tests/assets/NOTICE.md) and injected with
Playwright's `add_script_tag`; the pages forbid inline scripts, so those contexts bypass the page's CSP.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr

from service.config import (
    Config,
    FeedConfig,
    HttpConfig,
    ImagesConfig,
    KioskConfig,
    ReportConfig,
    StorageConfig,
    WatchConfig,
)
from service.http.auth import Auth, Scope
from tests.browser import CHROMIUM, Watched, open_page, scan_png, screenshot
from tests.conftest import InstrumentedBackend, wait_until
from tests.live import LiveService, running_service

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=30_000)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")

KEY = "staff-pages-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
AXE = Path(__file__).with_name("assets") / "axe.min.js"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
SCANS = {
    "deed": ["民国地契一份", "Land deed 1930"],
    "photo": ["旧照片 1950", "Old photo"],
    "letter": ["家书一封", "A letter home"],
}


@dataclass
class Staff:
    """The running service, the seeded jobs' ids by label, and a logged-in browser's storage state."""

    live: LiveService
    ids: dict[str, int]
    state: dict[str, Any]

    def url(self, path: str) -> str:
        return self.live.base_url + path

    def token(self, scope: Scope) -> str:
        return Auth(KEY).token(scope)


def ask(live: LiveService, lines: list[str]) -> int:
    """A web job about a rendered scan, through the API; its id."""
    image = "data:image/png;base64," + base64.b64encode(scan_png(lines)["buffer"]).decode()
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "写了什么？"}]
    reply = httpx.post(
        live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": [{"role": "user", "content": content}]},
        headers={**AUTH, "X-Tuwen-Source": "web"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return live.app.store.get_by_uid(reply.json()["id"].removeprefix("chatcmpl-")).id  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def staff(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object, browser: Any) -> Iterator[Staff]:
    root = tmp_path_factory.mktemp("staff-pages")
    inbox = root / "inbox"
    inbox.mkdir()
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
        watch=[WatchConfig(path=inbox, name="archive", stable_seconds=0.3, alto=True)],
        feed=FeedConfig(sources=["web"], watches=["archive"]),
        kiosk=KioskConfig(
            title="看展品", presets=["这是什么？"], title_en="See the exhibits", presets_en=["What is it?"]
        ),
        report=[ReportConfig(name="日报")],
    )
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        ids = {label: ask(live, lines) for label, lines in SCANS.items()}
        staged = root / "staging.png"
        staged.write_bytes(scan_png(["张氏族谱 第三卷", "Zhang genealogy"])["buffer"])
        shutil.move(staged, inbox / "族谱_张氏.png")
        ids["scan"] = wait_until(  # type: ignore[assignment]
            lambda: next(
                (j.id for j in live.app.store.list_jobs(source="watch") if j.status == "done"), None
            ),
            timeout=60,
        )
        wait_until(lambda: (inbox / "族谱_张氏.png.alto.xml").exists(), timeout=30)
        context = browser.new_context()
        page = context.new_page()
        page.goto(live.base_url + "/login")
        page.fill("#password", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body.ready")
        state = context.storage_state()
        context.close()
        yield Staff(live, ids, state)


@pytest.fixture
def context_for(browser: Any, staff: Staff) -> Iterator[Callable[..., Watched]]:
    """Make a watched page: logged in or not, at a viewport; CSP bypassed only where axe is injected."""
    contexts: list[Any] = []
    pages: list[Watched] = []

    def make(*, viewport: dict[str, int] = DESKTOP, logged_in: bool = True, axe: bool = False) -> Watched:
        context = browser.new_context(
            viewport=viewport, storage_state=staff.state if logged_in else None, bypass_csp=axe
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        pages.append(Watched(context.new_page()))
        return pages[-1]

    yield make
    for context in contexts:
        context.close()
    assert [error for watched in pages for error in watched.errors] == []


def every_page(staff: Staff) -> dict[str, tuple[str, bool, str]]:
    """name → (URL, logged in, a selector that shows the page has its content)."""
    kiosk, feed = staff.token(Scope.KIOSK), staff.token(Scope.FEED)
    return {
        "ask": ("/", True, "#dropzone"),
        "history": ("/#history", True, "#history-rows tr"),
        "review": ("/#review", True, "#stats-accuracy:not(:empty)"),
        "reports": ("/#reports", True, "#report-default:not(:empty)"),
        "kiosk": (f"/kiosk?token={kiosk}", False, "#presets button"),
        "feed": (f"/feed?token={feed}", False, ".feed-card"),
        "login": ("/login", False, "#password"),
        "job": (f"/jobs/{staff.ids['scan']}", True, "polygon"),
    }


PAGES = ["ask", "history", "review", "reports", "kiosk", "feed", "login", "job"]

# Every control with a name a screen reader can read: its label(s), aria-label(ledby), or a button's text.
UNNAMED_CONTROLS = """() => [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
    .concat([...document.querySelectorAll("button")])
    .filter((c) => !(c.getAttribute("aria-label") || c.getAttribute("aria-labelledby")
        || [...(c.labels ?? [])].some((l) => l.textContent.trim())
        || (c.tagName === "BUTTON" && c.textContent.trim())))
    .map((c) => c.outerHTML.slice(0, 120))"""


# Wait for every animation that ends (a new card fading in), not the ones that loop (a blinking cursor).
SETTLED = """() => Promise.all(document.getAnimations()
    .filter((a) => a.effect?.getComputedTiming().iterations !== Infinity)
    .map((a) => a.finished))"""


def open_at(watched: Watched, staff: Staff, name: str) -> Any:
    url, _, ready = every_page(staff)[name]
    page = open_page(watched, staff.url(url))
    page.wait_for_selector(ready, state="attached")
    return page


@pytest.mark.parametrize("name", PAGES)
def test_no_page_scrolls_sideways_on_a_phone_and_every_control_is_named(
    staff: Staff, context_for: Callable[..., Watched], name: str
) -> None:
    watched = context_for(viewport=PHONE, logged_in=every_page(staff)[name][1])
    page = open_at(watched, staff, name)
    page.wait_for_load_state("load")  # images are in, so their width counts
    screenshot(page, f"phone-{name}")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1] == 390
    assert page.locator("h1").count() == 1
    assert page.evaluate(UNNAMED_CONTROLS) == []


def test_the_history_is_cards_on_a_phone_and_a_table_on_a_desktop(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    phone = open_at(context_for(viewport=PHONE), staff, "history")
    desktop = open_at(context_for(viewport=DESKTOP), staff, "history")
    row = "#history-rows tr"
    assert phone.locator(row).count() == desktop.locator(row).count() == 4  # the same rows, one data path
    assert phone.eval_on_selector(row, "r => getComputedStyle(r).display") == "grid"
    assert desktop.eval_on_selector(row, "r => getComputedStyle(r).display") == "table-row"
    # A card's cells name their column (the table's header is out of sight).
    labels = phone.eval_on_selector_all(
        f"{row}:first-child td", "cells => cells.map(c => getComputedStyle(c, '::before').content)"
    )
    assert labels == ["none", '"时间"', '"来源"', '"问题"', '"回答"', '"识别文字"', '"审核"']
    assert phone.eval_on_selector("#history-table thead", "h => h.getBoundingClientRect().height") <= 1
    card = phone.locator(row).first.bounding_box()
    assert card is not None and card["x"] >= 0 and card["x"] + card["width"] <= 390
    phone.click("#lang")
    expect(phone.locator(f"{row} td").nth(1)).to_have_attribute("data-label", "Time")
    links = desktop.locator(f"{row} a.job-link")
    assert sorted(links.evaluate_all("ls => ls.map(l => l.getAttribute('href'))")) == sorted(
        f"/jobs/{job_id}" for job_id in staff.ids.values()
    )


@pytest.mark.parametrize("name", PAGES)
def test_axe_finds_nothing_critical_or_serious(
    staff: Staff, context_for: Callable[..., Watched], name: str
) -> None:
    watched = context_for(logged_in=every_page(staff)[name][1], axe=True)
    page = open_at(watched, staff, name)
    page.evaluate(SETTLED)  # contrast is measured on the page at rest, not half-way through a fade-in
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    serious = [
        f"{v['id']} ({v['impact']}): {[(n['target'], n['failureSummary']) for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("critical", "serious")
    ]
    assert len(result["passes"]) >= 10  # axe really ran its rules on this page
    assert serious == []


def test_the_feed_switches_to_english_and_remembers_it(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    page = open_at(context_for(logged_in=False), staff, "feed")
    expect(page.locator(".feed-card .badge.ocr").first).to_have_text("仅文字识别")
    expect(page.locator("#status")).to_have_attribute("aria-label", "已连接，实时更新")
    page.click("#lang")
    expect(page.locator(".feed-card .badge.ocr").first).to_have_text("text only (OCR)")
    expect(page.locator("#status")).to_have_attribute("aria-label", "Connected: live")
    expect(page.locator("#lang")).to_have_text("中文")
    assert page.evaluate("document.documentElement.lang") == "en"
    page.reload()
    page.wait_for_selector("body.ready")
    expect(page.locator(".feed-card .badge.ocr").first).to_have_text("text only (OCR)")


def test_the_kiosk_in_english_shows_the_english_title_and_presets(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    page = open_at(context_for(logged_in=False), staff, "kiosk")
    expect(page.locator("#title")).to_have_text("看展品")
    expect(page.locator("#presets button")).to_have_text(["这是什么？"])
    page.click("#lang")
    expect(page.locator("#title")).to_have_text("See the exhibits")
    expect(page.locator("#presets button")).to_have_text(["What is it?"])
    assert page.title() == "See the exhibits"
    page.set_input_files("#camera", scan_png(["青花瓷瓶", "Ming vase"]))
    page.get_by_role("button", name="What is it?").click()
    expect(page.locator(".qa .a").first).to_contain_text("Ming vase")
    expect(page.locator(".qa.pending")).to_have_count(0)
    page.click("#restart")  # the next visitor is greeted in Chinese again
    expect(page.locator("#title")).to_have_text("看展品")
    expect(page.locator("#presets button")).to_have_text(["这是什么？"])


def test_review_in_batches_with_keyboard_shortcuts(staff: Staff, context_for: Callable[..., Watched]) -> None:
    store = staff.live.app.store
    page = open_at(context_for(), staff, "review")
    expect(page.locator("#shortcuts")).to_contain_text("j 下一张、k 上一张，1 标为正确，e 编辑更正")
    page.fill("#sample-size", "2")
    page.click("#sample")
    cards = page.locator(".review-card")
    expect(cards).to_have_count(2)
    first_batch = cards.evaluate_all("cs => cs.map(c => Number(c.dataset.id))")
    # The box holds the answer itself, ready to edit, and nothing else.
    assert cards.first.locator("textarea").input_value() == store.get(first_batch[0]).answer  # type: ignore[union-attr]
    page.keyboard.press("j")
    expect(cards.first).to_have_class(re.compile("current"))
    page.keyboard.press("1")
    expect(cards.first.locator(".saved")).to_have_text("已保存")
    page.keyboard.press("j")
    expect(cards.nth(1)).to_have_class(re.compile("current"))
    page.keyboard.press("k")
    expect(cards.first).to_have_class(re.compile("current"))
    page.keyboard.press("j")
    page.keyboard.press("e")
    box = cards.nth(1).locator("textarea")
    expect(box).to_be_focused()
    page.keyboard.type("jk1")  # typing in the box is typing, not shortcuts
    expect(cards.nth(1)).to_have_class(re.compile("current"))
    assert box.input_value().endswith("jk1")
    page.keyboard.press("Escape")
    expect(cards.nth(1)).to_be_focused()
    screenshot(page, "review-batch")
    expect(cards.nth(1).locator(".saved")).to_have_text("")
    expect(page.locator("#sample-next")).to_have_text("再抽 2 条")
    # The old batch has two cards too: wait for the new draw before reading the ids.
    with page.expect_response("**/api/review/sample"):
        page.click("#sample-next")
    expect(cards.first).not_to_have_attribute("data-id", str(first_batch[0]))
    expect(cards).to_have_count(2)
    second_batch = cards.evaluate_all("cs => cs.map(c => Number(c.dataset.id))")
    marked = store.get(first_batch[0])
    assert marked is not None and (marked.review_status, marked.correction) == ("correct", None)
    assert store.get(first_batch[1]).review_status == "unreviewed"  # type: ignore[union-attr]
    assert set(second_batch).isdisjoint(first_batch)  # "next" shows the ones not seen yet


def test_saving_the_answer_unchanged_counts_as_correct(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    job_id = staff.ids["letter"]
    page = open_page(context_for(), staff.url(f"/jobs/{job_id}"))
    page.locator("#review button.secondary").click()  # 「保存更正」 with the answer as it stands
    expect(page.locator("#review .saved")).to_have_text("内容未改动，已记为正确")
    expect(page.locator("#review-state .badge")).to_have_text("正确")
    job = staff.live.app.store.get(job_id)
    assert job is not None and (job.review_status, job.correction) == ("correct", None)


def test_reports_are_generated_on_demand_for_the_named_default_period(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    yesterday = (datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=1)).isoformat()
    page = open_at(context_for(), staff, "reports")
    expect(page.locator("#report-default")).to_have_text(f"默认期间：昨天（{yesterday}，Asia/Shanghai 时间）")
    assert (page.input_value("#report-from"), page.input_value("#report-to")) == (yesterday, yesterday)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    page.fill("#report-from", yesterday)
    page.fill("#report-to", today)
    page.click("#generate button[type=submit]")
    status = page.locator("#generate-status")
    expect(status).to_contain_text(f"已生成 日报（{yesterday}_{today}）")
    expect(page.locator("#report-rows tr")).to_have_count(1)
    screenshot(page, "reports-generated")
    href = status.locator("a", has_text="表格（CSV）").get_attribute("href")
    assert (
        href == f"/reports/%E6%97%A5%E6%8A%A5/{yesterday}_{today}/%E6%97%A5%E6%8A%A5_{yesterday}_{today}.csv"
    )
    csv_text = httpx.get(staff.url(href), headers=AUTH, timeout=10).content.decode("utf-8-sig")
    assert "民国地契一份" in csv_text
    page.fill("#report-from", today)
    page.fill("#report-to", yesterday)
    page.click("#generate button[type=submit]")
    expect(status).to_contain_text("晚于截止日期")
    expect(status).to_have_class(re.compile("error"))


def test_a_page_the_reader_flagged_says_check_this_in_history_and_on_its_page(
    staff: Staff, context_for: Callable[..., Watched]
) -> None:
    from sqlalchemy import update

    from db.models import Job

    store = staff.live.app.store
    flagged = staff.ids["scan"]

    def flag(value: int) -> None:
        with store.write_session() as session:  # as the OCR reader records a low-confidence line
            session.execute(update(Job).where(Job.id == flagged).values(needs_review=value))

    flag(1)
    try:
        page = open_at(context_for(), staff, "history")
        # Exactly the jobs the store holds as flagged carry the badge (the reader flags some of its own).
        want = sorted(j.id for j in store.list_jobs() if j.needs_review)
        rows = page.locator("#history-rows tr").filter(has=page.locator(".needs-review"))
        expect(rows).to_have_count(len(want))
        assert sorted(int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.id)")) == want
        assert flagged in want
        badge = page.locator(f'#history-rows tr[data-id="{flagged}"] .needs-review')
        expect(badge).to_have_text("需核对")
        assert "置信度" in (badge.get_attribute("title") or "")
        job_page = open_page(context_for(), staff.url(f"/jobs/{flagged}"))
        expect(job_page.locator("#badges .needs-review")).to_have_text("需核对")
    finally:
        flag(0)
