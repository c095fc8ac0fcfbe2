"""Staff metadata in shared XMP sidecars is never overwritten: sidecars really written by exiftool and in
digiKam's/Exiv2's shape, merged by tuwen (answer, re-answer, correction), read back with exiftool."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.sidecars.sidecar import SidecarRecord, write_json_sidecar, write_xmp_sidecar
from service.sidecars.xmp_merge import ABOUT, DESCRIPTION

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

ANSWER = "1980年代的全家福，五人站在门前"
SECOND = "全家福，门前五人，约1983年"
CORRECTION = "1983年春节，李家全家福"
HUMAN = "李家1983年春节在老屋门前合影"
TAGS = ("老照片", "家庭/1980s")
# What exiftool reports about the file itself, and tuwen's own namespace: everything else is staff data.
NOT_STAFF = ("SourceFile", "ExifTool:", "System:", "File:", "XMP-x:XMPToolkit", "XMP-tuwen:")

STAFF_BY_EXIFTOOL = [
    f"-XMP-dc:Description={HUMAN}",
    "-XMP-dc:Description-en-US=The Li family at the old house, Spring Festival 1983",
    "-XMP-dc:Title=李家全家福",
    "-XMP-xmp:Rating=3",
    "-XMP-dc:Subject=家庭",
    "-XMP-dc:Subject=春节",
    "-XMP-digiKam:TagsList=人物/李家",
    "-XMP-digiKam:TagsList=事件/春节",
    "-XMP-lr:HierarchicalSubject=人物|李家",
    "-XMP-dc:Creator=王摄影",
]

# digiKam writes through Exiv2: one Description, simple properties as attributes, TagsList as rdf:Seq.
DIGIKAM_SHAPE = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:acme="http://example.com/acme/1.0/"
   xmp:Rating="3"
   MicrosoftPhoto:Rating="50"
   tiff:Orientation="1"
   acme:Box="7">
   <!-- written by digiKam 8.4 -->
   <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">{HUMAN}</rdf:li></rdf:Alt></exif:UserComment>
   <tiff:ImageDescription>
    <rdf:Alt><rdf:li xml:lang="x-default">{HUMAN}</rdf:li></rdf:Alt>
   </tiff:ImageDescription>
   <digiKam:TagsList><rdf:Seq><rdf:li>人物/李家</rdf:li><rdf:li>事件/春节</rdf:li></rdf:Seq></digiKam:TagsList>
   <MicrosoftPhoto:LastKeywordXMP><rdf:Bag><rdf:li>人物/李家</rdf:li></rdf:Bag></MicrosoftPhoto:LastKeywordXMP>
   <dc:description>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">{HUMAN}</rdf:li>
     <rdf:li xml:lang="en-US">The Li family, 1983</rdf:li>
    </rdf:Alt>
   </dc:description>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">李家全家福</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Seq><rdf:li>李家</rdf:li><rdf:li>春节</rdf:li></rdf:Seq></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>人物|李家</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""

# Several Descriptions (as Adobe tools and exiftool write), attribute and element forms mixed.
SEVERAL_DESCRIPTIONS = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmp:Rating="4" xmpMM:DocumentID="xmp.did:1234"/>
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">老屋</rdf:li></rdf:Alt></dc:title>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{HUMAN}</rdf:li></rdf:Alt></dc:description>
  </rdf:Description>
  <rdf:Description rdf:about="" xmlns:lr="http://ns.adobe.com/lightroom/1.0/">
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>地点|老屋</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

# A sidecar from the first tuwen release: no tuwen:Schema, no hash, the raw tags in every list.
FIRST_RELEASE = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="tuwen 0.1.0">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/" xmlns:tuwen="https://tuwen.dev/ns/1.0/">
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{ANSWER}</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag><rdf:li>家庭</rdf:li><rdf:li>老照片</rdf:li></rdf:Bag></dc:subject>
   <digiKam:TagsList><rdf:Seq><rdf:li>老照片</rdf:li><rdf:li>人物/李家</rdf:li></rdf:Seq></digiKam:TagsList>
   <tuwen:JobID>job-0</tuwen:JobID>
   <tuwen:Tags><rdf:Bag><rdf:li>老照片</rdf:li></rdf:Bag></tuwen:Tags>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def make_record(**changes: Any) -> SidecarRecord:
    base = SidecarRecord(
        status="done",
        file_name="scan.jpg",
        question="请描述这张照片",
        answer=ANSWER,
        ocr_text="光荣之家",
        answer_kind="model",
        sha256="ab" * 32,
        model="zai-org/GLM-4.6V-Flash",
        model_version="rev-2025-12",
        backend="transformers",
        created_at=datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
        width=1000,
        height=700,
        job_id="job-1",
        prompt_hash="ph-1",
        tags=(),
    )
    return replace(base, **changes)


def exiftool_create(path: Path, *assignments: str) -> None:
    subprocess.run(["exiftool", "-q", "-o", str(path), *assignments], check=True)


def exiftool_edit(path: Path, *assignments: str) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *assignments, str(path)], check=True)


def read(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["exiftool", "-j", "-struct", "-G1", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]


def staff(tags: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in tags.items() if not key.startswith(NOT_STAFF)}


def empty_descriptions(path: Path) -> list[ET.Element]:
    rdf_root = ET.parse(path).getroot()
    return [d for d in rdf_root.iter(DESCRIPTION) if not len(d) and set(d.attrib) <= {ABOUT}]


@pytest.fixture
def xmp(tmp_path: Path) -> Path:
    return tmp_path / "scan.jpg.xmp"


def by_exiftool(path: Path) -> None:
    exiftool_create(path, *STAFF_BY_EXIFTOOL)


def digikam_shape(path: Path) -> None:
    path.write_text(DIGIKAM_SHAPE, encoding="utf-8")


def several_descriptions(path: Path) -> None:
    path.write_text(SEVERAL_DESCRIPTIONS, encoding="utf-8")


STAFF_SIDECARS = pytest.mark.parametrize(
    "make_staff_sidecar", [by_exiftool, digikam_shape, several_descriptions], ids=lambda f: f.__name__
)
# An answer, the file answered again, staff correcting that answer in review, the correction withdrawn.
LIFECYCLE = [
    make_record(),
    make_record(answer=SECOND, job_id="job-2"),
    make_record(answer=SECOND, job_id="job-2", correction=CORRECTION),
    make_record(answer=SECOND, job_id="job-2", created_at=datetime(2025, 3, 2, tzinfo=UTC)),
]


@STAFF_SIDECARS
def test_every_staff_value_survives_answers_and_corrections(
    xmp: Path, make_staff_sidecar: Callable[[Path], None]
) -> None:
    make_staff_sidecar(xmp)
    before = staff(read(xmp))
    assert before and not [key for key in before if "Warning" in key]
    for record in LIFECYCLE:
        write_xmp_sidecar(xmp, record)
        after = read(xmp)
        assert staff(after) == before  # every caption alternative, title, rating, keyword, attribute
        assert after["XMP-tuwen:Answer"] == record.answer and after["XMP-tuwen:JobID"] == record.job_id
        assert after["XMP-tuwen:AIGenerated"] is not record.corrected
        assert "XMP-tuwen:DescriptionHash" not in after  # tuwen wrote no caption of its own
    assert empty_descriptions(xmp) == []


@STAFF_SIDECARS
def test_a_correction_beside_a_persons_caption_goes_to_tuwen_correction(
    xmp: Path, make_staff_sidecar: Callable[[Path], None]
) -> None:
    make_staff_sidecar(xmp)
    write_xmp_sidecar(xmp, make_record(correction=CORRECTION))
    tags = read(xmp)
    assert tags["XMP-dc:Description"] == HUMAN
    assert (tags["XMP-tuwen:Correction"], tags["XMP-tuwen:Corrected"]) == (CORRECTION, True)
    assert CORRECTION not in json.dumps(staff(tags), ensure_ascii=False)


def test_staff_keywords_stay_and_ours_follow_the_tags(xmp: Path) -> None:
    by_exiftool(xmp)
    write_xmp_sidecar(xmp, make_record(tags=TAGS))
    tags = read(xmp)
    assert tags["XMP-dc:Subject"] == ["家庭", "春节", "老照片", "1980s"]  # "家庭" was the person's already
    assert tags["XMP-digiKam:TagsList"] == ["人物/李家", "事件/春节", "老照片", "家庭/1980s"]
    assert tags["XMP-lr:HierarchicalSubject"] == ["人物|李家", "老照片", "家庭|1980s"]
    assert tags["XMP-tuwen:Tags"] == list(TAGS)

    write_xmp_sidecar(xmp, make_record(tags=("扫描",), job_id="job-2"))
    tags = read(xmp)
    assert tags["XMP-dc:Subject"] == ["家庭", "春节", "扫描"]  # the person's "家庭" outlives our tag
    assert tags["XMP-digiKam:TagsList"] == ["人物/李家", "事件/春节", "扫描"]
    assert tags["XMP-lr:HierarchicalSubject"] == ["人物|李家", "扫描"]


def test_an_existing_list_keeps_its_array_type(xmp: Path) -> None:
    digikam_shape(xmp)  # dc:subject as rdf:Seq, lr:hierarchicalSubject as rdf:Bag
    write_xmp_sidecar(xmp, make_record(tags=TAGS))
    root = ET.parse(xmp).getroot()
    rdf = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
    subject = root.find(".//{http://purl.org/dc/elements/1.1/}subject")
    assert subject is not None and [child.tag for child in subject] == [f"{rdf}Seq"]
    assert [li.text for li in subject.iter(f"{rdf}li")] == ["李家", "春节", "老照片", "家庭", "1980s"]
    assert read(xmp)["XMP-lr:HierarchicalSubject"] == ["人物|李家", "老照片", "家庭|1980s"]


def test_tuwens_caption_is_recorded_by_hash_and_updated_by_a_reanswer(xmp: Path) -> None:
    write_xmp_sidecar(xmp, make_record())
    tags = read(xmp)
    assert tags["XMP-dc:Description"] == tags["XMP-dc:Description-zh-CN"] == ANSWER
    assert tags["XMP-tiff:ImageDescription"] == ANSWER
    assert tags["XMP-tuwen:DescriptionHash"] == hashlib.sha256(ANSWER.encode("utf-8")).hexdigest()
    assert tags["XMP-tuwen:DescriptionSource"] == "model"

    exiftool_edit(xmp, "-XMP-xmp:Rating=5", "-XMP-dc:Title=老屋")  # exiftool rewrites the whole packet
    write_xmp_sidecar(xmp, make_record(answer=SECOND, job_id="job-2"))
    tags = read(xmp)
    assert tags["XMP-dc:Description"] == tags["XMP-dc:Description-zh-CN"] == SECOND
    assert tags["XMP-tiff:ImageDescription"] == SECOND
    assert (tags["XMP-xmp:Rating"], tags["XMP-dc:Title"]) == (5, "老屋")
    assert tags["XMP-tuwen:DescriptionHash"] == hashlib.sha256(SECOND.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    "edit",
    [
        [f"-XMP-dc:Description={HUMAN}"],
        [f"-XMP-dc:Description-zh-CN={HUMAN}"],
        [f"-XMP-dc:Description-en-US={HUMAN}"],
    ],
    ids=["x-default", "zh-CN-only", "added-language"],
)
def test_a_caption_a_person_edited_is_theirs(xmp: Path, edit: list[str]) -> None:
    write_xmp_sidecar(xmp, make_record())
    exiftool_edit(xmp, *edit)
    edited = {key: value for key, value in read(xmp).items() if key.startswith("XMP-dc:Description")}
    for record in LIFECYCLE[1:]:
        write_xmp_sidecar(xmp, record)
        tags = read(xmp)
        assert {key: value for key, value in tags.items() if key.startswith("XMP-dc:Description")} == edited
        # Our copy in tiff:ImageDescription goes: no reader shows the model's words instead of the person's.
        assert "XMP-tiff:ImageDescription" not in tags and "XMP-tuwen:DescriptionHash" not in tags
    assert empty_descriptions(xmp) == []  # exiftool had put tiff:ImageDescription in a Description of its own


def test_a_persons_image_description_alone_keeps_tuwen_out_of_both(xmp: Path) -> None:
    exiftool_create(xmp, f"-XMP-tiff:ImageDescription={HUMAN}")
    write_xmp_sidecar(xmp, make_record())
    tags = read(xmp)
    assert tags["XMP-tiff:ImageDescription"] == HUMAN and "XMP-dc:Description" not in tags


def test_a_correction_replaces_tuwens_caption_and_is_marked(xmp: Path) -> None:
    write_xmp_sidecar(xmp, make_record())
    write_xmp_sidecar(xmp, make_record(correction=CORRECTION))
    tags = read(xmp)
    assert tags["XMP-dc:Description"] == tags["XMP-dc:Description-zh-CN"] == CORRECTION
    assert tags["XMP-tiff:ImageDescription"] == CORRECTION
    assert tags["XMP-tuwen:DescriptionSource"] == "correction"
    assert tags["XMP-tuwen:DescriptionHash"] == hashlib.sha256(CORRECTION.encode("utf-8")).hexdigest()
    assert (tags["XMP-tuwen:Correction"], tags["XMP-tuwen:Answer"]) == (CORRECTION, ANSWER)
    assert (tags["XMP-tuwen:AIGenerated"], tags["XMP-tuwen:Corrected"]) == (False, True)


@pytest.mark.parametrize(
    ("next_record", "caption", "source"),
    [
        (make_record(answer=SECOND, job_id="job-2"), CORRECTION, "correction"),
        (make_record(answer=SECOND, job_id="job-2", sha256="cd" * 32), SECOND, "model"),
        (make_record(answer=SECOND), SECOND, "model"),
        (make_record(answer=SECOND, job_id="job-2", correction=HUMAN), HUMAN, "correction"),
    ],
    ids=["other-job-same-image", "other-image", "withdrawn-in-review", "new-correction"],
)
def test_a_corrections_caption_gives_way_only_to_staff_or_a_new_image(
    xmp: Path, next_record: SidecarRecord, caption: str, source: str
) -> None:
    write_xmp_sidecar(xmp, make_record(correction=CORRECTION))
    write_xmp_sidecar(xmp, next_record)
    tags = read(xmp)
    assert tags["XMP-dc:Description"] == tags["XMP-tiff:ImageDescription"] == caption
    assert tags["XMP-tuwen:DescriptionSource"] == source
    assert tags["XMP-tuwen:Answer"] == SECOND


def test_ocr_that_found_no_text_writes_no_caption(xmp: Path) -> None:
    no_text = make_record(answer="未识别到文字 / No text was found.", ocr_text="", answer_kind="ocr")
    write_xmp_sidecar(xmp, no_text)
    tags = read(xmp)
    assert "XMP-dc:Description" not in tags and "XMP-tiff:ImageDescription" not in tags
    assert (tags["XMP-tuwen:AnswerKind"], tags["XMP-tuwen:AIGenerated"]) == ("ocr", True)

    write_xmp_sidecar(xmp, make_record(answer="光荣之家", ocr_text="光荣之家", answer_kind="ocr"))
    assert read(xmp)["XMP-dc:Description"] == "光荣之家"
    write_xmp_sidecar(xmp, no_text)  # the scan was replaced by a blank one: our old caption goes
    assert "XMP-dc:Description" not in read(xmp)

    json_path = xmp.with_suffix(".json")
    write_json_sidecar(json_path, no_text)
    assert json.loads(json_path.read_text(encoding="utf-8"))["answer_kind"] == "ocr"


def test_a_merge_leaves_no_empty_description(xmp: Path) -> None:
    write_xmp_sidecar(xmp, make_record(tags=TAGS))
    exiftool_edit(xmp, "-XMP-xmp:Rating=2")  # one Description per namespace, lr: and digiKam: alone
    assert len(ET.parse(xmp).getroot().findall(f".//{DESCRIPTION}")) > 3
    write_xmp_sidecar(xmp, make_record(job_id="job-2"))
    tags = read(xmp)
    assert "XMP-lr:HierarchicalSubject" not in tags and "XMP-digiKam:TagsList" not in tags
    assert tags["XMP-xmp:Rating"] == 2
    assert empty_descriptions(xmp) == []
    assert len({d for d in ET.parse(xmp).getroot().iter(DESCRIPTION) if d.find("{*}JobID") is not None}) == 1


def test_a_first_release_sidecar_gives_up_only_its_own_tags(xmp: Path) -> None:
    xmp.write_text(FIRST_RELEASE, encoding="utf-8")
    write_xmp_sidecar(xmp, make_record(answer=SECOND, tags=()))
    tags = read(xmp)
    assert tags["XMP-dc:Subject"] == ["家庭"] and tags["XMP-digiKam:TagsList"] == ["人物/李家"]
    # Without a recorded hash no one can tell whether a person edited it since: it is kept.
    assert tags["XMP-dc:Description"] == ANSWER and tags["XMP-tuwen:Schema"] == "tuwen-xmp/2"
