"""Crontab lines as APScheduler triggers, with weekdays counted the way crontab counts them.

APScheduler 3's own `CronTrigger.from_crontab` counts weekdays from Monday = 0 (its issue 286), so
"0 9 * * 1" would fire on Tuesdays; weekday numbers become names here, which it reads as crontab does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # crontab's 0-7, 0 and 7 both Sunday


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """A crontab line (minute hour day month weekday) as an APScheduler trigger in `timezone`.

    APScheduler 3's own `from_crontab` counts weekdays from Monday = 0 (its issue 286), so "0 9 * * 1" would
    fire on Tuesdays; weekday numbers are turned into names here, which it reads the way crontab does.
    Raises ValueError for an invalid expression.
    """
    from apscheduler.triggers.cron import CronTrigger

    values = expression.split()
    if len(values) != 5:
        raise ValueError(f"wrong number of fields: got {len(values)}, expected 5")
    minute, hour, day, month, weekday = values
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_weekdays(weekday),
        timezone=timezone,
    )


def _crontab_weekdays(field: str) -> str:
    names: list[str] = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if not re.fullmatch(r"\*|\d+(-\d+)?", base) or (base == "*" and not step):
            names.append(part)  # "*" or names ("mon-fri"): APScheduler reads those as crontab does
            continue
        low, _, high = base.replace("*", "0-6").partition("-")
        last = int(high) if high else (6 if step else int(low))  # crontab: "N/S" runs from N to the end
        if not 0 <= int(low) <= last <= 7 or (step and not step.isdigit()) or step == "0":
            raise ValueError(f"day of week {part!r} is not within 0-7")
        names += [_CRON_DAYS[number] for number in range(int(low), last + 1, int(step or 1))]
    return ",".join(dict.fromkeys(names))
