"""service/uploads.py on its own: data URLs, content-addressed storage, and fetching image URLs safely
from a real HTTP server on 127.0.0.1 (let through by allowing exactly that address; every other rule stays).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.render import render_text_image
from service import uploads
from service.uploads import ImageRejected, decode_data_url, extension_for, fetch_image_url, store_upload
from tests import documents
from tests.live import running_service

REFUSED = "10.1.2.3 172.16.0.1 192.168.1.10 127.0.0.1 169.254.169.254 100.64.0.1 0.0.0.0 224.0.0.1 240.0.0.1"
REFUSED_V6 = "::1 fe80::1 fd00::1 ::ffff:10.0.0.1 ::ffff:127.0.0.1"
PUBLIC = "8.8.8.8 1.1.1.1 2606:4700:4700::1111"
BIG = b"\xff\xd8\xff" + b"\x00" * 3_000_000


@pytest.mark.parametrize("address", f"{REFUSED} {REFUSED_V6} {PUBLIC}".split())
def test_which_addresses_an_image_url_may_reach(address: str) -> None:
    refused = address not in PUBLIC.split()
    assert uploads.address_refused(ipaddress.ip_address(address)) is refused


def test_data_urls_decode_strictly_and_within_the_limit() -> None:
    payload = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    encoded = base64.b64encode(payload).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # MIME-style line breaks
    assert decode_data_url(f"data:image/png;base64,{encoded}", 10_000) == payload
    assert decode_data_url(f"data:IMAGE/PNG;charset=x;base64,{wrapped}", 10_000) == payload


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("data:image/png,aGVsbG8=", 400, "api_bad_request"),
        ("data:image/png;base64,aGVs*G8=", 400, "api_bad_request"),
        ("data:image/png;base64,aGVsbG8", 400, "api_bad_request"),
        ("data:text/plain;base64,aGVsbG8=", 422, "image_not_image"),
        ("data:image/png;base64," + "A" * 2000, 413, "api_too_large"),
    ],
    ids=["not-base64", "stray-character", "bad-padding", "not-an-image-type", "too-large"],
)
def test_bad_data_urls_are_refused(url: str, status: int, code: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        decode_data_url(url, 1000)
    assert (refused.value.status, refused.value.message.code) == (status, code)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")],
)
def test_the_extension_comes_from_the_bytes(fmt: str, ext: str) -> None:
    assert extension_for(_encoded(fmt), "image/png") == ext


def test_identical_uploads_share_one_file_whatever_they_claim(tmp_path: Path) -> None:
    data = _encoded("JPEG")
    first = store_upload(tmp_path, data, "image/jpeg")
    second = store_upload(tmp_path, data, "image/png")  # a wrong label changes nothing
    unknown = store_upload(tmp_path, b"mystery bytes", "image/webp")
    sha = hashlib.sha256(data).hexdigest()
    assert first == second and first.path == tmp_path / "uploads" / sha[:2] / f"{sha}.jpg"
    assert first.path.read_bytes() == data and first.size == len(data)
    assert unknown.path.suffix == ".webp"
    assert sorted(p.name for p in (tmp_path / "uploads").rglob("*")) == sorted(
        [sha[:2], f"{sha}.jpg", unknown.sha256[:2], unknown.path.name]
    )


# --- fetching image URLs ------------------------------------------------------------------------------


class _ImageServer(BaseHTTPRequestHandler):
    """A scan, redirects (one to the cloud metadata address), huge files, a 404 and a slow answer."""

    scan = b""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        routes: dict[str, Callable[[], None]] = {
            "/scan.jpg": lambda: self._send(200, self.scan),
            "/to-scan": lambda: self._send(302, b"", location="/scan.jpg"),
            "/to-metadata": lambda: self._send(302, b"", location="http://169.254.169.254/latest/meta-data"),
            "/loop": lambda: self._send(302, b"", location="/loop"),
            "/big.jpg": lambda: self._send(200, BIG),
            "/big-unsized.jpg": lambda: self._send(200, BIG, sized=False),
            "/slow.jpg": self._slow,
        }
        routes.get(self.path, lambda: self._send(404, b"missing"))()

    def _slow(self) -> None:
        time.sleep(2)
        self._send(200, self.scan)

    def _send(self, status: int, body: bytes, sized: bool = True, location: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        if location:
            self.send_header("Location", location)
        if sized:  # else HTTP/1.0 without a length: the body ends when the connection closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(scan_bytes, monkeypatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The image server's base URL, with exactly 127.0.0.1 allowed as a destination."""
    real = uploads.address_refused
    monkeypatch.setattr(
        uploads, "address_refused", lambda a: a != ipaddress.ip_address("127.0.0.1") and real(a)
    )
    _ImageServer.scan = scan_bytes(["网址图片"])
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http_server.server_address[1]}"
    http_server.shutdown()


