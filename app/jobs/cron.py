"""Five-field cron expressions (minute hour day-of-month month day-of-week), in UTC.

Supports ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, and lists ``a,b``;
day-of-week 0-7 with 0 and 7 both Sunday. As in cron, when both day fields are restricted
a day matches either. Small on purpose: periodic jobs need ``latest_slot(now)``, nothing
more, and a dependency for that is more to audit than these lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class CronError(ValueError):
    """The expression is not valid five-field cron."""


def _parse_field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise CronError(f"bad step in {part!r}")
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start_text, end_text = body.split("-", 1)
            start, end = int(start_text), int(end_text)
        else:
            start = int(body)
            end = high if step_text else start
        if not (low <= start <= end <= high):
            raise CronError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday, like datetime.weekday()
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise CronError(f"{expression!r}: expected 5 fields")
        try:
            parsed = [_parse_field(f, lo, hi) for f, (lo, hi) in zip(fields, _FIELDS, strict=True)]
        except ValueError as exc:
            raise CronError(f"{expression!r}: {exc}") from None
        # cron counts Sunday as 0 (and 7); Python's weekday() counts Monday as 0
        weekdays = frozenset((d - 1) % 7 for d in parsed[4])
        return cls(
            expression,
            parsed[0],
            parsed[1],
            parsed[2],
            parsed[3],
            weekdays,
            fields[2] == "*",
            fields[4] == "*",
        )

    def _day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = moment.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def latest_slot(self, now: datetime) -> datetime:
        """The most recent matching minute at or before ``now`` (searches up to 5 years)."""
        moment = now.astimezone(UTC).replace(second=0, microsecond=0)
        floor = moment - timedelta(days=5 * 366)
        while moment >= floor:
            if moment.month not in self.months:
                moment = moment.replace(day=1, hour=0, minute=0) - timedelta(minutes=1)
            elif not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0) - timedelta(minutes=1)
            elif moment.hour not in self.hours:
                moment = moment.replace(minute=0) - timedelta(minutes=1)
            elif moment.minute not in self.minutes:
                moment -= timedelta(minutes=1)
            else:
                return moment
        raise CronError(f"{self.expression!r} matches no time in five years")
