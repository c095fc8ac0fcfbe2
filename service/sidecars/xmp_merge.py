"""Merging tuwen's answer into a shared XMP packet without touching what anyone else wrote.

What is tuwen's, and may be rewritten:
- Every property in the `tuwen:` namespace (answer, OCR text, correction, provenance, bookkeeping).
- A caption (`dc:description`, `tiff:ImageDescription`) only while it is still exactly what tuwen wrote.
  tuwen records `tuwen:DescriptionHash`, the SHA-256 (hex) of the exact UTF-8 text it wrote into both
  properties, and `tuwen:DescriptionSource` ("model" or "correction"). A property is tuwen's when every
  `rdf:li` of it is x-default or zh-CN and its text hashes to that record, or equals the text tuwen is
  about to write (nothing would change, so taking it over loses nothing; that is also how a caption of a
  sidecar from before the hash, `tuwen:Schema` absent, can become tuwen's again). Any other text, another
  language alternative, or an attribute-form caption is a person's (or another tool's) and is left alone.
- Keywords tuwen added (`tuwen:AddedSubject`, `tuwen:AddedTagsList`, `tuwen:AddedHierarchicalSubject`):
  only items that were not in the list already, so a person's keyword that equals one of our tags is never
  taken away when the tags change. Sidecars without `tuwen:Schema` recorded only `tuwen:Tags`; for those the
  raw tags are ours in every list, as that version wrote them.

The caption, case by case (both properties together: readers take one or the other, and Immich takes
`dc:description` first and falls back to `tiff:ImageDescription`):
- A person's caption in either property: tuwen writes no caption. A copy tuwen wrote earlier in the other
  property is removed, so no reader shows the model's words in place of the person's. A staff correction
  stays in `tuwen:Correction` only.
- Otherwise, with text to give, both are written (x-default and zh-CN), replacing tuwen's or empty values in
  place; absent ones are added to tuwen's Description. A correction replaces a model caption or an earlier
  correction.
- A caption that came from a staff correction is a person's word too: a model's answer replaces it only for
  the same job (the correction was withdrawn in review) or a different image (`tuwen:SHA256` changed).
- No text to give (OCR found none): tuwen's earlier caption is removed, a person's stays.

Keyword lists keep their array type and a person's items; a tag "A/B" is "A/B" in `digiKam:TagsList`,
"A|B" in `lr:hierarchicalSubject`, and each level ("A", "B") as a flat keyword in `dc:subject`, as
Lightroom exports hierarchy (a slash path is no keyword a person would search for).

Everything else (dc:title, xmp:Rating in either form, unknown namespaces, comments) is never touched. "Left
alone" means the same elements, attributes and text; indentation is redone by the serializer. tuwen's
properties go into one Description (the one that had them, else the first); a Description left with no
property, attribute or comment is removed.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

TUWEN_NS = "https://tuwen.dev/ns/1.0/"
XMP_SCHEMA = "tuwen-xmp/2"
XML_NS = "http://www.w3.org/XML/1998/namespace"
STANDARD_PREFIXES: dict[str, str] = {
    "adobe:ns:meta/": "x",
    "http://www.w3.org/1999/02/22-rdf-syntax-ns#": "rdf",
    "http://purl.org/dc/elements/1.1/": "dc",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://ns.adobe.com/xap/1.0/": "xmp",
    "http://www.digikam.org/ns/1.0/": "digiKam",
    "http://ns.adobe.com/lightroom/1.0/": "lr",
    TUWEN_NS: "tuwen",
}


@cache  # a few dozen names, asked for on every sidecar write
def qname(prefix: str, local: str) -> str:
    """The ElementTree name `{uri}local` of a property with one of the standard prefixes."""
    return "{" + next(u for u, p in STANDARD_PREFIXES.items() if p == prefix) + "}" + local


XMPMETA, XMPTK = qname("x", "xmpmeta"), qname("x", "xmptk")
RDF, DESCRIPTION, ABOUT = qname("rdf", "RDF"), qname("rdf", "Description"), qname("rdf", "about")
ALT, BAG, SEQ, LI = qname("rdf", "Alt"), qname("rdf", "Bag"), qname("rdf", "Seq"), qname("rdf", "li")
XML_LANG = f"{{{XML_NS}}}lang"
DC_DESCRIPTION, TIFF_DESCRIPTION = qname("dc", "description"), qname("tiff", "ImageDescription")
CAPTION_PROPERTIES = (DC_DESCRIPTION, TIFF_DESCRIPTION)
CAPTION_LANGS = ("x-default", "zh-CN")  # x-default first: readers that take one value take the first
SUBJECT, TAGS_LIST = qname("dc", "subject"), qname("digiKam", "TagsList")
HIERARCHICAL = qname("lr", "hierarchicalSubject")
# The array type each list gets when tuwen creates it; an existing list keeps its own.
KEYWORD_PROPERTIES: dict[str, str] = {SUBJECT: BAG, TAGS_LIST: SEQ, HIERARCHICAL: BAG}
_ARRAYS = (ALT, BAG, SEQ)
_ADDED = {SUBJECT: "AddedSubject", TAGS_LIST: "AddedTagsList", HIERARCHICAL: "AddedHierarchicalSubject"}

_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (NUL, most C0 controls, lone surrogates)."""
    return _XML_FORBIDDEN.sub("", text)


