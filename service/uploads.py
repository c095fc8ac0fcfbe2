"""Images sent to the API: data URLs decoded, http(s) URLs fetched safely, bytes stored content-addressed.

Every image a client sends ends up as a file `data_dir/uploads/<sha[:2]>/<sha>.<ext>`: the history keeps a
reference to it like any other job's image, and the same upload sent twice (a chat client resends the
first image with every follow-up) is one file. The extension comes from the bytes, not from the declared
type, so identical bytes always land on the same name.

Fetching image URLs (only with `[http] allow_image_urls`) is a server-side request forgery risk, so:
- only http and https, at most `MAX_REDIRECTS` hops, each hop checked again;
- the host is resolved once and *every* address must be public (no private, loopback, link-local, reserved,
  multicast or unspecified one, IPv4-mapped IPv6 unwrapped first); the connection then goes to the address
  we checked, with the original Host header and TLS server name, so a DNS answer cannot change between the
  check and the connect (DNS rebinding);
- environment proxies are ignored (a proxy would connect on our behalf to wherever it likes);
- one deadline covers the whole fetch, redirects included, and the body is read with a size cap.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from db.faults import storage_fault
from service import formats
from service.config import Config, ImagesConfig
from service.errors import PermanentError
from service.images import decode_image
from service.messages import Message, msg

log = logging.getLogger(f"tuwen.{__name__}")

MAX_REDIRECTS = 3
# What a data URL may declare: the types of service/formats.py, plus "no idea" (browsers send
# application/octet-stream for files they have no type for, such as HEIC on Windows; the bytes decide).
# Anything else is refused before its payload is even decoded.
IMAGE_MIME_TYPES = frozenset((*formats.mime_types(), formats.UNTYPED))
# Image errors that mean "too big" (413) rather than "not a usable image" (422).
TOO_LARGE_CODES = {"image_too_large", "image_bomb"}
_WHITESPACE = re.compile(rb"[ \t\r\n]+")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageRejected(Exception):
    """An image of the request cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: Message) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message


@dataclass(frozen=True)
class StoredUpload:
    """An upload on disk."""

    path: Path
    sha256: str
    size: int


def image_limit_bytes(config: Config) -> int:
    """The most bytes one image may have: the smaller of the body limit and `[images] max_file_mb`."""
    return int(min(config.http.max_body_mb, config.images.max_file_mb) * 1024 * 1024)


async def save_image(url: str, config: Config) -> StoredUpload:
    """Turn one `image_url` into a stored upload (data URL, or a fetched http(s) URL when allowed)."""
    limit = image_limit_bytes(config)
    if url[:5].lower() == "data:":
        data, declared = decode_data_url(url, limit), url[5:].split(";")[0]
    elif not url.lower().startswith(("http://", "https://")):
        raise ImageRejected(400, msg("api_bad_request", reason="image URLs must be http(s) or data URLs"))
    elif not config.http.allow_image_urls:
        raise ImageRejected(400, msg("api_image_url_disabled"))
    else:
        timeout = config.http.image_url_timeout_seconds
        data, declared = await fetch_image_url(url, timeout=timeout, max_bytes=limit)
    # File writes (and the fsync) off the event loop: other requests keep flowing meanwhile.
    return await asyncio.to_thread(store_upload, config.storage.data_dir, data, declared)


def check_decodes(path: Path, limits: ImagesConfig, job_id: str) -> int:
    """Decode a stored upload the way the worker will; its pixels (first page's size × pages).

    `ImageRejected` (413 or 422) when it cannot be decoded.
    """
    try:
        decoded = decode_image(path, limits, job_id)
        return decoded.width * decoded.height * max(1, decoded.source_pages)
    except PermanentError as exc:
        status = 413 if exc.code in TOO_LARGE_CODES else 422
        raise ImageRejected(status, exc.message) from exc
    except Exception as exc:  # a decoder bug on a hostile file is the file's problem, not a 500
        log.exception("unexpected error while checking an upload")
        raise ImageRejected(422, msg("image_corrupt")) from exc


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:<type>;base64,...` URL; `ImageRejected` when it is not one or too big.

    `<type>` is one of `IMAGE_MIME_TYPES`: an image type or `application/pdf` of service/formats.py.
    """
    header, comma, payload = url[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in params[1:]:
        raise ImageRejected(400, msg("api_bad_request", reason="image data URLs must be base64-encoded"))
    if params[0] not in IMAGE_MIME_TYPES:
        raise ImageRejected(422, msg("image_not_image"))
    # Line breaks are how some encoders wrap base64; any other stray character is refused below.
    data = _WHITESPACE.sub(b"", payload.encode("ascii", errors="replace"))
    if len(data) // 4 * 3 > max_bytes:  # checked before decoding, so a huge payload costs no memory twice
        raise ImageRejected(413, msg("api_too_large", limit_mb=_mb(max_bytes)))
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(400, msg("api_bad_request", reason=f"invalid base64 image data: {exc}")) from exc
    if len(decoded) > max_bytes:
        raise ImageRejected(413, msg("api_too_large", limit_mb=_mb(max_bytes)))
    return decoded


def extension_for(data: bytes, declared_mime: str = "") -> str:
    """A file extension from the content's magic bytes (the declared type only when they say nothing)."""
    known = formats.sniff(data[: formats.SNIFF_BYTES]) or formats.for_mime(declared_mime)
    return known.extension if known is not None else "bin"


def store_upload(data_dir: Path, data: bytes, declared_mime: str = "") -> StoredUpload:
    """Write `data` to `data_dir/uploads/<sha[:2]>/<sha>.<ext>` atomically; identical bytes share a file."""
    sha = hashlib.sha256(data).hexdigest()
    folder = data_dir / "uploads" / sha[:2]
    path = folder / f"{sha}.{extension_for(data, declared_mime)}"
    try:
        if path.exists():
            # Sent again (a chat client resends its photo with each follow-up): it is in use again, so
            # the retention clean-up (`[storage] keep_uploads_days`) counts from now.
            os.utime(path)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            # A temporary name in the same folder, then an atomic rename: a reader (the worker, a
            # thumbnail) never sees half a file, and two requests writing the same upload both end well.
            temp = folder / f".{sha}.{uuid.uuid4().hex}.tmp"
            try:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
    except OSError as exc:
        fault = storage_fault(exc, folder)
        if fault is None:
            raise
        raise fault from exc  # a full or read-only disk: 507/503 for the client, a wait for a bot
    return StoredUpload(path=path, sha256=sha, size=len(data))


def address_refused(address: IPAddress) -> bool:
    """Whether an image URL may not reach `address` (anything but a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    )


async def fetch_image_url(url: str, *, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """Download an image URL under the rules in the module docstring; returns (bytes, content type)."""
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(url, max_bytes)
    except TimeoutError as exc:
        raise ImageRejected(
            422, msg("api_image_url_failed", reason=f"timed out after {timeout:g} s")
        ) from exc
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageRejected(422, msg("api_image_url_failed", reason=reason)) from exc


async def _fetch(url: str, max_bytes: int) -> tuple[bytes, str]:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target = _parse(url)
            address = await _public_address(target)
            request = client.build_request(
                "GET",
                target.copy_with(host=address),
                headers={"Host": _host_header(target), "Accept": "image/*"},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            )
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(str(target), response.headers["location"])
                    continue
                if response.status_code != 200:
                    reason = f"HTTP {response.status_code}"
                    raise ImageRejected(422, msg("api_image_url_failed", reason=reason))
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ImageRejected(413, msg("api_too_large", limit_mb=_mb(max_bytes)))
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ImageRejected(413, msg("api_too_large", limit_mb=_mb(max_bytes)))
                return bytes(body), response.headers.get("content-type", "")
            finally:
                await response.aclose()
    raise ImageRejected(422, msg("api_image_url_failed", reason=f"more than {MAX_REDIRECTS} redirects"))


def _parse(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ImageRejected(400, msg("api_bad_request", reason=f"invalid image URL: {exc}")) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise ImageRejected(400, msg("api_bad_request", reason="image URLs must be http(s) or data URLs"))
    return target


async def _public_address(target: httpx.URL) -> str:
    """Resolve the host; refuse unless every address is public. Returns one address to connect to."""
    host = target.host
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageRejected(422, msg("api_image_url_failed", reason=f"cannot resolve {host}: {exc}")) from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or any(address_refused(address) for address in addresses):
        log.warning("refused an image URL to %s (%s)", host, ", ".join(map(str, addresses)))
        raise ImageRejected(400, msg("api_image_url_refused", host=host))
    return str(addresses[0])


def _host_header(target: httpx.URL) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port in (None, default) else f"{host}:{target.port}"


def _mb(limit_bytes: int) -> str:
    return f"{limit_bytes / 1048576:g}"
