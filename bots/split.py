"""Splitting long answers into chat-sized messages without breaking a sentence or a character.

Platforms count differently (Telegram: UTF-16 code units; WeCom: bytes), so the measure is a parameter.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

# Where a long answer may be cut, best first: paragraphs, lines, sentences, then words.
_SENTENCE_ENDS_CJK = "。！？；"
_SENTENCE_ENDS_ASCII = ".!?;"
_CLOSERS = "\"'”’」』）)】》"


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units, the way Telegram counts its 4096-character limit."""
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int, length: Callable[[str], int] = len) -> list[str]:
    """Split `text` into pieces of at most `limit` (as measured by `length`) for a chat platform.

    Cuts fall on a paragraph break if one is near enough the end of a piece, else a line break, a sentence
    end (。！？；, or .!?; before a space), a space, and only as a last resort anywhere — but never inside a
    character or a grapheme (combining marks, variation selectors, emoji joined with ZWJ, skin tones, flag
    pairs stay with their base). Empty text gives [].
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    rest = text.strip()
    pieces: list[str] = []
    while rest and length(rest) > limit:
        cut = _cut_point(rest, limit, length)
        head = rest[:cut].rstrip()
        if head:
            pieces.append(head)
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _cut_point(text: str, limit: int, length: Callable[[str], int]) -> int:
    fit = _longest_prefix(text, limit, length)
    window = text[:fit]
    # A boundary too near the start would make a tiny piece; below this share, try the next kind.
    floor = fit // 3
    for finder in (_paragraph_cut, _line_cut, _sentence_cut, _space_cut):
        cut = finder(window, text)
        if cut > floor:
            return cut
    return _grapheme_safe(text, fit)


def _longest_prefix(text: str, limit: int, length: Callable[[str], int]) -> int:
    """The most code points of `text` whose measured length fits `limit` (at least one, to make progress)."""
    low, high = 1, len(text)
    if length(text[:1]) > limit:
        return 1
    while low < high:  # binary search: `length` only grows with the prefix
        middle = (low + high + 1) // 2
        if length(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _paragraph_cut(window: str, text: str) -> int:
    index = window.rfind("\n\n")
    return index + 2 if index >= 0 else -1


def _line_cut(window: str, text: str) -> int:
    index = window.rfind("\n")
    return index + 1 if index >= 0 else -1


def _sentence_cut(window: str, text: str) -> int:
    for index in range(len(window) - 1, -1, -1):
        char = window[index]
        following = text[index + 1 : index + 2]
        if char in _SENTENCE_ENDS_CJK or (
            char in _SENTENCE_ENDS_ASCII and (not following or following.isspace())
        ):
            end = index + 1
            while end < len(window) and window[end] in _CLOSERS:  # keep 。」 together
                end += 1
            return end
    return -1


def _space_cut(window: str, text: str) -> int:
    index = max(window.rfind(" "), window.rfind("\t"))
    return index + 1 if index >= 0 else -1


def _grapheme_safe(text: str, cut: int) -> int:
    """Move `cut` back so it does not fall inside a grapheme cluster (when a cluster fits at all)."""
    position = cut
    while 0 < position < len(text) and _joins_previous(text, position):
        position -= 1
    return position if position > 0 else cut


def _joins_previous(text: str, index: int) -> bool:
    """Whether `text[index]` belongs to the same grapheme as `text[index - 1]`."""
    char, before = text[index], text[index - 1]
    code = ord(char)
    if unicodedata.category(char) in ("Mn", "Me", "Mc"):
        return True  # combining marks, enclosing keycaps, Indic vowel signs
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or 0xE0020 <= code <= 0xE007F:
        return True  # variation selectors and emoji tag sequences (subdivision flags)
    if code == 0x200D or before == "\u200d":
        return True  # zero-width joiner sequences (👨‍👩‍👧)
    if 0x1F3FB <= code <= 0x1F3FF:
        return True  # skin-tone modifiers
    if _regional_indicator(char) and _regional_indicator(before):
        # Flags are pairs: the cut is inside a pair when an odd number of indicators precede it.
        run = 0
        while index - run - 1 >= 0 and _regional_indicator(text[index - run - 1]):
            run += 1
        return run % 2 == 1
    return False


def _regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF
