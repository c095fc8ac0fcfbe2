"""The one text folding for search: traditional → simplified Chinese, full → half width, case.

Staff type 布告 and 县政府; archives hold 佈告 and 縣政府 (Taiwan, Hong Kong and pre-1956 material), and
scans and chat messages mix full-width ＡＢＣ１２３ with half-width abc123. `fold` maps all of these to one
form: Unicode NFKC (full-width letters, digits and punctuation to their ASCII forms, compatibility
ideographs to the unified ones), then OpenCC's `t2s` conversion, then `str.casefold`.

`fold` is the single folding every store uses, SQLite now and PostgreSQL later: the store keeps
`jobs.search_text = fold(...)` beside the original columns (`db.models.search_text_of`) and the history
search folds each query term with the same function before matching (`db.history`). Only folded text is
ever compared with folded text, so it does not matter that OpenCC converts some phrases rather than single
characters (乾隆 stays 乾隆, 乾燥 becomes 干燥) or that NFKC changes a length (ﬃ → ffi): results always show
the original columns, never `search_text`.

What follows from folding in context: a term folded alone can differ from the same characters folded
inside a longer text when OpenCC's phrase table matches across them (乾 alone becomes 干, inside 乾隆 it
stays). Such terms are rare and are still found when the query carries the phrase.

A change here (another OpenCC version whose tables differ, another normalisation) makes stored
`search_text` differ from what new queries fold to: it needs a migration that refills the column the
way 0004 does.

Library: the `opencc` wheel (OpenCC's C++ library and its dictionaries bundled; works offline). Measured
on a 2,000-character OCR text: 0.06 ms for `t2s` and 0.3 ms for the whole `fold` (NFKC is most of it);
the pure-Python `opencc-python-reimplemented` took 5.2 ms for `t2s` alone, 20 times slower on a migration
of every row. The two cannot be installed together: both are imported as `opencc`.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import opencc

# OpenCC encodes to UTF-8, which a lone surrogate cannot be (they reach us from JSON strings).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_converter: opencc.OpenCC | None = None
_converter_lock = threading.Lock()


def _t2s() -> opencc.OpenCC:
    # Built on first use (its dictionaries take ~30 ms to load), once per process.
    global _converter
    with _converter_lock:
        if _converter is None:
            _converter = opencc.OpenCC("t2s")
        return _converter


def fold(text: str) -> str:
    """`text` in the one form search compares: NFKC, then traditional → simplified, then casefolded."""
    if not text:
        return ""
    normal = unicodedata.normalize("NFKC", _LONE_SURROGATE.sub("\ufffd", text))
    return str(_t2s().convert(normal)).casefold()
