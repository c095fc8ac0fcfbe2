"""Sidecars next to a scan: `NAME.EXT.json` (everything we know) and `NAME.EXT.xmp` (for photo tools).

- The XMP file is *shared* (digiKam, darktable, Immich and photographers write the same `NAME.EXT.xmp`), so
  we merge (`xmp_merge` has the rules): tuwen rewrites only its own `tuwen:` namespace, and the
  caption and keywords only where they are still what tuwen wrote (recorded by hash and by list); a
  person's caption, keywords, rating, title and every other element, attribute, prefix and comment stay.
- Hostile XML: any DOCTYPE is refused before expat reads its internal subset, so no entity can be declared,
  expanded or fetched (XMP never carries a DTD); stdlib only, no runtime dependency on defusedxml. A file we
  cannot use is never destroyed: it is kept as `NAME.EXT.xmp.bak-<UTC time>` and we write fresh.
- We serialize ourselves: `ElementTree.tostring` renames prefixes to `ns0` and needs process-global state.
- Model output is untrusted: characters XML 1.0 forbids are dropped, `& < > "` escaped, CR written as `&#13;`.
- Every write goes to `NAME.EXT.<random>.tuwen-tmp` in the target folder (the watcher ignores it), is
  fsynced and then `os.replace`d, so readers see the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from service import __version__
from service.sidecars.xmp_merge import (
    DC_DESCRIPTION,
    LI,
    RDF,
    STANDARD_PREFIXES,
    TIFF_DESCRIPTION,
    TUWEN_NS,
    XML_LANG,
    XML_NS,
    XMPMETA,
    XMPTK,
    Caption,
    clean_xml_text,
    merge_answer,
)

logger = logging.getLogger(f"tuwen.{__name__}")

SIDECAR_SCHEMA = "tuwen-sidecar/1"
TMP_SUFFIX = ".tuwen-tmp"
BACKUP_INFIX = ".bak-"
# Larger "XMP" files are not sidecars anyone wrote by hand; we keep them as a backup instead of parsing.
MAX_EXISTING_XMP_BYTES = 16 * 1024 * 1024
_MAX_XML_DEPTH = 64
__all__ = [
    "DC_DESCRIPTION",
    "LI",
    "TIFF_DESCRIPTION",
    "TUWEN_NS",
    "XML_LANG",
    "SidecarRecord",
    "clean_xml_text",
]


@dataclass(frozen=True, kw_only=True)
class SidecarRecord:
    """The outcome of one scan, as written to its sidecars (keyword-only: too many strings to risk order)."""

    status: Literal["done", "failed"]
    file_name: str
    question: str
    answer: str | None
    ocr_text: str | None
    sha256: str
    model: str
    model_version: str
    backend: str
    created_at: datetime
    width: int | None
    height: int | None
    pages: int = 1
    error: str | None = None
    job_id: str
    prompt_hash: str
    tags: tuple[str, ...] = ()
    correction: str | None = None
    # "ocr" (text read from the scan, the question not answered) or "model"; None for jobs from before 0003.
    answer_kind: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.status not in ("done", "failed"):
            raise ValueError(f"status must be 'done' or 'failed', not {self.status!r}")
        if self.created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        # Callers pass config lists and plain dicts; freeze them so the record really is immutable.
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def corrected(self) -> bool:
        """Whether staff gave a correction in review (a person's words, not the model's)."""
        return bool(self.correction and self.correction.strip())

    @property
    def found_no_text(self) -> bool:
        """An OCR answer that read nothing: its answer is only a "no text found" notice, not a caption."""
        return self.answer_kind == "ocr" and not (self.ocr_text or "").strip()

    @property
    def description(self) -> str:
        """The caption tuwen offers photo tools: the staff correction, else the answer ("" for no OCR text).

        Whether it reaches `dc:description` depends on what is there already (service/sidecars/xmp_merge.py).
        """
        if self.corrected:
            return self.correction or ""
        return "" if self.found_no_text else self.answer or ""


def sidecar_paths(file: Path, watch_root: Path, output_dir: Path | None) -> tuple[Path, Path]:
    """Return `(json_path, xmp_path)` for `file`: beside it, or mirrored under `output_dir`.

    With `output_dir` (for read-only shares) the sidecars go to the same relative path under it, so
    `root/a/b.jpg` gives `output_dir/a/b.jpg.json`. Raises ValueError when `file` is not under `watch_root`.
    """
    folder = file.parent if output_dir is None else output_dir / file.parent.relative_to(watch_root)
    return folder / f"{file.name}.json", folder / f"{file.name}.xmp"


def record_to_dict(record: SidecarRecord) -> dict[str, object]:
    """The JSON sidecar's content (also handy for API responses); `error` only for failures."""
    data: dict[str, object] = {"schema": SIDECAR_SCHEMA, "tuwen_version": __version__}
    data.update((f.name, getattr(record, f.name)) for f in fields(record) if f.name not in ("error", "extra"))
    data.update(created_at=record.created_at.isoformat(), tags=list(record.tags))
    if record.status == "failed":
        data["error"] = record.error
    # Extras add context; they never overwrite what the record itself says.
    data.update((key, value) for key, value in record.extra.items() if key not in data)
    return data


