"""Staff accounts on a live service with the real OCR backend and a watched folder: `tuwen users`, the
name-and-password login, roles enforced by the API (viewer, reviewer, admin; the key is an admin), the audit
log, `reviewed_by` in the job JSON, the CSV and the sidecar, re-runs that keep a person's correction, and the
backlog pause kept in the database."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.render import render_text_image
from service.backlog import BacklogPause
from service.cli import main as cli_main
from service.config_load import load_config
from service.http.auth import SESSION_COOKIE
from tests.conftest import InstrumentedBackend, wait_until
from tests.live import LiveService, running_service

KEY = "accounts-test-key-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}
PASSWORDS = {"wang": "viewer-pass-1", "li": "reviewer-pass-2", "zhao": "admin-pass-3"}
ROLES = {"wang": "viewer", "li": "reviewer", "zhao": "admin"}


@dataclass
class Service:
    live: LiveService
    config_path: Path
    inbox: Path
    scan_job: int

    @contextmanager
    def login(self, name: str, password: str | None = None) -> Iterator[httpx.Client]:
        with httpx.Client(
            base_url=self.live.base_url, timeout=60, headers={"Origin": self.live.base_url}
        ) as client:
            answer = client.post("/login", data={"username": name, "password": password or PASSWORDS[name]})
            assert answer.status_code == 303, answer.text
            assert SESSION_COOKIE in client.cookies
            yield client

    def bearer(self) -> httpx.Client:
        return httpx.Client(base_url=self.live.base_url, timeout=60, headers=BEARER)


def users_cli(config: Path, *args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli_main(["users", *args, "-c", str(config)])


def scan_png(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    render_text_image(lines, size=(760, 90 + 60 * len(lines)), font_size=32).save(buffer, "PNG")
    return buffer.getvalue()


def drop_scan(inbox: Path, name: str, lines: list[str]) -> None:
    staged = inbox.parent / f"staging-{name}"
    staged.write_bytes(scan_png(lines))
    shutil.move(staged, inbox / name)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("accounts")
    inbox = root / "inbox"
    inbox.mkdir()
    config_path = root / "config.toml"
    config_path.write_text(
        f"""
