"""JSON and XMP sidecars: paths, content, merging into shared XMP files, hostile input and atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from service.sidecars.sidecar import (
    DC_DESCRIPTION,
    LI,
    TIFF_DESCRIPTION,
    TUWEN_NS,
    XML_LANG,
    SidecarRecord,
    sidecar_paths,
    write_json_sidecar,
    write_xmp_sidecar,
)

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

ANSWER = "1980年代的全家福，五人站在门前 / A family of five in front of a door, 1980s"
HOSTILE = "<script>alert(1)</script> & \"quotes\" \x00\x07 '单引号' ]]> 第二行\r\n第三行"
CREATED = datetime(2025, 3, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=8)))

PRE_EXISTING_XMP = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="4"
    darktable:xmp_version="5">
   <!-- photographer's note -->
   <dc:creator><rdf:Seq><rdf:li>王摄影</rdf:li></rdf:Seq></dc:creator>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">old caption</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag><rdf:li>family</rdf:li></rdf:Bag></dc:subject>
   <darktable:history>
    <rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/></rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><lolz>&lol3;</lolz></x:xmpmeta>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/">&secret;</x:xmpmeta>
"""


def make_record(**changes: Any) -> SidecarRecord:
    base = SidecarRecord(
        status="done",
        file_name="scan.jpg",
        question="请用20字以内描述图中场景、人物和时间特征",
        answer=ANSWER,
        ocr_text="光荣之家\n1983",
        sha256="ab" * 32,
        model="zai-org/GLM-4.6V-Flash",
        model_version="rev-2025-12",
        backend="transformers",
        created_at=CREATED,
        width=1000,
        height=700,
        job_id="job-42",
        prompt_hash="ph-1234",
        tags=("老照片", "家庭/1980s"),
    )
    return replace(base, **changes)


def exiftool(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-struct", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)[0]


def descriptions(path: Path) -> dict[tuple[str, str], list[str]]:
    """(property, language) -> texts, read with the standard library parser."""
    root = ET.parse(path).getroot()
    found: dict[tuple[str, str], list[str]] = {}
    for prop in (DC_DESCRIPTION, TIFF_DESCRIPTION):
        for li in root.iter(prop):
            for item in li.iter(LI):
                found.setdefault((prop, item.get(XML_LANG, "")), []).append(item.text or "")
    return found


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    folder = tmp_path / "watch" / "2025" / "三月"
    folder.mkdir(parents=True)
    path = folder / "scan.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    os.utime(path, (1_600_000_000, 1_600_000_000))
    return path


def test_paths_beside_the_file(scan: Path, tmp_path: Path) -> None:
    json_path, xmp_path = sidecar_paths(scan, tmp_path / "watch", None)
    assert (json_path, xmp_path) == (scan.parent / "scan.jpg.json", scan.parent / "scan.jpg.xmp")


def test_paths_mirrored_under_output_dir_and_parents_created(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    json_path, xmp_path = sidecar_paths(scan, tmp_path / "watch", out)
    write_json_sidecar(json_path, make_record())
    write_xmp_sidecar(xmp_path, make_record())
    assert json_path == out / "2025" / "三月" / "scan.jpg.json"
    assert xmp_path == out / "2025" / "三月" / "scan.jpg.xmp"
    assert json_path.is_file() and xmp_path.is_file()
    assert sorted(p.name for p in scan.parent.iterdir()) == ["scan.jpg"]


def test_paths_refuse_a_file_outside_the_watch(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        sidecar_paths(tmp_path / "elsewhere" / "a.jpg", tmp_path / "watch", tmp_path / "out")


def test_json_round_trip_with_chinese(scan: Path) -> None:
    path = scan.parent / "scan.jpg.json"
    record = make_record(extra={"watch": "档案室", "status": "forged"})
    write_json_sidecar(path, record)
    raw = path.read_text(encoding="utf-8")
    data = json.loads(raw)
    assert "全家福" in raw and "\n  " in raw  # readable UTF-8, indented
    assert data["schema"] == "tuwen-sidecar/1" and data["tuwen_version"]
    assert data["status"] == "done" and "error" not in data
    assert data["answer"] == ANSWER and data["ocr_text"] == "光荣之家\n1983"
    assert data["question"] == record.question and data["correction"] is None
    assert datetime.fromisoformat(data["created_at"]) == CREATED
    assert (data["width"], data["height"], data["pages"]) == (1000, 700, 1)
    assert (data["sha256"], data["model"], data["model_version"]) == ("ab" * 32, record.model, "rev-2025-12")
    assert (data["backend"], data["job_id"], data["prompt_hash"]) == ("transformers", "job-42", "ph-1234")
    assert data["tags"] == ["老照片", "家庭/1980s"] and data["watch"] == "档案室"


def test_failed_record_json_has_the_error_and_no_xmp(scan: Path) -> None:
    error = "无法解码图片：文件已损坏或不完整 / cannot decode image: file is corrupt or truncated"
    record = make_record(status="failed", answer=None, error=error)
    json_path, xmp_path = sidecar_paths(scan, scan.parent, None)
    write_json_sidecar(json_path, record)
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["status"] == "failed" and data["error"] == error and data["answer"] is None
    with pytest.raises(ValueError):
        write_xmp_sidecar(xmp_path, record)
    assert not xmp_path.exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": datetime(2025, 3, 1, 9, 30)},
        {"status": "pending"},
    ],
    ids=["naive-time", "unknown-status"],
)
def test_inconsistent_records_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_record(**changes)


@needs_exiftool
def test_exiftool_reads_descriptions_keywords_and_provenance(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    write_xmp_sidecar(xmp_path, make_record())
    tags = exiftool(xmp_path)
    assert tags["XMP-dc:Description"] == ANSWER
    assert tags["XMP-dc:Description-zh-CN"] == ANSWER
    assert tags["XMP-tiff:ImageDescription"] == ANSWER
    assert tags["XMP-dc:Subject"] == ["老照片", "家庭", "1980s"]  # each level a flat keyword, as Lightroom
    assert tags["XMP-digiKam:TagsList"] == ["老照片", "家庭/1980s"]
    assert tags["XMP-lr:HierarchicalSubject"] == ["老照片", "家庭|1980s"]
    assert tags["XMP-tuwen:AIGenerated"] is True
    assert tags["XMP-tuwen:Model"] == "zai-org/GLM-4.6V-Flash"
    assert tags["XMP-tuwen:ModelVersion"] == "rev-2025-12"
    assert tags["XMP-tuwen:PromptHash"] == "ph-1234"
    assert tags["XMP-tuwen:JobID"] == "job-42"
    assert tags["XMP-tuwen:CreatedAt"] == "2025:03:01 09:30:15+08:00"
    assert "Warning" not in " ".join(tags)


@needs_exiftool
def test_merge_keeps_other_metadata_and_replaces_ours(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    xmp_path.write_text(PRE_EXISTING_XMP, encoding="utf-8")
    write_xmp_sidecar(xmp_path, make_record(answer="第一次 / first"))
    write_xmp_sidecar(xmp_path, make_record(answer="第二次 / second", tags=("扫描",)))
    tags = exiftool(xmp_path)
    text = xmp_path.read_text(encoding="utf-8")
    assert tags["XMP-dc:Creator"] == ["王摄影"]
    assert tags["XMP-xmp:Rating"] == 4
    assert tags["XMP-darktable:History"] == [{"Enabled": 1, "Operation": "exposure"}]
    assert tags["XMP-dc:Description"] == "old caption"  # a person's caption: the answer goes beside it
    assert tags["XMP-tuwen:Answer"] == "第二次 / second"
    assert tags["XMP-dc:Subject"] == ["family", "扫描"]  # the person's keyword stays, our old tags go
    assert tags["XMP-digiKam:TagsList"] == ["扫描"]
    assert text.count("<dc:description>") == 1 and "<tiff:ImageDescription>" not in text
    assert text.count("<tuwen:JobID>") == 1 and "photographer's note" in text
    assert 'xmlns:darktable="http://darktable.sf.net/"' in text


def test_correction_replaces_the_answer_and_keeps_the_model_words(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    write_xmp_sidecar(xmp_path, make_record(correction="1983年春节，李家全家福"))
    root = ET.parse(xmp_path).getroot()
    assert descriptions(xmp_path) == {
        (prop, lang): ["1983年春节，李家全家福"]
        for prop in (DC_DESCRIPTION, TIFF_DESCRIPTION)
        for lang in ("x-default", "zh-CN")
    }
    assert root.findtext(f".//{{{TUWEN_NS}}}ModelAnswer") == ANSWER
    assert root.findtext(f".//{{{TUWEN_NS}}}AIGenerated") == "False"


def test_hostile_answer_gives_valid_xml_that_reads_back(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    write_xmp_sidecar(xmp_path, make_record(answer=HOSTILE, tags=("<b>&", "a\x00b")))
    expected = HOSTILE.replace("\x00", "").replace("\x07", "")
    root = ET.parse(xmp_path).getroot()  # raises if the packet is not well-formed
    assert set(map(tuple, descriptions(xmp_path).values())) == {(expected,)}
    assert [item.text for bag in root.iter(f"{{{TUWEN_NS}}}Tags") for item in bag.iter(LI)] == ["<b>&", "ab"]
    assert "<script>" not in xmp_path.read_text(encoding="utf-8")


@needs_exiftool
def test_exiftool_reads_hostile_answer_back(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    write_xmp_sidecar(xmp_path, make_record(answer=HOSTILE))
    tags = exiftool(xmp_path)
    assert tags["XMP-dc:Description"] == HOSTILE.replace("\x00", "").replace("\x07", "")


@pytest.mark.parametrize(
    "existing",
    [
        "<x:xmpmeta><rdf:RDF>half written",
        "<html><body>not xmp</body></html>",
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
    ],
    ids=["truncated", "not-xmp", "billion-laughs", "external-entity"],
)
def test_unusable_existing_xmp_is_backed_up_not_destroyed(scan: Path, existing: str) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    xmp_path.write_text(existing, encoding="utf-8")
    write_xmp_sidecar(xmp_path, make_record())
    backups = list(scan.parent.glob("scan.jpg.xmp.bak-*"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf-8") == existing
    text = xmp_path.read_text(encoding="utf-8")
    assert set(map(tuple, descriptions(xmp_path).values())) == {(ANSWER,)}
    assert "lol" not in text and "root:" not in text


def test_writes_leave_no_temporary_files_and_never_touch_the_scan(scan: Path) -> None:
    before = (scan.read_bytes(), scan.stat().st_mtime_ns)
    json_path, xmp_path = sidecar_paths(scan, scan.parent, None)
    for answer in ("一", "二"):
        write_json_sidecar(json_path, make_record(answer=answer))
        write_xmp_sidecar(xmp_path, make_record(answer=answer))
    assert (scan.read_bytes(), scan.stat().st_mtime_ns) == before
    assert sorted(p.name for p in scan.parent.iterdir()) == ["scan.jpg", "scan.jpg.json", "scan.jpg.xmp"]


def test_failed_replace_keeps_the_old_sidecar_and_cleans_up(
    scan: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_path = scan.parent / "scan.jpg.json"
    write_json_sidecar(json_path, make_record(answer="旧 / old"))
    old = json_path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json_sidecar(json_path, make_record(answer="新 / new"))
    assert json_path.read_bytes() == old
    assert not list(scan.parent.glob("*.tuwen-tmp"))


def test_rewrite_keeps_the_sidecar_permissions(scan: Path) -> None:
    xmp_path = scan.parent / "scan.jpg.xmp"
    write_xmp_sidecar(xmp_path, make_record())
    xmp_path.chmod(0o640)
    write_xmp_sidecar(xmp_path, make_record(answer="二 / two", created_at=datetime.now(UTC)))
    assert xmp_path.stat().st_mode & 0o777 == 0o640