def write_json_sidecar(path: Path, record: SidecarRecord) -> None:
    """Atomically write `record` as indented UTF-8 JSON at `path` (parent folders are created)."""
    text = json.dumps(record_to_dict(record), ensure_ascii=False, indent=2, default=str)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    logger.debug("wrote %s", path)


def write_xmp_sidecar(path: Path, record: SidecarRecord) -> None:
    """Merge `record` (a done record) into the XMP sidecar at `path`, atomically.

    tuwen's namespace is rewritten; the caption and keywords only where they are still what tuwen wrote, so
    a person's caption, keywords and everything else in an existing file are kept (`xmp_merge`).
    An existing file that is not usable XMP is kept as a `.bak-<timestamp>` copy and a fresh packet written.
    """
    if record.status != "done":
        raise ValueError("XMP sidecars are written only for done records")
    root, prefixes = _load_existing(path, record.job_id)
    rdf = root.find(RDF)
    if rdf is None:
        rdf = ET.SubElement(root, RDF)
    text = clean_xml_text(record.description)
    outcome = merge_answer(
        rdf,
        caption=Caption(text, "correction" if record.corrected else "model") if text.strip() else None,
        tags=record.tags,
        values=_tuwen_values(record),
        job_id=clean_xml_text(record.job_id),
        sha256=clean_xml_text(record.sha256),
    )
    if outcome.persons_caption_kept:
        # Not a problem, but staff may wonder why their review does not show up as the caption in digiKam.
        logger.info(
            "%s has a caption someone else wrote; kept it, tuwen's %s is in tuwen:%s",
            path,
            "correction" if record.corrected else "answer",
            "Correction" if record.corrected else "Answer",
        )
    root.set(XMPTK, f"tuwen {__version__}")
    atomic_write_bytes(path, _serialize(root, prefixes))
    logger.debug("wrote %s", path)


def _tuwen_values(record: SidecarRecord) -> dict[str, str]:
    """tuwen's simple properties (local name → text); empty ones are left out."""
    corrected = record.corrected
    values = {
        "Answer": record.answer or "",
        "OCRText": record.ocr_text or "",
        "AnswerKind": record.answer_kind or "",
        "Correction": (record.correction or "") if corrected else "",
        # AIGenerated describes tuwen's text (the correction, else the answer), not a caption a person kept.
        "AIGenerated": "False" if corrected else "True",
        "Corrected": "True" if corrected else "False",
        # The name the first sidecars gave the model's words beside a correction; kept for their readers.
        "ModelAnswer": (record.answer or "") if corrected else "",
        "Model": record.model,
        "ModelVersion": record.model_version,
        "Backend": record.backend,
        "PromptHash": record.prompt_hash,
        "CreatedAt": record.created_at.isoformat(timespec="seconds"),
        "JobID": record.job_id,
        # Who reviewed it (an account name or "api-key"), from `jobs.reviewed_by`.
        "ReviewedBy": str(record.extra.get("reviewed_by") or ""),
        "SHA256": record.sha256,
        "Version": __version__,
    }
    return {local: clean_xml_text(value) for local, value in values.items() if value}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a fsynced `.tuwen-tmp` file in the same folder and `os.replace`."""
    # 50 characters (at most 200 UTF-8 bytes) keep the name under the 255-byte limit for any scan name.
    tmp = path.with_name(f"{path.name[:50]}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:  # a new output folder: made only then (a mkdir per write was 2 % of a job)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            # A replaced sidecar keeps the permissions someone gave it (e.g. group-readable for Immich).
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# --- reading an existing packet ---------------------------------------------------------------------------


class _UnusableXmp(Exception):
    """The existing file cannot be merged into (not XML, hostile, or not an XMP packet)."""


class _SafeTarget(ET.TreeBuilder):
    """A tree builder that records namespace prefixes and refuses any DOCTYPE."""

    def __init__(self) -> None:
        super().__init__(insert_comments=True)
        self.prefixes: dict[str, str] = {}
        self.depth = 0

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        # Called at the start of the DOCTYPE, before expat reads any entity declaration.
        raise _UnusableXmp(f"DOCTYPE {name!r} refused")

    def start_ns(self, prefix: str, uri: str) -> None:
        self.prefixes.setdefault(uri, prefix)

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        # Our serializer recurses; refuse absurd nesting while parsing instead of overflowing later.
        self.depth += 1
        if self.depth > _MAX_XML_DEPTH:
            raise _UnusableXmp("nested too deeply")
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self.depth -= 1
        return super().end(tag)


def _load_existing(path: Path, job_id: str) -> tuple[ET.Element, dict[str, str]]:
    """The existing packet's root (x:xmpmeta) and prefixes, or a fresh root when there is nothing usable."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ET.Element(XMPMETA), {}
    try:
        if size > MAX_EXISTING_XMP_BYTES:
            raise _UnusableXmp(f"{size} bytes")
        target = _SafeTarget()
        parser = ET.XMLParser(target=target)
        parser.feed(path.read_bytes())
        root = parser.close()
        if root.tag == RDF:  # a bare rdf:RDF packet, as some old tools wrote
            rdf, root = root, ET.Element(XMPMETA)
            root.append(rdf)
        if root.tag != XMPMETA:
            raise _UnusableXmp(f"root element {root.tag!r} is not x:xmpmeta")
        return root, target.prefixes
    except (ET.ParseError, _UnusableXmp, UnicodeError) as exc:
        backup = _backup(path)
        logger.warning("%s is not usable XMP (%s); kept as %s", path, exc, backup)
        return ET.Element(XMPMETA), {}


