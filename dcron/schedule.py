"""Parse a job's schedule and compute when it fires next.

A schedule is one of:

* a cron expression of five fields (``m h dom mon dow``) or six with the
  seconds first (``s m h dom mon dow``, as Dkron and robfig/cron read it);
  names, ranges, steps and lists are allowed, and day of month and day of week
  combine as in Vixie/Debian cron: OR when both are restricted, AND when
  either starts with ``*``;
* a descriptor, ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
  ``@daily`` (``@midnight``), ``@hourly`` or ``@minutely``, which is shorthand
  for a cron expression;
* ``@every <duration>``, such as ``@every 1m30s``;
* ``@at <RFC 3339 time>``, which fires once;
* ``@manually``, which never fires on its own.

Cron expressions and descriptors are matched against the wall clock of the
job's time zone. Around daylight saving transitions this module follows what
Debian/Vixie cron does for fixed-time jobs, and applies it to every
expression: a wall time skipped by a spring-forward gap fires once, at the
transition instant (all matching wall times inside one gap fire together,
once), and a wall time repeated by an autumn fold fires only at its first
occurrence, so nothing fires during the second pass of the repeated hour.
Vixie cron treats wildcard jobs differently (it skips them in a gap and runs
them twice in a fold); here a matching wall time is never lost and never
doubled, whatever the expression looks like.

``@every`` fires at the instants that are whole multiples of its interval
since the Unix epoch, so every node and every newly elected leader computes
the same slots without sharing any state: ``@every 2s`` fires on even
seconds, ``@every 1h`` on the hour in UTC. The time zone does not apply to
``@every`` or ``@at``.

Fire times are aware UTC datetimes; :func:`format_time` and :func:`parse_time`
convert them to and from RFC 3339 text.
"""

import functools
import math
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from dcron.errors import InvalidInput

__all__ = [
    "AtSchedule",
    "CronSchedule",
    "EverySchedule",
    "ManualSchedule",
    "Schedule",
    "check_timezone",
    "format_time",
    "parse",
    "parse_duration",
    "parse_time",
]

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@minutely": "* * * * *",
}

MIN_EVERY_INTERVAL = timedelta(seconds=1)

# Distinct (schedule, time zone) pairs kept parsed; more than most clusters use.
PARSE_CACHE_SIZE = 4096

# Microseconds per duration unit; timedelta cannot hold anything finer.
DURATION_UNITS_US = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}

# Each cron candidate that next_after rejects is one whose instant is not
# after `after`; the start point is chosen so that at most two are, so this
# bound only guards against a bug turning into an endless loop.
MAX_REJECTED_CANDIDATES = 16

# The never-fires check needs a fixed start so that parsing is deterministic;
# croniter searches 50 years from it, longer than any real gap between matches
# (29 February on a given weekday recurs within 40 years).
PROBE_START = datetime(2000, 1, 1)

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Zµ]*)")
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?#-]+")
# croniter's R draws a random value when the expression is parsed, so every
# node would fire at a different time; H needs a hash seed dcron does not give.
_RANDOM_OR_HASHED = re.compile(r"[hHrR](?:\(|/|$)")