[storage]
data_dir = "{(root / "data").as_posix()}"
[http]
enabled = false
api_key = "{KEY}"
[[watch]]
path = "{inbox.as_posix()}"
name = "archive"
stable_seconds = 0.3
""",
        encoding="utf-8",
    )
    config = load_config(config_path)
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for name, password in PASSWORDS.items():
                code = users_cli(
                    config_path,
                    "add",
                    name,
                    "--role",
                    ROLES[name],
                    "--password-stdin",
                    stdin=password + "\n",
                    monkeypatch=monkeypatch,
                )
                assert code == 0
        drop_scan(inbox, "契约_001.png", ["民国契约一份", "Deed 1931"])
        scan_job = wait_until(
            lambda: next(
                (j.id for j in live.app.store.list_jobs(source="watch") if j.status == "done"), None
            ),
            timeout=60,
        )
        wait_until(lambda: (inbox / "契约_001.png.json").exists(), timeout=30)
        yield Service(live, config_path, inbox, int(scan_job))  # type: ignore[arg-type]


def sidecar(service: Service, name: str = "契约_001.png") -> dict[str, Any]:
    return json.loads((service.inbox / f"{name}.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


# -- accounts and roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PASSWORDS))
def test_a_login_with_name_and_password_carries_the_accounts_role(service: Service, name: str) -> None:
    with service.login(name) as client:
        me = client.get("/api/me").json()
        page = client.get("/").text
    assert (me["name"], me["role"]) == (name, ROLES[name])
    assert f'data-role="{ROLES[name]}"' in page


def test_an_admin_lists_the_accounts_without_their_hashes(service: Service) -> None:
    with service.login("zhao") as client:
        listed = client.get("/api/users").json()["items"]
    assert {(user["name"], user["role"]) for user in listed} >= {("wang", "viewer"), ("zhao", "admin")}
    assert all(set(user) == {"name", "role", "created_at", "last_login_at"} for user in listed)


def test_a_wrong_password_is_401_and_an_unknown_name_too(service: Service) -> None:
    for name, password in (("wang", "not-it-at-all"), ("nobody", "whatever-123")):
        answer = httpx.post(service.live.base_url + "/login", data={"username": name, "password": password})
        assert answer.status_code == 401
        assert SESSION_COOKIE not in answer.cookies


# (who, method, path, body) → status; the job and watch paths are filled in by the test.
FORBIDDEN = [
    ("wang", "post", "/api/jobs/{job}/review", {"verdict": "correct"}),
    ("wang", "post", "/api/jobs/{job}/rerun", {}),
    ("li", "post", "/api/jobs/{job}/rerun", {}),
    ("li", "post", "/api/backlog/pause", {}),
    ("li", "post", "/api/watches/archive/rerun", {"which": "failed"}),
    ("li", "get", "/api/audit", None),
    ("li", "get", "/api/audit.csv", None),
    ("li", "get", "/api/webhooks/deliveries", None),
    ("li", "get", "/api/users", None),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), FORBIDDEN)
def test_the_api_refuses_what_a_role_may_not_do_with_a_bilingual_403(
    service: Service, who: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    with service.login(who) as client:
        url = path.format(job=service.scan_job)
        answer = client.post(url, json=body) if method == "post" else client.get(url)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "api_role_refused"
    assert "角色" in error["message"] and "role" in error["message"]


@pytest.mark.parametrize("path", ["/api/jobs", "/api/jobs/export.csv", "/api/watches", "/api/review/stats"])
def test_a_viewer_reads_history_export_and_progress(service: Service, path: str) -> None:
    with service.login("wang") as client:
        assert client.get(path).status_code == 200


def test_a_review_records_who_gave_it_in_the_job_the_csv_the_sidecar_and_the_audit_log(
    service: Service,
) -> None:
    job = service.scan_job
    with service.login("li") as client:
        answer = client.post(
            f"/api/jobs/{job}/review", json={"verdict": "corrected", "correction": "民国契约"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["reviewed_by"] == "li"
        assert client.get(f"/api/jobs/{job}").json()["reviewed_by"] == "li"
        rows = list(csv.reader(io.StringIO(client.get("/api/jobs/export.csv?lang=en").text.lstrip("\ufeff"))))
    header = rows[0]
    row = next(r for r in rows[1:] if r[0] == str(job))
    assert row[header.index(next(h for h in header if h.lower().startswith("reviewed by")))] == "li"
    wait_until(lambda: sidecar(service).get("reviewed_by") == "li", timeout=10)
    assert sidecar(service)["correction"] == "民国契约"
    xmp = (service.inbox / "契约_001.png.xmp").read_text(encoding="utf-8")
    assert re.search(r"tuwen:ReviewedBy(>|=\")li", xmp), xmp
    with service.bearer() as admin:
        audit = admin.get("/api/audit", params={"action": "job.review"}).json()
    assert audit["items"][0]["actor"] == "li" and audit["items"][0]["target"] == f"job:{job}"


def test_the_key_is_an_admin_and_reviews_as_api_key(service: Service, tmp_path: Path) -> None:
    drop_scan(service.inbox, "key_002.png", ["钥匙审核"])
    store = service.live.app.store
    job = wait_until(
        lambda: next(
            (
                j
                for j in store.list_jobs(source="watch")
                if j.file_path and "key_002" in j.file_path and j.status == "done"
            ),
            None,
        ),
        timeout=60,
    )
    with service.bearer() as client:
        answer = client.post(f"/api/jobs/{job.id}/review", json={"verdict": "correct"})  # type: ignore[attr-defined]
        assert answer.json()["reviewed_by"] == "api-key"
        assert client.get("/api/me").json() == {
            "name": "api-key",
            "role": "admin",
            "can": {"read": True, "review": True, "rerun": True, "pause": True, "audit": True, "users": True},
        }


# -- re-runs ----------------------------------------------------------------------------------------------


def test_a_rerun_queues_a_new_job_keeps_the_old_one_and_the_persons_correction(service: Service) -> None:
    old = service.scan_job
    store = service.live.app.store
    with service.login("li") as reviewer:
        reviewer.post(f"/api/jobs/{old}/review", json={"verdict": "corrected", "correction": "人工更正"})
    with service.login("zhao") as admin:
        answer = admin.post(f"/api/jobs/{old}/rerun", json={})
        assert answer.status_code == 200, answer.text
        fresh = answer.json()["id"]
        assert fresh != old and answer.json()["rerun_of"] == old
        done = wait_until(
            lambda: (j := store.get(fresh)) is not None and j.status == "done" and j, timeout=60
        )
        again = admin.post(f"/api/jobs/{old}/rerun", json={})
    assert done.correction == "人工更正" and done.review_status == "corrected"  # type: ignore[attr-defined]
    assert done.answer  # type: ignore[attr-defined]  # the model's new answer, beside the correction
    previous = store.get(old)
    assert previous is not None and previous.correction == "人工更正" and previous.status == "done"
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_newer_answer"
    wait_until(lambda: sidecar(service).get("job_id") == done.uid, timeout=10)  # type: ignore[attr-defined]
    assert sidecar(service)["correction"] == "人工更正"
    with service.bearer() as client:
        audit = client.get("/api/audit", params={"action": "job.rerun"}).json()["items"]
    assert audit[0]["actor"] == "zhao" and audit[0]["details"] == {"new_job": fresh}


def test_a_watch_rerun_of_all_files_queues_each_finished_one(service: Service) -> None:
    store = service.live.app.store
    with service.login("zhao") as admin:
        bad = admin.post("/api/watches/archive/rerun", json={"which": "some"})
        unknown = admin.post("/api/watches/nope/rerun", json={"which": "all"})
        failed = admin.post("/api/watches/archive/rerun", json={"which": "failed"})
        everything = admin.post("/api/watches/archive/rerun", json={"which": "all"})
    assert bad.status_code == 400 and unknown.status_code == 404
    assert failed.json()["count"] == 0
    queued = everything.json()["queued"]
    assert everything.status_code == 200 and len(queued) == everything.json()["count"] >= 1
    wait_until(
        lambda: all((j := store.get(i)) is not None and j.status == "done" for i in queued), timeout=60
    )


# -- the backlog pause ------------------------------------------------------------------------------------


def test_a_paused_backlog_holds_folder_jobs_answers_questions_and_survives_a_new_reader(
    service: Service,
) -> None:
    store = service.live.app.store
    with service.login("zhao") as admin:
        assert admin.post("/api/backlog/pause", json={}).json()["paused"] is True
        assert BacklogPause(store).paused()  # in the database, so a restart keeps it
        assert httpx.get(service.live.base_url + "/health").json()["backlog_paused"] is True
        drop_scan(service.inbox, "paused_003.png", ["暂停期间"])
        held = wait_until(
            lambda: next(
                (j for j in store.list_jobs(source="watch") if j.file_path and "paused_003" in j.file_path),
                None,
            ),
            timeout=30,
        )
        chat = {
            "model": "tuwen",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "data:image/png;base64,"
                                + base64.b64encode(scan_png(["提问照常"])).decode()
                            },
                        },
                        {"type": "text", "text": "写了什么？"},
                    ],
                }
            ],
        }
        asked = httpx.post(
            service.live.base_url + "/v1/chat/completions", json=chat, headers=BEARER, timeout=60
        )
        assert asked.status_code == 200
        assert store.get(held.id).status == "queued"  # type: ignore[attr-defined, union-attr]
        watches = admin.get("/api/watches").json()
        assert watches["backlog"]["paused"] is True and watches["backlog"]["by"] == "zhao"
        assert watches["watches"][0]["queued"] >= 1 and watches["watches"][0]["paused"] is True
        assert admin.post("/api/backlog/resume", json={}).json()["paused"] is False
    wait_until(lambda: store.get(held.id).status == "done", timeout=60)  # type: ignore[attr-defined, union-attr]
    with service.bearer() as client:
        actions = [row["action"] for row in client.get("/api/audit").json()["items"][:2]]
    assert actions == ["backlog.resume", "backlog.pause"]


# -- the audit log ----------------------------------------------------------------------------------------


def test_the_audit_log_is_paged_newest_first_and_exported_as_csv(service: Service) -> None:
    with service.login("zhao") as admin:
        first = admin.get("/api/audit", params={"per_page": 2}).json()
        second = admin.get("/api/audit", params={"per_page": 2, "page": 2}).json()
        exported = admin.get("/api/audit.csv").text.lstrip("\ufeff")
    ids = [row["id"] for row in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and first["total"] >= 4
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0][:5] == ["id", "at", "actor", "role", "action"]
    assert {row[4] for row in rows[1:]} >= {"user.add", "job.review", "backlog.pause"}
    assert any(row[2].startswith("cli:") for row in rows[1:])


# -- the pages --------------------------------------------------------------------------------------------


def open_as(browser: Any, service: Service, name: str) -> tuple[Any, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(service.live.base_url + "/login")
    page.wait_for_selector("body.ready")
    page.fill("#username", name)
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_selector("body.ready")
    return page, errors


# (account, review tab shown, re-run shown, review buttons on the job page, pause button)
PAGE_CONTROLS = [
    ("wang", False, False, False, False),
    ("li", True, False, True, False),
    ("zhao", True, True, True, True),
]


@pytest.mark.parametrize(("name", "review_tab", "rerun", "verdicts", "pause"), PAGE_CONTROLS)
def test_the_pages_show_only_what_the_role_may_use(
    browser: Any, service: Service, name: str, review_tab: bool, rerun: bool, verdicts: bool, pause: bool
) -> None:
    page, errors = open_as(browser, service, name)
    try:
        page.goto(service.live.base_url + "/#history")
        page.wait_for_selector("#watch-rows tr")
        assert page.locator('[data-tab="review"]').is_visible() is review_tab
        assert page.locator("#backlog-toggle").is_visible() is pause
        assert page.locator('#watch-rows tr[data-watch="archive"] td').first.text_content() == "archive"
        assert page.locator("#audit").is_visible() is pause  # the audit log: admins only
        if pause:
            newest = "fetch('/api/audit?per_page=50').then(r => r.json()).then(b => b.items.length)"
            logged = page.evaluate(newest)
            page.wait_for_function(f"document.querySelectorAll('#audit-rows tr').length === {logged}")
            assert page.locator("#audit-empty").is_visible() is (logged == 0)
        page.goto(f"{service.live.base_url}/jobs/{service.scan_job}")
        page.wait_for_selector("body.ready")
        assert page.locator("#rerun").is_visible() is rerun
        assert (page.locator("#review button").count() > 0) is verdicts
    finally:
        page.context.close()
    assert errors == []


# -- the CLI and the throttle -----------------------------------------------------------------------------


def test_passwd_ends_the_accounts_sessions_and_remove_ends_the_account(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def users(*args: str, stdin: str = "") -> int:
        return users_cli(service.config_path, *args, stdin=stdin, monkeypatch=monkeypatch)

    assert users("add", "temp", "--role", "viewer", "--password-stdin", stdin="first-pass-9\n") == 0
    with service.login("temp", "first-pass-9") as client:
        assert users("passwd", "temp", "--password-stdin", stdin="second-pass-9\n") == 0
        assert client.get("/api/me").status_code == 401  # the old session ended with the old password
    with service.login("temp", "second-pass-9") as client:
        assert client.get("/api/me").json()["role"] == "viewer"
    assert users("add", "TEMP", "--role", "admin", "--password-stdin", stdin="x-pass-123\n") == 1  # same name
    assert users("add", "short", "--role", "admin", "--password-stdin", stdin="abc\n") == 1
    assert users("list") == 0
    listed = capsys.readouterr().out
    assert "temp\tviewer" in listed and "zhao\tadmin" in listed
    assert users("remove", "temp") == 0
    login = {"username": "temp", "password": "second-pass-9"}
    assert httpx.post(service.live.base_url + "/login", data=login).status_code == 401


def test_ten_wrong_passwords_a_minute_for_one_name_are_429_even_with_the_right_one(service: Service) -> None:
    url = service.live.base_url + "/login"
    statuses = [
        httpx.post(url, data={"username": "li", "password": f"wrong-{n}"}).status_code for n in range(10)
    ]
    right = httpx.post(url, data={"username": "li", "password": PASSWORDS["li"]})
    # Earlier tests' wrong tries from this address count too, so the lock may start before the tenth.
    assert statuses[0] == 401 and statuses.count(401) + statuses.count(429) == 10
    assert right.status_code == 429 and int(right.headers["Retry-After"]) >= 1
