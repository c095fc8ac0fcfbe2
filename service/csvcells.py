"""One rule for every CSV tuwen writes (history export, catalogues, reports, `tuwen batch --csv`).

Spreadsheets run a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return as a formula, and
model output or a scan's file name can start with any of them (CSV injection). Such cells get a leading `'`,
which Excel and LibreOffice show as text. Characters no spreadsheet can show (control characters, lone
surrogates) are dropped.
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_UNSHOWABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def spreadsheet_cell(value: object) -> str:
    """`value` as a CSV cell that a spreadsheet shows as text and never runs."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # our own ids and counts: never a formula, even when negative is impossible
    text = _UNSHOWABLE.sub("", str(value))
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text