_UTC_ZONE = ZoneInfo("UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Schedule(ABC):
    """When a job fires, as parsed from its ``schedule`` string."""

    expression: str

    @abstractmethod
    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after `after`, as an aware UTC datetime.

        `after` must be aware; its zone does not matter. Returns None when the
        schedule never fires again.
        """


class CronSchedule(Schedule):
    """A cron expression matched against the wall clock of a time zone."""

    def __init__(self, expression: str, fields: str, zone: ZoneInfo) -> None:
        self.expression = expression
        self.fields = fields
        self.zone = zone

        # croniter is given naive wall times only: its own time zone handling
        # has DST bugs, and the rule of this module is applied in _instant.
        self._cron = croniter(
            fields,
            PROBE_START,
            ret_type=datetime,
            second_at_beginning=len(fields.split()) == 6,
            implement_cron_bug=True,
        )
        # A croniter keeps its position in the object, so concurrent callers
        # (the scheduler and API threads) must take turns.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, zone={self.zone.key!r})"

    def next_after(self, after: datetime) -> datetime | None:
        after_utc = _to_utc(after)
        local = after_utc.astimezone(self.zone)

        # Wall times map to instants monotonically (first occurrence, gaps to
        # the transition), so no wall time before the one `after` reads can
        # fire after it. Start one second early: croniter's "next" is strict
        # and drops sub-second parts.
        start = local.replace(tzinfo=None, microsecond=0)
        if _in_second_pass(local):
            # Every wall time up to the end of the fold already fired in the
            # first pass; skipping them keeps a seconds field from rejecting
            # thousands of candidates one at a time.
            start = _fold_end(self.zone, after_utc, local)
        start -= timedelta(seconds=1)

        with self._lock:
            for _ in range(MAX_REJECTED_CANDIDATES):
                try:
                    wall = self._cron.get_next(datetime, start_time=start)
                except (ValueError, OverflowError):
                    # No match within croniter's 50-year horizon, or the
                    # calendar ends (year 9999): the schedule is over.
                    return None
                fire = self._instant(wall)
                if fire > after_utc:
                    return fire
                start = wall
        raise RuntimeError(f"no fire time found for {self.expression!r} after {after}")

    def _instant(self, wall: datetime) -> datetime:
        """The UTC instant at which a matching wall time fires."""
        # fold=0 picks the first occurrence of a wall time repeated by a fold.
        instant = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) == wall:
            return instant

        # The wall time falls in a spring-forward gap: fire at the transition,
        # which lies between its two possible readings.
        before = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        return _transition(self.zone, before, instant)


@dataclass(frozen=True)
class EverySchedule(Schedule):
    """Fires at every whole multiple of `interval` since the Unix epoch."""

    expression: str
    interval: timedelta

    def next_after(self, after: datetime) -> datetime | None:
        # Integer microseconds keep the slots exact, unlike float seconds.
        slot = (_to_utc(after) - _EPOCH) // self.interval + 1
        try:
            return _EPOCH + slot * self.interval
        except OverflowError:
            return None


@dataclass(frozen=True)
class AtSchedule(Schedule):
    """Fires once, at `at`."""

    expression: str
    at: datetime

    def next_after(self, after: datetime) -> datetime | None:
        return self.at if self.at > _to_utc(after) else None


@dataclass(frozen=True)
class ManualSchedule(Schedule):
    """Never fires on its own; the job runs only when someone asks."""

    expression: str

    def next_after(self, after: datetime) -> datetime | None:
        return None


def parse(expression: str, timezone: str = "") -> Schedule:
    """Parse a job's schedule, to be evaluated in the IANA zone `timezone`.

    An empty `timezone` means UTC. Raises InvalidInput naming ``schedule`` or
    ``timezone``. An ``@at`` time in the past is accepted. Equal arguments may
    return the same Schedule object; schedules are safe to share between threads.
    """
    return _parse_cached(expression, timezone)


# The scheduler re-parses every job's schedule as it plans, and building a
# croniter and probing it costs about 200 us against 30 us for next_after.
@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_cached(expression: str, timezone: str) -> Schedule:
    text = expression.strip()
    if not text:
        raise InvalidInput("schedule", "required")
    zone = check_timezone(timezone)

    if not text.startswith("@"):
        return _parse_cron(text, text, zone)

    head, *rest = text.split(maxsplit=1)
    keyword = head.lower()
    argument = rest[0] if rest else ""
    if keyword in DESCRIPTORS and not argument:
        return _parse_cron(text, DESCRIPTORS[keyword], zone)
    if keyword == "@manually" and not argument:
        return ManualSchedule(text)
    if keyword == "@every":
        return EverySchedule(text, _parse_every(argument))
    if keyword == "@at":
        return AtSchedule(text, _parse_at(argument))
    raise InvalidInput("schedule", f"unknown schedule {text!r}")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration such as ``2s``, ``1m30s``, ``1.5h`` or ``500ms``.

    Units are h, m, s and ms. Raises ValueError with a short lowercase message
    when `text` is empty, negative, lacks a unit or is not a duration.
    """
    body = text.strip()
    if not body:
        raise ValueError("empty duration")
    if body.startswith("-"):
        raise ValueError(f"negative duration {text!r}")
    body = body.removeprefix("+")
    # Go's time.ParseDuration accepts a bare zero as the one unitless value.
    if body == "0":
        return timedelta(0)

    total_us = Fraction(0)
    position = 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            raise ValueError(f"invalid duration {text!r}")
        number, unit = part.groups()
        if not unit and part.end() == len(body):
            raise ValueError(f"missing unit in duration {text!r}")
        if not unit:
            raise ValueError(f"invalid duration {text!r}")
        if unit not in DURATION_UNITS_US:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}")
        total_us += Fraction(number) * DURATION_UNITS_US[unit]
        position = part.end()

    try:
        return timedelta(microseconds=round(total_us))
    except OverflowError as exc:
        raise ValueError(f"duration {text!r} is too large") from exc