def _backup(path: Path) -> Path:
    """Keep `path` under a new `.bak-<timestamp>` name without ever overwriting an earlier backup."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}")
    try:
        os.link(path, backup)  # instant and atomic; the original stays in place until os.replace
    except FileExistsError:
        raise
    except OSError:
        shutil.copy2(path, backup)  # SMB/FAT shares have no hard links
    return backup


# --- writing ----------------------------------------------------------------------------------------------

_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>\n'
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}
_TEXT_ESCAPES = str.maketrans(_ESCAPES)
_ATTR_ESCAPES = str.maketrans({**_ESCAPES, '"': "&quot;", "\n": "&#10;", "\t": "&#9;"})


def _serialize(root: ET.Element, known_prefixes: dict[str, str]) -> bytes:
    """The packet as UTF-8 bytes, every namespace declared once on x:xmpmeta with its familiar prefix."""
    ET.indent(root, space=" ")
    used = (name for e in root.iter() if isinstance(e.tag, str) for name in (e.tag, *e.attrib))
    uris = dict.fromkeys(name[1:].partition("}")[0] for name in used if name.startswith("{"))
    uris.pop(XML_NS, None)
    prefixes: dict[str, str] = {XML_NS: "xml"}
    for uri in uris:
        wanted = STANDARD_PREFIXES.get(uri) or known_prefixes.get(uri) or "ns"
        prefix, n = wanted, 1
        while prefix in prefixes.values() or not prefix.isidentifier():
            prefix, n = f"ns{n}", n + 1
        prefixes[uri] = prefix
    declarations = {f"xmlns:{p}": uri for uri, p in prefixes.items() if uri != XML_NS}
    out: list[str] = [_PACKET_BEGIN]
    _write_element(root, prefixes, declarations, out)
    out.append(_PACKET_END)
    return "".join(out).encode("utf-8")


def _name(clark: str, prefixes: dict[str, str]) -> str:
    if not clark.startswith("{"):
        return clark
    uri, _, local = clark[1:].partition("}")
    return f"{prefixes[uri]}:{local}"


def _write_element(element: ET.Element, names: dict[str, str], decl: dict[str, str], out: list[str]) -> None:
    if element.tag is ET.Comment:
        out.append(f"<!--{clean_xml_text(element.text or '')}-->")
    else:
        name = _name(str(element.tag), names)
        attrs = {**decl, **{_name(k, names): v for k, v in element.attrib.items()}}
        out.append(f"<{name}")
        out.extend(f' {k}="{clean_xml_text(v).translate(_ATTR_ESCAPES)}"' for k, v in attrs.items())
        if element.text is None and not len(element):
            out.append("/>")
        else:
            out.append(">" + clean_xml_text(element.text or "").translate(_TEXT_ESCAPES))
            for child in element:
                _write_element(child, names, {}, out)
            out.append(f"</{name}>")
    out.append(clean_xml_text(element.tail or "").translate(_TEXT_ESCAPES))


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some filesystems (SMB, Windows) cannot open folders, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