def text_hash(text: str) -> str:
    """What `tuwen:DescriptionHash` records: SHA-256 (hex) of the caption's exact UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _t(local: str) -> str:
    return qname("tuwen", local)


@dataclass(frozen=True)
class Caption:
    """The caption tuwen offers: a model's (or OCR's) answer, or a staff correction."""

    text: str
    source: Literal["model", "correction"]


@dataclass(frozen=True)
class MergeOutcome:
    """What happened to the caption; tuwen's own properties are always written."""

    caption_written: bool
    persons_caption_kept: bool


@dataclass
class _Previous:
    """What tuwen recorded in the packet last time (read before its properties are replaced)."""

    schema: str | None = None
    hash: str | None = None
    source: str | None = None
    job_id: str | None = None
    sha256: str | None = None
    ours: dict[str, set[str]] = field(default_factory=dict)


def keyword_items(tags: Sequence[str]) -> dict[str, list[str]]:
    """Items for `tags`: "A/B" gives TagsList "A/B", hierarchicalSubject "A|B", subject A and B."""
    items: dict[str, list[str]] = {prop: [] for prop in KEYWORD_PROPERTIES}
    for tag in tags:
        levels = [level.strip() for level in clean_xml_text(tag).split("/") if level.strip()]
        if levels:
            items[SUBJECT].extend(levels)
            items[TAGS_LIST].append("/".join(levels))
            items[HIERARCHICAL].append("|".join(levels))
    return {prop: list(dict.fromkeys(values)) for prop, values in items.items()}


def merge_answer(
    rdf: ET.Element,
    *,
    caption: Caption | None,
    tags: Sequence[str],
    values: Mapping[str, str],
    job_id: str,
    sha256: str,
) -> MergeOutcome:
    """Merge tuwen's answer into the `rdf:RDF` element `rdf` (see the module docstring for the rules).

    `values` are tuwen's simple properties (local name → text, already cleaned); `tags` the configured tags.
    """
    descriptions = rdf.findall(DESCRIPTION)
    if not descriptions:
        descriptions = [ET.SubElement(rdf, DESCRIPTION, {ABOUT: ""})]
    target = next((d for d in descriptions if _has_tuwen(d)), descriptions[0])
    previous = _read_previous(descriptions)
    for description in descriptions:
        _remove_tuwen(description)

    recorded, outcome = _merge_caption(descriptions, target, previous, caption, job_id, sha256)
    added = _merge_keywords(descriptions, target, previous, tags)

    for local, value in {"Schema": XMP_SCHEMA, **values, **recorded}.items():
        ET.SubElement(target, _t(local)).text = value
    _add_array(target, _t("Tags"), BAG, [clean_xml_text(t) for t in tags])
    for prop, items in added.items():
        _add_array(target, _t(_ADDED[prop]), BAG, items)

    for description in rdf.findall(DESCRIPTION):
        if not len(description) and set(description.attrib) <= {ABOUT}:
            rdf.remove(description)
    return outcome


# --- reading tuwen's earlier record ---------------------------------------------------------------------


def _is_tuwen(name: str) -> bool:
    return name.startswith(f"{{{TUWEN_NS}}}")


def _has_tuwen(description: ET.Element) -> bool:
    return any(isinstance(c.tag, str) and _is_tuwen(c.tag) for c in description) or any(
        _is_tuwen(a) for a in description.attrib
    )


def _remove_tuwen(description: ET.Element) -> None:
    for child in [c for c in description if isinstance(c.tag, str) and _is_tuwen(c.tag)]:
        description.remove(child)
    for name in [a for a in description.attrib if _is_tuwen(a)]:
        del description.attrib[name]


def _items(element: ET.Element | None) -> list[str]:
    return [] if element is None else [li.text or "" for li in element.iter(LI)]


def _read_previous(descriptions: list[ET.Element]) -> _Previous:
    def simple(local: str) -> str | None:
        for description in descriptions:
            value = description.findtext(_t(local)) or description.get(_t(local))
            if value:
                return value.strip()
        return None

    def items(local: str) -> set[str]:
        return {item for d in descriptions for item in _items(d.find(_t(local)))}

    previous = _Previous(simple("Schema"), simple("DescriptionHash"), simple("DescriptionSource"))
    previous.job_id, previous.sha256 = simple("JobID"), simple("SHA256")
    if previous.schema is None:  # the first sidecars: the raw tags went into every list
        legacy = items("Tags")
        previous.ours = {prop: legacy for prop in KEYWORD_PROPERTIES}
    else:
        previous.ours = {prop: items(local) for prop, local in _ADDED.items()}
    return previous


