"""The report's PNG chart: jobs per local day, one stacked bar segment per source.

matplotlib is used through its object API (`Figure` + the Agg canvas), never `pyplot`: pyplot keeps global
state and picks a GUI backend, and reports are drawn in a worker thread of a headless service.

Chinese labels need a CJK font. matplotlib's own font list does not know the system's `.ttc` collections, so
the font is found with fontconfig (`fc-match`/`fc-list`, present wherever Noto CJK is installed) and added to
matplotlib by file. When no CJK font exists the chart falls back to English labels, so it never shows boxes
in place of characters.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from service.messages import msg
from service.reports.content import ReportData

log = logging.getLogger(f"tuwen.{__name__}")

# Preferred first; any font fontconfig says covers Chinese will do.
_CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Noto Serif CJK SC")
_COLOURS = ("#3b6ea8", "#e08a2e", "#4d9a5b", "#c4463a", "#8a6bb8", "#8c6d4f", "#d17db5", "#7f7f7f")


@functools.cache
def cjk_font_path() -> Path | None:
    """A font file that covers Chinese, found through fontconfig; None when there is none (or no fc-*)."""
    if shutil.which("fc-match") is None:
        return None
    for family in _CJK_FAMILIES:
        found = _fc(["fc-match", "--format=%{file}|%{family}", f"{family}:lang=zh-cn"])
        if found and "|" in found:
            file, families = found.split("|", 1)
            # fc-match always answers something; accept it only if it is the family asked for.
            if family.lower() in families.lower() and Path(file).is_file():
                return Path(file)
    listed = _fc(["fc-list", ":lang=zh-cn", "file"])
    for line in (listed or "").splitlines():
        path = Path(line.strip().rstrip(":"))
        if path.is_file():
            return path
    return None


def _fc(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("fontconfig query %s failed: %s", command[0], exc)
        return None


def render_chart(data: ReportData) -> bytes:
    """The PNG bytes of the jobs-per-day chart (1000 x 450 px)."""
    from matplotlib import font_manager
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    font = cjk_font_path()
    family: str | None = None
    if font is not None:
        try:
            font_manager.fontManager.addfont(str(font))
            family = font_manager.FontProperties(fname=str(font)).get_name()
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("cannot use the CJK font %s (%s); the chart's labels will be in English", font, exc)
    chinese = family is not None
    rc: dict[str, Any] = {"font.family": [family, "DejaVu Sans"]} if family else {}

    import matplotlib

    with matplotlib.rc_context(rc):  # type: ignore[arg-type]  # the stubs list every rc key as a Literal
        figure = Figure(figsize=(10, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        positions = list(range(len(data.days)))
        bottoms = [0] * len(data.days)
        for index, row in enumerate(data.by_source):
            counts = data.daily.get(row.key, [0] * len(data.days))
            axes.bar(
                positions,
                counts,
                bottom=bottoms,
                label=row.zh if chinese else row.en,
                color=_COLOURS[index % len(_COLOURS)],
                width=0.8,
            )
            bottoms = [b + c for b, c in zip(bottoms, counts, strict=True)]
        title = msg("report_chart_title")
        axes.set_title(f"{title.zh} / {title.en}" if chinese else title.en)
        step = max(1, len(positions) // 16)  # at most ~16 date labels, however long the period
        axes.set_xticks(positions[::step], [day.strftime("%m-%d") for day in data.days[::step]])
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # jobs are whole numbers
        axes.set_xlim(-0.6, max(len(positions), 1) - 0.4)
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
        if data.by_source:
            # Outside the plot, on the right: inside it would cover the tallest bars.
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        else:
            empty = msg("report_no_items")
            axes.text(0.5, 0.5, empty.zh if chinese else empty.en, ha="center", transform=axes.transAxes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