def check_timezone(name: str) -> ZoneInfo:
    """The IANA time zone called `name`; an empty name means UTC.

    Raises InvalidInput naming ``timezone`` for an unknown zone.
    """
    key = name.strip()
    if not key:
        return _UTC_ZONE
    # "localtime" is the host's own zone: nodes configured differently would
    # disagree on when the job fires.
    if key == "localtime":
        raise InvalidInput("timezone", f"unknown time zone {name!r}")

    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidInput("timezone", f"unknown time zone {name!r}") from exc


def format_time(t: datetime | None) -> str | None:
    """`t` as RFC 3339 text in UTC with a ``Z``, or None for None.

    Whole seconds unless `t` has microseconds, e.g. ``2026-12-03T16:30:00Z``
    or ``2026-12-03T16:30:00.123456Z``. Raises ValueError if `t` is naive.
    """
    if t is None:
        return None
    utc = _to_utc(t).replace(tzinfo=None)
    timespec = "microseconds" if utc.microsecond else "seconds"
    return utc.isoformat(timespec=timespec) + "Z"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time with ``Z`` or an offset into an aware UTC datetime.

    Digits past microseconds are dropped. Raises ValueError for anything else,
    including a time without an offset.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an rfc 3339 time: {text!r}")
    date, clock, fraction, offset = match.groups()
    if offset is None:
        raise ValueError(f"time has no utc offset: {text!r}")

    microseconds = (fraction or "")[:6].ljust(6, "0")
    offset = "+00:00" if offset in "Zz" else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{microseconds}{offset}")
    except ValueError as exc:
        raise ValueError(f"not an rfc 3339 time: {text!r}") from exc
    return parsed.astimezone(UTC)


def _parse_cron(expression: str, fields: str, zone: ZoneInfo) -> CronSchedule:
    parts = fields.split()
    if len(parts) not in (5, 6):
        raise InvalidInput(
            "schedule", f"cron expression needs 5 or 6 fields, got {len(parts)}"
        )
    for part in parts:
        if not _CRON_FIELD.fullmatch(part) or _RANDOM_OR_HASHED.match(part):
            raise InvalidInput("schedule", f"invalid cron field {part!r}")

    try:
        schedule = CronSchedule(expression, " ".join(parts), zone)
    except CroniterError as exc:
        raise InvalidInput(
            "schedule", f"invalid cron expression {expression!r}"
        ) from exc

    # An expression like "0 0 30 2 *" parses but matches no date at all.
    try:
        schedule._cron.get_next(datetime, start_time=PROBE_START)
    except CroniterBadDateError as exc:
        raise InvalidInput(
            "schedule", f"cron expression {expression!r} never fires"
        ) from exc
    return schedule


def _parse_every(argument: str) -> timedelta:
    if not argument:
        raise InvalidInput("schedule", "@every needs an interval, e.g. @every 1m30s")
    try:
        interval = parse_duration(argument)
    except ValueError as exc:
        raise InvalidInput("schedule", f"@every: {exc}") from exc
    if interval < MIN_EVERY_INTERVAL:
        raise InvalidInput("schedule", "@every interval must be at least 1s")
    return interval


def _parse_at(argument: str) -> datetime:
    try:
        return parse_time(argument)
    except ValueError as exc:
        raise InvalidInput(
            "schedule", "@at needs an rfc 3339 time, e.g. @at 2026-12-03T16:30:00Z"
        ) from exc


def _to_utc(t: datetime) -> datetime:
    if t.utcoffset() is None:
        raise ValueError("naive datetime; a time zone is required")
    return t.astimezone(UTC)


def _in_second_pass(local: datetime) -> bool:
    """Whether `local` reads a wall time for the second time, after a fold."""
    return bool(local.fold) and local.replace(fold=0).utcoffset() != local.utcoffset()


def _fold_end(zone: ZoneInfo, after_utc: datetime, local: datetime) -> datetime:
    """The naive wall time at which the fold that `local` is inside ends."""
    offset_before = local.replace(fold=0).utcoffset()
    offset_after = local.utcoffset()
    assert offset_before is not None and offset_after is not None

    # The clocks went back no longer ago than the fold lasts.
    fold_length = offset_before - offset_after
    transition = _transition(zone, after_utc - fold_length, after_utc)
    return transition.replace(tzinfo=None) + offset_before


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first whole second in (`before`, `after`] with `after`'s UTC offset.

    `before` must still have the old offset. tzdata transitions fall on whole
    seconds, so a binary search over seconds finds the exact instant.
    """
    target = after.astimezone(zone).utcoffset()
    low = math.floor(before.timestamp())
    high = math.ceil(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)