# --- the caption ------------------------------------------------------------------------------------------


_State = Literal["empty", "recorded", "same", "person"]


def _caption_state(element: ET.Element, previous: _Previous, new_text: str | None) -> _State:
    """ "recorded": what tuwen wrote (the hash matches); "same": the text tuwen is about to write anyway."""
    if not "".join(element.itertext()).strip():
        return "empty"
    alternatives = [(li.get(XML_LANG), li.text or "") for li in element.iter(LI)]
    if not alternatives or any(lang not in CAPTION_LANGS for lang, _ in alternatives):
        return "person"  # a bare simple value or another language: tuwen writes neither
    if previous.hash and all(text_hash(text) == previous.hash for _, text in alternatives):
        return "recorded"
    if all(text == new_text for _, text in alternatives):
        return "same"
    return "person"


def _merge_caption(
    descriptions: list[ET.Element],
    target: ET.Element,
    previous: _Previous,
    caption: Caption | None,
    job_id: str,
    sha256: str,
) -> tuple[dict[str, str], MergeOutcome]:
    """Write, keep or remove the caption; return what tuwen records about it and the outcome."""
    new_text = caption.text if caption else None
    found: list[tuple[ET.Element, ET.Element, _State]] = []
    persons = any(d.get(prop) is not None for d in descriptions for prop in CAPTION_PROPERTIES)
    for description in descriptions:
        for prop in CAPTION_PROPERTIES:
            for element in description.findall(prop):
                found.append((description, element, _caption_state(element, previous, new_text)))
    persons = persons or any(state == "person" for _, _, state in found)
    recorded = [(d, e) for d, e, state in found if state == "recorded"]
    correction_stays = (
        previous.source == "correction"
        and previous.hash is not None
        and bool(recorded)
        and (caption is None or caption.source == "model")
        and previous.job_id != job_id
        and previous.sha256 == sha256
    )
    if correction_stays and not persons:
        kept = {"DescriptionHash": previous.hash or "", "DescriptionSource": "correction"}
        return kept, MergeOutcome(caption_written=False, persons_caption_kept=False)
    if persons or caption is None or not caption.text.strip():
        for description, element in recorded:
            description.remove(element)
        return {}, MergeOutcome(caption_written=False, persons_caption_kept=persons)

    for prop in CAPTION_PROPERTIES:
        writable = [(d, e, state) for d, e, state in found if e.tag == prop]
        new = _caption_element(prop, caption.text)
        if writable:
            description, old, _ = writable[0]
            new.tail = old.tail
            description.insert(list(description).index(old), new)
            description.remove(old)
            for description, element, state in writable[1:]:
                if state == "recorded":
                    description.remove(element)
        else:
            target.append(new)
    written = {"DescriptionHash": text_hash(caption.text), "DescriptionSource": caption.source}
    return written, MergeOutcome(caption_written=True, persons_caption_kept=False)


def _caption_element(prop: str, text: str) -> ET.Element:
    element = ET.Element(prop)
    alt = ET.SubElement(element, ALT)
    for lang in CAPTION_LANGS:
        ET.SubElement(alt, LI, {XML_LANG: lang}).text = text
    return element


# --- keywords ---------------------------------------------------------------------------------------------


def _merge_keywords(
    descriptions: list[ET.Element], target: ET.Element, previous: _Previous, tags: Sequence[str]
) -> dict[str, list[str]]:
    """Take out tuwen's earlier keywords, add the current ones that are missing; return what was added."""
    added: dict[str, list[str]] = {}
    for prop, wanted in keyword_items(tags).items():
        ours = previous.ours.get(prop, set())
        present: list[str] = []
        arrays: list[ET.Element] = []
        for description in descriptions:
            for element in description.findall(prop):
                array = next((c for c in element if c.tag in _ARRAYS), None)
                if array is None:  # not an array (malformed): someone else's, untouched
                    present.extend(element.itertext())
                    continue
                removed = False
                for li in array.findall(LI):
                    if (li.text or "") in ours and not li.attrib and not len(li):
                        array.remove(li)
                        removed = True
                    else:
                        present.append(li.text or "")
                if removed and not len(array) and len(element) == 1:
                    description.remove(element)  # only our keywords were left in it
                else:
                    arrays.append(array)
        added[prop] = [item for item in wanted if item not in present]
        if added[prop]:
            array = (
                arrays[0] if arrays else ET.SubElement(ET.SubElement(target, prop), KEYWORD_PROPERTIES[prop])
            )
            for item in added[prop]:
                ET.SubElement(array, LI).text = item
    return added


def _add_array(description: ET.Element, prop: str, kind: str, items: Sequence[str]) -> None:
    values = [item for item in items if item]
    if values:
        array = ET.SubElement(ET.SubElement(description, prop), kind)
        for value in values:
            ET.SubElement(array, LI).text = value
