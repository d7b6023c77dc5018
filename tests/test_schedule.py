"""Tests for dcron.schedule: parsing schedules and computing fire times."""

import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dcron.errors import InvalidInput
from dcron.schedule import (
    AtSchedule,
    EverySchedule,
    ManualSchedule,
    Schedule,
    check_timezone,
    format_time,
    parse,
    parse_duration,
    parse_time,
)

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def fire_times(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end), found by chaining next_after."""
    times = []
    current = schedule.next_after(start)
    while current is not None and current < end:
        # Without this a schedule stuck on one instant would loop forever.
        assert not times or current > times[-1], f"{current} after {times[-1]}"
        times.append(current)
        current = schedule.next_after(current)
    return times


class TestCronFields:
    def test_five_fields_are_minute_hour_day_month_weekday(self) -> None:
        schedule = parse("30 14 3 12 *")

        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 12, 3, 14, 30)

    def test_six_fields_take_seconds_first(self) -> None:
        schedule = parse("15 30 14 * * *")

        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 14, 30, 15)
        assert schedule.next_after(utc(2026, 1, 1, 14, 30, 15)) == utc(
            2026, 1, 2, 14, 30, 15
        )

    def test_six_fields_step_through_seconds(self) -> None:
        schedule = parse("*/20 * * * * *")

        assert fire_times(schedule, utc(2026, 1, 1), utc(2026, 1, 1, 0, 1, 1)) == [
            utc(2026, 1, 1, 0, 0, 20),
            utc(2026, 1, 1, 0, 0, 40),
            utc(2026, 1, 1, 0, 1, 0),
        ]

    def test_names_ranges_steps_and_lists_combine(self) -> None:
        schedule = parse("0,30 9-17/4 * JAN MON-FRI")

        # 2026-01-02 is a Friday; hours 9, 13 and 17 at :00 and :30.
        assert fire_times(schedule, utc(2026, 1, 2), utc(2026, 1, 3)) == [
            utc(2026, 1, 2, 9),
            utc(2026, 1, 2, 9, 30),
            utc(2026, 1, 2, 13),
            utc(2026, 1, 2, 13, 30),
            utc(2026, 1, 2, 17),
            utc(2026, 1, 2, 17, 30),
        ]
        assert schedule.next_after(utc(2026, 1, 2, 17, 30)) == utc(2026, 1, 5, 9)

    def test_restricted_day_of_month_and_weekday_mean_either(self) -> None:
        schedule = parse("0 0 13 * FRI")

        # Friday 2026-01-02, Friday 2026-01-09, Tuesday 2026-01-13, Friday 01-16.
        assert fire_times(schedule, utc(2026, 1, 1), utc(2026, 1, 17)) == [
            utc(2026, 1, 2),
            utc(2026, 1, 9),
            utc(2026, 1, 13),
            utc(2026, 1, 16),
        ]

    def test_a_starred_day_field_means_both_as_in_vixie_cron(self) -> None:
        schedule = parse("0 0 */2 * MON")

        # Odd days that are Mondays: 2026-01-05, then 2026-01-19.
        assert fire_times(schedule, utc(2026, 1, 1), utc(2026, 1, 31)) == [
            utc(2026, 1, 5),
            utc(2026, 1, 19),
        ]

    def test_sunday_is_both_zero_and_seven(self) -> None:
        after = utc(2026, 1, 1)

        assert parse("0 0 * * 0").next_after(after) == utc(2026, 1, 4)
        assert parse("0 0 * * 7").next_after(after) == utc(2026, 1, 4)

    def test_fields_are_matched_in_the_job_time_zone(self) -> None:
        schedule = parse("0 9 * * *", "Asia/Tokyo")

        # 09:00 in Tokyo (UTC+9, no DST) is midnight UTC.
        assert schedule.next_after(utc(2025, 12, 31, 12)) == utc(2026, 1, 1)
        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 2)

    def test_after_may_be_in_any_zone(self) -> None:
        schedule = parse("0 12 * * *")
        after = datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=2)))

        fire = schedule.next_after(after)

        assert fire == utc(2026, 1, 1, 12)
        assert fire is not None and fire.tzinfo is UTC

    def test_next_after_is_strictly_after(self) -> None:
        schedule = parse("0 12 * * *")

        assert schedule.next_after(utc(2026, 1, 1, 12)) == utc(2026, 1, 2, 12)
        assert schedule.next_after(utc(2026, 1, 1, 11, 59, 59, 999999)) == utc(
            2026, 1, 1, 12
        )

    def test_leap_day_fires_every_four_years(self) -> None:
        schedule = parse("0 0 29 2 *")

        assert schedule.next_after(utc(2026, 1, 1)) == utc(2028, 2, 29)
        assert schedule.next_after(utc(2028, 2, 29)) == utc(2032, 2, 29)

    def test_naive_after_is_refused(self) -> None:
        with pytest.raises(ValueError):
            parse("* * * * *").next_after(datetime(2026, 1, 1))

    def test_next_after_takes_microseconds(self) -> None:
        schedule = parse("*/5 * * * *", BERLIN)
        started = time.perf_counter()

        for _ in range(1000):
            schedule.next_after(utc(2026, 6, 1, 6, 0, 1))

        # About 30 us each on a laptop; the bound leaves room for slow CI.
        assert time.perf_counter() - started < 1.0


class TestDescriptors:
    @pytest.mark.parametrize(
        ("descriptor", "expected"),
        [
            ("@yearly", utc(2027, 1, 1)),
            ("@annually", utc(2027, 1, 1)),
            ("@monthly", utc(2026, 6, 1)),
            ("@weekly", utc(2026, 5, 17)),
            ("@daily", utc(2026, 5, 16)),
            ("@midnight", utc(2026, 5, 16)),
            ("@hourly", utc(2026, 5, 15, 11)),
            ("@minutely", utc(2026, 5, 15, 10, 31)),
        ],
    )
    def test_descriptor_fires_like_its_cron_expression(
        self, descriptor: str, expected: datetime
    ) -> None:
        # 2026-05-15 is a Friday.
        schedule = parse(descriptor)

        assert schedule.next_after(utc(2026, 5, 15, 10, 30, 5)) == expected
        assert schedule.expression == descriptor

    def test_descriptors_follow_the_job_time_zone(self) -> None:
        schedule = parse("@daily", BERLIN)

        assert schedule.next_after(utc(2026, 1, 15, 12)) == utc(2026, 1, 15, 23)
        assert schedule.next_after(utc(2026, 7, 15, 12)) == utc(2026, 7, 15, 22)

    def test_descriptors_ignore_case(self) -> None:
        schedule = parse("@HOURLY")

        assert schedule.next_after(utc(2026, 5, 15, 10, 30)) == utc(2026, 5, 15, 11)

    def test_a_descriptor_takes_no_argument(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse("@daily 5")

        assert caught.value.field == "schedule"


class TestEvery:
    def test_two_seconds_fire_on_even_seconds(self) -> None:
        schedule = parse("@every 2s")

        assert isinstance(schedule, EverySchedule)
        assert fire_times(
            schedule, utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1, 0, 0, 7)
        ) == [
            utc(2026, 1, 1, 0, 0, 2),
            utc(2026, 1, 1, 0, 0, 4),
            utc(2026, 1, 1, 0, 0, 6),
        ]

    def test_ninety_seconds_count_from_the_unix_epoch(self) -> None:
        schedule = parse("@every 1m30s")

        # 2026-01-01T00:00:00Z is 1767225600 s after the epoch, a multiple of 90.
        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 1, 30)
        assert schedule.next_after(utc(2026, 1, 1, 0, 1, 29)) == utc(
            2026, 1, 1, 0, 1, 30
        )
        assert schedule.next_after(utc(2026, 1, 1, 0, 1, 30)) == utc(2026, 1, 1, 0, 3)

    def test_slots_do_not_depend_on_when_the_schedule_was_parsed(self) -> None:
        schedule = parse("@every 7s")

        # 1767225600 = 7 * 252460800, so 2026-01-01T00:00:00Z is a slot.
        assert schedule.next_after(utc(2025, 12, 31, 23, 59, 59)) == utc(2026, 1, 1)

    def test_one_hour_fires_on_the_utc_hour_whatever_the_zone(self) -> None:
        schedule = parse("@every 1h", "Asia/Kolkata")

        assert schedule.next_after(utc(2026, 3, 8, 6, 59, 59, 500000)) == utc(
            2026, 3, 8, 7
        )
        assert schedule.next_after(utc(2026, 3, 8, 7)) == utc(2026, 3, 8, 8)

    @pytest.mark.parametrize("interval", ["500ms", "0s", "999ms", "0"])
    def test_intervals_below_one_second_are_rejected(self, interval: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse(f"@every {interval}")

        assert caught.value.field == "schedule"
        assert caught.value.problem == "@every interval must be at least 1s"

    @pytest.mark.parametrize(
        "expression", ["@every", "@every 5", "@every 5x", "@every -1s", "@every soon"]
    )
    def test_garbage_intervals_are_rejected(self, expression: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse(expression)

        assert caught.value.field == "schedule"

    def test_the_problem_names_the_bad_duration(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse("@every 5")

        assert str(caught.value) == "schedule: @every: missing unit in duration '5'"


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2s", timedelta(seconds=2)),
            ("1m30s", timedelta(seconds=90)),
            ("1h", timedelta(hours=1)),
            ("1.5h", timedelta(minutes=90)),
            ("500ms", timedelta(milliseconds=500)),
            ("2h45m", timedelta(hours=2, minutes=45)),
            ("1h1m1s1ms", timedelta(hours=1, minutes=1, seconds=1, milliseconds=1)),
            (".5s", timedelta(milliseconds=500)),
            ("1.1s", timedelta(seconds=1, milliseconds=100)),
            ("90m", timedelta(minutes=90)),
            ("0", timedelta(0)),
            (" 3s ", timedelta(seconds=3)),
        ],
    )
    def test_valid_durations(self, text: str, expected: timedelta) -> None:
        assert parse_duration(text) == expected

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "empty duration"),
            ("  ", "empty duration"),
            ("5", "missing unit in duration '5'"),
            ("-5s", "negative duration '-5s'"),
            ("5d", "unknown unit 'd' in duration '5d'"),
            ("5us", "unknown unit 'us' in duration '5us'"),
            ("abc", "invalid duration 'abc'"),
            ("1h 30m", "invalid duration '1h 30m'"),
            ("s", "invalid duration 's'"),
            ("1..5s", "invalid duration '1..5s'"),
        ],
    )
    def test_invalid_durations(self, text: str, message: str) -> None:
        with pytest.raises(ValueError) as caught:
            parse_duration(text)

        assert str(caught.value) == message


class TestAt:
    def test_fires_once_at_its_instant(self) -> None:
        schedule = parse("@at 2026-12-03T16:30:00Z")

        assert isinstance(schedule, AtSchedule)
        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 12, 3, 16, 30)
        assert schedule.next_after(utc(2026, 12, 3, 16, 30)) is None

    def test_an_offset_is_converted_to_utc(self) -> None:
        schedule = parse("@at 2026-12-03T11:30:00-05:00", BERLIN)

        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 12, 3, 16, 30)

    def test_a_past_time_parses_and_never_fires(self) -> None:
        schedule = parse("@at 2020-01-01T00:00:00Z")

        assert schedule.next_after(utc(2026, 1, 1)) is None

    @pytest.mark.parametrize(
        "expression", ["@at", "@at tomorrow", "@at 2026-12-03T16:30:00"]
    )
    def test_a_missing_or_naive_time_is_rejected(self, expression: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse(expression)

        assert caught.value.field == "schedule"


class TestManually:
    def test_never_fires(self) -> None:
        schedule = parse("@manually", NEW_YORK)

        assert isinstance(schedule, ManualSchedule)
        assert schedule.next_after(utc(1970, 1, 1)) is None
        assert schedule.next_after(utc(2026, 6, 1)) is None


class TestRejection:
    @pytest.mark.parametrize("expression", ["", "   ", "\t\n"])
    def test_an_empty_schedule_is_required(self, expression: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse(expression)

        assert str(caught.value) == "schedule: required"

    @pytest.mark.parametrize(
        "expression",
        [
            "every minute",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "* 24 * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "a b c d e",
            "* * * * MOON",
            "@reboot",
            "@weekdays",
            "R * * * *",
            "H * * * *",
            "0 0 1 1 * 2027",
            "5;6 * * * *",
        ],
    )
    def test_garbage_is_rejected_naming_the_schedule(self, expression: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse(expression)

        assert caught.value.field == "schedule"

    def test_the_field_count_is_explained(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse("* * * *")

        assert caught.value.problem == "cron expression needs 5 or 6 fields, got 4"

    @pytest.mark.parametrize(
        "expression", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 30 2 *"]
    )
    def test_an_expression_that_never_fires_is_rejected_quickly(
        self, expression: str
    ) -> None:
        started = time.perf_counter()

        with pytest.raises(InvalidInput) as caught:
            parse(expression)

        assert time.perf_counter() - started < 0.05
        assert caught.value.problem == f"cron expression {expression!r} never fires"

    def test_surrounding_whitespace_is_trimmed(self) -> None:
        schedule = parse("  0 12 * * *\n")

        assert schedule.expression == "0 12 * * *"
        assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 12)

    def test_an_unknown_time_zone_is_rejected_naming_the_timezone(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse("0 12 * * *", "Mars/Olympus_Mons")

        assert caught.value.field == "timezone"
        assert str(caught.value) == "timezone: unknown time zone 'Mars/Olympus_Mons'"

    def test_the_time_zone_is_checked_for_every_and_at_too(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse("@every 1m", "Nowhere")

        assert caught.value.field == "timezone"


class TestCheckTimezone:
    @pytest.mark.parametrize("name", ["", "UTC"])
    def test_empty_and_utc_mean_utc(self, name: str) -> None:
        assert check_timezone(name) == ZoneInfo("UTC")

    def test_an_iana_name_is_returned_as_its_zone(self) -> None:
        assert check_timezone(BERLIN) == ZoneInfo(BERLIN)

    @pytest.mark.parametrize(
        "name", ["Nowhere", "America", "America/", "../etc", "/etc/passwd", "localtime"]
    )
    def test_unknown_or_host_dependent_zones_are_rejected(self, name: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            check_timezone(name)

        assert str(caught.value) == f"timezone: unknown time zone {name!r}"


class TestSpringForward:
    """America/New_York skips 02:00-03:00 on 2026-03-08 (at 07:00Z); Berlin
    skips 02:00-03:00 on 2026-03-29 (at 01:00Z)."""

    def test_a_skipped_wall_time_fires_once_at_the_transition(self) -> None:
        schedule = parse("30 2 * * *", NEW_YORK)

        assert fire_times(schedule, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)) == [
            utc(2026, 3, 8, 7),
            utc(2026, 3, 9, 6, 30),
        ]

    def test_all_matches_inside_the_gap_fire_once_together(self) -> None:
        schedule = parse("*/15 2 * * *", NEW_YORK)

        assert fire_times(schedule, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)) == [
            utc(2026, 3, 8, 7),
            utc(2026, 3, 9, 6),
            utc(2026, 3, 9, 6, 15),
            utc(2026, 3, 9, 6, 30),
            utc(2026, 3, 9, 6, 45),
        ]

    def test_a_skipped_time_with_seconds_fires_at_the_transition(self) -> None:
        schedule = parse("30 30 2 * * *", NEW_YORK)

        assert schedule.next_after(utc(2026, 3, 8)) == utc(2026, 3, 8, 7)

    def test_every_minute_continues_across_the_gap(self) -> None:
        schedule = parse("* * * * *", NEW_YORK)

        # 01:58 and 01:59 EST, then the whole skipped hour at 07:00Z, then 03:01 EDT.
        assert fire_times(schedule, utc(2026, 3, 8, 6, 57), utc(2026, 3, 8, 7, 3)) == [
            utc(2026, 3, 8, 6, 58),
            utc(2026, 3, 8, 6, 59),
            utc(2026, 3, 8, 7),
            utc(2026, 3, 8, 7, 1),
            utc(2026, 3, 8, 7, 2),
        ]

    def test_after_at_the_transition_moves_to_the_next_day(self) -> None:
        schedule = parse("30 2 * * *", NEW_YORK)

        assert schedule.next_after(utc(2026, 3, 8, 6, 59, 59)) == utc(2026, 3, 8, 7)
        assert schedule.next_after(utc(2026, 3, 8, 7)) == utc(2026, 3, 9, 6, 30)

    def test_hourly_fires_twenty_three_times_on_the_short_day(self) -> None:
        schedule = parse("@hourly", NEW_YORK)

        # Local midnight 2026-03-08 is 05:00Z, the next one 04:00Z; wall hours
        # 02:00 (skipped) and 03:00 both fire at 07:00Z.
        fires = fire_times(schedule, utc(2026, 3, 8, 4, 59, 59), utc(2026, 3, 9, 4))

        assert fires == [utc(2026, 3, 8, 5), utc(2026, 3, 8, 6)] + [
            utc(2026, 3, 8, 7) + timedelta(hours=k) for k in range(21)
        ]

    def test_berlin_fires_a_skipped_time_at_its_transition(self) -> None:
        schedule = parse("30 2 * * *", BERLIN)

        assert fire_times(schedule, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12)) == [
            utc(2026, 3, 29, 1),
            utc(2026, 3, 30, 0, 30),
        ]

    def test_the_hour_after_the_gap_is_not_doubled(self) -> None:
        schedule = parse("0 3 * * *", BERLIN)

        assert fire_times(schedule, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12)) == [
            utc(2026, 3, 29, 1),
            utc(2026, 3, 30, 1),
        ]


class TestFallBack:
    """America/New_York repeats 01:00-02:00 on 2026-11-01 (EDT until 06:00Z);
    Berlin repeats 02:00-03:00 on 2026-10-25 (CEST until 01:00Z)."""

    def test_a_repeated_wall_time_fires_at_its_first_occurrence(self) -> None:
        schedule = parse("30 1 * * *", NEW_YORK)

        assert fire_times(schedule, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12)) == [
            utc(2026, 11, 1, 5, 30),
            utc(2026, 11, 2, 6, 30),
        ]

    def test_after_inside_the_fold_does_not_fire_the_second_occurrence(self) -> None:
        schedule = parse("30 1 * * *", NEW_YORK)

        # 05:45Z is 01:45 EDT; 06:30Z would be 01:30 EST, the second occurrence.
        assert schedule.next_after(utc(2026, 11, 1, 5, 45)) == utc(2026, 11, 2, 6, 30)
        assert schedule.next_after(utc(2026, 11, 1, 6, 15)) == utc(2026, 11, 2, 6, 30)

    def test_hourly_skips_the_repeated_hour(self) -> None:
        schedule = parse("0 * * * *", NEW_YORK)

        assert fire_times(
            schedule, utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 9, 30)
        ) == [
            utc(2026, 11, 1, 4),  # 00:00 EDT
            utc(2026, 11, 1, 5),  # 01:00 EDT
            utc(2026, 11, 1, 7),  # 02:00 EST; 06:00Z (01:00 EST) is skipped
            utc(2026, 11, 1, 8),
            utc(2026, 11, 1, 9),
        ]

    def test_hourly_fires_twenty_four_times_on_the_long_day(self) -> None:
        schedule = parse("@hourly", NEW_YORK)

        # Local midnight 2026-11-01 is 04:00Z, the next one 05:00Z: 25 hours,
        # of which the repeated 01:00 EST (06:00Z) does not fire.
        fires = fire_times(schedule, utc(2026, 11, 1, 3, 59, 59), utc(2026, 11, 2, 5))

        assert fires == [utc(2026, 11, 1, 4), utc(2026, 11, 1, 5)] + [
            utc(2026, 11, 1, 7) + timedelta(hours=k) for k in range(22)
        ]

    def test_every_quarter_hour_pauses_for_the_second_pass(self) -> None:
        schedule = parse("*/15 * * * *", NEW_YORK)

        assert fire_times(
            schedule, utc(2026, 11, 1, 5, 40), utc(2026, 11, 1, 7, 20)
        ) == [
            utc(2026, 11, 1, 5, 45),
            utc(2026, 11, 1, 7),
            utc(2026, 11, 1, 7, 15),
        ]
        assert schedule.next_after(utc(2026, 11, 1, 6)) == utc(2026, 11, 1, 7)

    def test_a_seconds_field_skips_the_second_pass_without_crawling(self) -> None:
        schedule = parse("*/10 * * * * *", NEW_YORK)
        started = time.perf_counter()

        fire = schedule.next_after(utc(2026, 11, 1, 6, 0, 1))

        assert fire == utc(2026, 11, 1, 7)
        assert time.perf_counter() - started < 0.05

    def test_berlin_fires_a_repeated_time_once(self) -> None:
        schedule = parse("30 2 * * *", BERLIN)

        assert fire_times(schedule, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)) == [
            utc(2026, 10, 25, 0, 30),
            utc(2026, 10, 26, 1, 30),
        ]
        # 01:15Z is 02:15 CET, inside the second pass.
        assert schedule.next_after(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 26, 1, 30)


class TestMonotonicity:
    @pytest.mark.parametrize(
        ("zone", "day"),
        [
            (NEW_YORK, utc(2026, 3, 8)),
            (NEW_YORK, utc(2026, 11, 1)),
            (BERLIN, utc(2026, 3, 29)),
            (BERLIN, utc(2026, 10, 25)),
        ],
    )
    @pytest.mark.parametrize(
        "expression",
        [
            "* * * * *",
            "*/7 * * * *",
            "30 2 * * *",
            "30 1 * * *",
            "15,45 1-3 * * *",
            "@hourly",
            "0 */20 * * * *",
        ],
    )
    def test_fire_times_strictly_increase_across_transition_days(
        self, zone: str, day: datetime, expression: str
    ) -> None:
        schedule = parse(expression, zone)

        fires = fire_times(
            schedule, day - timedelta(hours=6), day + timedelta(hours=30)
        )

        assert fires
        assert all(a < b for a, b in zip(fires, fires[1:], strict=False))
        # Asking from between two fire times, as a restarted leader does, finds
        # the later one: nothing hides in between, even inside a fold.
        for previous, following in zip(fires, fires[1:], strict=False):
            between = previous + (following - previous) / 2
            assert schedule.next_after(between) == following


class TestTimeText:
    def test_none_formats_as_none(self) -> None:
        assert format_time(None) is None

    def test_whole_seconds_format_without_a_fraction(self) -> None:
        assert format_time(utc(2026, 12, 3, 16, 30)) == "2026-12-03T16:30:00Z"

    def test_microseconds_are_kept(self) -> None:
        t = utc(2026, 12, 3, 16, 30, 0, 123456)

        assert format_time(t) == "2026-12-03T16:30:00.123456Z"

    def test_other_zones_format_in_utc(self) -> None:
        t = datetime(2026, 12, 3, 11, 30, tzinfo=ZoneInfo(NEW_YORK))

        assert format_time(t) == "2026-12-03T16:30:00Z"

    def test_naive_times_do_not_format(self) -> None:
        with pytest.raises(ValueError):
            format_time(datetime(2026, 12, 3, 16, 30))

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-12-03T16:30:00Z", utc(2026, 12, 3, 16, 30)),
            ("2026-12-03t16:30:00z", utc(2026, 12, 3, 16, 30)),
            ("2026-12-03T11:30:00-05:00", utc(2026, 12, 3, 16, 30)),
            ("2026-12-04T01:30:00+09:00", utc(2026, 12, 3, 16, 30)),
            ("2026-12-03T16:30:00.5Z", utc(2026, 12, 3, 16, 30, 0, 500000)),
            ("2026-12-03T16:30:00.123456789Z", utc(2026, 12, 3, 16, 30, 0, 123456)),
            ("2026-12-03 16:30:00Z", utc(2026, 12, 3, 16, 30)),
        ],
    )
    def test_rfc3339_parses_to_utc(self, text: str, expected: datetime) -> None:
        parsed = parse_time(text)

        assert parsed == expected
        assert parsed.tzinfo is UTC

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "tomorrow",
            "2026-12-03",
            "2026-12-03T16:30:00",
            "2026-12-03T16:30Z",
            "20261203T163000Z",
            "2026-13-03T16:30:00Z",
            "2026-12-03T25:30:00Z",
            "2026-12-03T16:30:00+5",
        ],
    )
    def test_naive_or_malformed_text_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_time(text)

    @pytest.mark.parametrize(
        "t",
        [
            utc(2026, 12, 3, 16, 30),
            utc(2026, 12, 3, 16, 30, 0, 123456),
            utc(1970, 1, 1),
        ],
    )
    def test_format_and_parse_round_trip(self, t: datetime) -> None:
        text = format_time(t)

        assert text is not None
        assert parse_time(text) == t
        assert format_time(parse_time(text)) == text