def _fetch(url: str) -> tuple[bytes, str]:
    return asyncio.run(fetch_image_url(url, timeout=0.5, max_bytes=2 * 1024 * 1024))


def test_an_image_url_is_fetched_through_a_redirect(server: str) -> None:
    data, content_type = _fetch(server + "/to-scan")
    assert data == _ImageServer.scan and content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("path", "status", "code", "says"),
    [
        ("/to-metadata", 400, "api_image_url_refused", "169.254.169.254"),
        ("/loop", 422, "api_image_url_failed", "redirects"),
        ("/big.jpg", 413, "api_too_large", "2 MB"),
        ("/big-unsized.jpg", 413, "api_too_large", "2 MB"),
        ("/missing.jpg", 422, "api_image_url_failed", "HTTP 404"),
        ("/slow.jpg", 422, "api_image_url_failed", "timed out"),
    ],
)
def test_image_url_failures(server: str, path: str, status: int, code: str, says: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        _fetch(server + path)
    assert (refused.value.status, refused.value.message.code) == (status, code)
    assert says in str(refused.value.message)


def test_a_fetched_image_is_answered_through_the_api(server: str, make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    config = make_config(http={"allow_image_urls": True})
    parts = [
        {"type": "text", "text": "写了什么？"},
        {"type": "image_url", "image_url": {"url": server + "/to-scan"}},
    ]
    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}]}
    with running_service(config, backend_factory) as live:
        response = httpx.post(live.base_url + "/v1/chat/completions", json=body, timeout=30)
        (job,) = live.app.store.list_jobs(source="api")
    assert response.status_code == 200 and "网址图片" in response.json()["choices"][0]["message"]["content"]
    assert Path(job.images[0]).read_bytes() == _ImageServer.scan


# --- HEIC, AVIF and PDF through the API ------------------------------------------------------------------


def _answer(live: Any, url: str) -> tuple[httpx.Response, Any]:
    parts = [{"type": "text", "text": "写了什么？"}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}]}
    response = httpx.post(live.base_url + "/v1/chat/completions", json=body, timeout=60)
    (job,) = live.app.store.list_jobs(source="api")
    return response, job


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [
        ("HEIF", "image/heic", "heic"),
        ("HEIF", "application/octet-stream", "heic"),  # what a browser sends for a file it has no type for
        ("AVIF", "image/avif", "avif"),
    ],
)
def test_a_phone_photo_is_answered_upright_through_the_api(
    make_config, backend_factory, fmt: str, mime: str, ext: str
) -> None:  # type: ignore[no-untyped-def]
    # Stored on its side with EXIF orientation 8 (view turned back): OCR reads the text only when upright.
    upright = render_text_image(["手机照片", "Phone photo"], size=(600, 300), font_size=48)
    photo = documents.photo_bytes(upright.transpose(Image.Transpose.ROTATE_270), fmt, orientation=8)
    with running_service(make_config(), backend_factory) as live:
        response, job = _answer(live, _data_url(photo, mime))
    assert response.status_code == 200, response.text
    assert "手机照片" in response.json()["choices"][0]["message"]["content"]
    assert Path(job.images[0]).suffix == f".{ext}" and (job.width, job.height) == (600, 300)


def test_a_pdf_is_answered_page_by_page_through_the_api(make_config, backend_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = documents.scan_pdf(tmp_path / "letter.pdf", [["第一页 来信"], ["第二页 回信"]]).read_bytes()
    with running_service(make_config(), backend_factory) as live:
        response, job = _answer(live, _data_url(pdf, "application/pdf"))
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    assert "第一页" in answer and "第二页" in answer
    assert Path(job.images[0]).suffix == ".pdf" and job.pages == 2
