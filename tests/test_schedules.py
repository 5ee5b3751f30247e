"""Cron schedules: validation, next firing time, and the daylight-saving policy."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sisy
from sisy.schedules import get_timezone, next_fire, next_fires, validate_schedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(tz, *parts, fold=0):
    return datetime(*parts, tzinfo=tz, fold=fold)


def walls(fires, tz):
    """Firing instants as local ISO strings, which show both the wall time and the offset."""
    return [f.astimezone(tz).isoformat() for f in fires]


# -- validate_schedule ----------------------------------------------------------------------

@pytest.mark.parametrize(("given_", "normalised"), [
    ("*/5 * * * *", "*/5 * * * *"),
    ("0,15,30,45 9-17 * * mon-fri", "0,15,30,45 9-17 * * mon-fri"),
    ("  30   2 * *\t*  ", "30 2 * * *"),
    ("* * * * * */20", "* * * * * */20"),
    ("0 0 29 2 *", "0 0 29 2 *"),
    ("@hourly", "@hourly"),
    ("@Daily", "@daily"),
    ("@annually", "@annually"),
    ("@midnight", "@midnight"),
])
def test_valid_schedules_are_returned_normalised(given_, normalised):
    assert validate_schedule(given_) == normalised


@pytest.mark.parametrize(("schedule", "reason"), [
    ("61 * * * *", "minute field '61' is out of range 0-59."),
    ("0 24 * * *", "hour field '24' is out of range 0-23."),
    ("0 0 32 * *", "day of month field '32' is out of range 1-31."),
    ("0 0 1 13 *", "month field '13' is out of range 1-12."),
    ("0 0 * * 8", "day of week field '8' is out of range 0-7."),
    ("* * * * * 60", "second field '60' is out of range 0-59."),
    ("a * * * *", "minute field 'a' is not acceptable."),
    ("*/0 * * * *", "minute field '*/0': step '0' in field 0 is not acceptable."),
    ("* * * *", "it has 4 fields; give 5 (minute hour day month weekday) or 6"),
    ("*", "it has 1 field; give 5"),
    ("", "it has 0 fields; give 5"),
    ("* * * * * * *", "it has 7 fields; give 5"),
    ("@reboot", "'@reboot' is not a known alias; use one of @yearly, @annually"),
    ("0 0 30 2 *", "it never fires"),
    ("0 0 31 4 *", "it never fires"),
    ("R * * * *", "minute field 'R' uses a random or hashed value"),
    ("0 H * * *", "hour field 'H' uses a random or hashed value"),
    ("H/5 * * * *", "minute field 'H/5' uses a random or hashed value"),
])
def test_invalid_schedules_name_the_schedule_the_task_and_the_reason(schedule, reason):
    with pytest.raises(sisy.InvalidSchedule) as caught:
        validate_schedule(schedule, task_name="shop.bad")
    message = str(caught.value)
    assert message.startswith(f"Schedule '{schedule}' of task 'shop.bad' is not valid cron: ")
    assert reason in message


def test_month_and_day_names_are_not_taken_for_random_values():
    assert validate_schedule("0 0 * mar,apr thu,fri") == "0 0 * mar,apr thu,fri"


def test_a_schedule_without_a_task_name_still_names_the_schedule():
    with pytest.raises(sisy.InvalidSchedule, match=r"^Schedule '61 \* \* \* \*' is not valid cron"):
        validate_schedule("61 * * * *")


@pytest.mark.parametrize(("value", "type_name"), [
    (None, "NoneType"), (5, "int"), (b"* * * * *", "bytes"), (["*"] * 5, "list"),
])
def test_non_string_schedules_are_refused(value, type_name):
    with pytest.raises(
        sisy.InvalidSchedule,
        match=rf"of task 't' must be a cron string such as '\*/5 \* \* \* \*', not {type_name}\.$",
    ):
        validate_schedule(value, task_name="t")


def test_invalid_schedule_is_a_value_error_and_a_sisy_error():
    assert issubclass(sisy.InvalidSchedule, ValueError)
    assert issubclass(sisy.InvalidSchedule, sisy.SisyError)


def test_unknown_timezone_is_refused():
    with pytest.raises(sisy.InvalidSchedule, match="^Timezone 'Mars/Olympus' is not a known IANA"):
        get_timezone("Mars/Olympus")


# -- next_fire, plain -----------------------------------------------------------------------

def test_next_fire_is_strictly_after():
    after = datetime(2024, 1, 1, 0, 5, tzinfo=UTC)
    assert next_fire("*/5 * * * *", after) == datetime(2024, 1, 1, 0, 10, tzinfo=UTC)


def test_next_fire_reads_fields_in_the_given_timezone_and_returns_utc():
    fire = next_fire("0 9 * * *", datetime(2024, 6, 1, tzinfo=UTC), BERLIN)
    assert fire == datetime(2024, 6, 1, 7, 0, tzinfo=UTC)
    assert fire.tzinfo is UTC


def test_an_after_in_another_zone_is_the_same_instant():
    after = local(NEW_YORK, 2024, 6, 1, 20, 0)  # 2024-06-02 00:00 UTC
    assert next_fire("0 * * * *", after) == datetime(2024, 6, 2, 1, 0, tzinfo=UTC)


def test_weekday_names_and_ranges():
    after = datetime(2024, 1, 5, 18, 0, tzinfo=UTC)  # a Friday evening
    fires = next_fires("0,30 9-17 * * mon-fri", after, 3)
    assert fires[0] == datetime(2024, 1, 8, 9, 0, tzinfo=UTC)  # Monday
    assert fires[1:] == [datetime(2024, 1, 8, 9, 30, tzinfo=UTC),
                         datetime(2024, 1, 8, 10, 0, tzinfo=UTC)]


def test_seconds_are_the_sixth_field():
    after = datetime(2024, 1, 1, tzinfo=UTC)
    assert next_fires("* * * * * */20", after, 3) == [
        after + timedelta(seconds=20), after + timedelta(seconds=40), after + timedelta(minutes=1),
    ]
    assert next_fire("0 0 * * * 30", after) == after + timedelta(seconds=30)


def test_leap_day_schedule_skips_to_the_next_leap_year():
    fire = next_fire("0 0 29 2 *", datetime(2024, 3, 1, tzinfo=UTC))
    assert fire == datetime(2028, 2, 29, tzinfo=UTC)


def test_naive_after_is_refused():
    with pytest.raises(ValueError, match=r"^next_fire\(\) needs an aware datetime"):
        next_fire("* * * * *", datetime(2024, 1, 1))


# -- next_fire across daylight-saving changes -----------------------------------------------

def test_berlin_spring_forward_nonexistent_time_fires_once_at_the_transition():
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    fires = next_fires("30 2 * * *", local(BERLIN, 2024, 3, 30, 12, 0), 3, BERLIN)
    assert walls(fires, BERLIN) == [
        "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00", "2024-04-02T02:30:00+02:00",
    ]


def test_berlin_spring_forward_slots_in_the_gap_collapse_into_one():
    fires = next_fires("*/30 * * * *", local(BERLIN, 2024, 3, 31, 1, 10), 4, BERLIN)
    assert walls(fires, BERLIN) == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 02:00 and 02:30 do not exist; 03:00 fires once
        "2024-03-31T03:30:00+02:00",
        "2024-03-31T04:00:00+02:00",
    ]


def test_berlin_fall_back_repeated_time_fires_at_its_first_occurrence_only():
    # 2024-10-27: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    fires = next_fires("30 2 * * *", local(BERLIN, 2024, 10, 26, 12, 0), 2, BERLIN)
    assert walls(fires, BERLIN) == ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]


def test_berlin_fall_back_half_hourly_fires_each_wall_time_once():
    fires = next_fires("*/30 * * * *", local(BERLIN, 2024, 10, 27, 1, 10), 5, BERLIN)
    assert walls(fires, BERLIN) == [
        "2024-10-27T01:30:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T03:00:00+01:00",  # the second 02:00 and 02:30 (CET) do not fire again
        "2024-10-27T03:30:00+01:00",
    ]


def test_fall_back_starting_inside_the_second_occurrence_waits_for_tomorrow():
    after = local(BERLIN, 2024, 10, 27, 2, 10, fold=1)  # 02:10 CET, after 02:30 CEST fired
    assert walls([next_fire("30 2 * * *", after, BERLIN)], BERLIN) == ["2024-10-28T02:30:00+01:00"]


def test_new_york_spring_forward():
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT.
    fires = next_fires("30 2 * * *", local(NEW_YORK, 2024, 3, 9, 12, 0), 2, NEW_YORK)
    assert walls(fires, NEW_YORK) == ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]
    fires = next_fires("*/30 * * * *", local(NEW_YORK, 2024, 3, 10, 1, 45), 3, NEW_YORK)
    assert walls(fires, NEW_YORK) == [
        "2024-03-10T03:00:00-04:00", "2024-03-10T03:30:00-04:00", "2024-03-10T04:00:00-04:00",
    ]


def test_new_york_fall_back():
    # 2024-11-03: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    fires = next_fires("30 1 * * *", local(NEW_YORK, 2024, 11, 2, 12, 0), 2, NEW_YORK)
    assert walls(fires, NEW_YORK) == ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]
    fires = next_fires("*/30 * * * *", local(NEW_YORK, 2024, 11, 3, 0, 50), 4, NEW_YORK)
    assert walls(fires, NEW_YORK) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T02:30:00-05:00",
    ]


def test_utc_schedules_ignore_daylight_saving():
    fires = next_fires("30 2 * * *", datetime(2024, 3, 30, 12, tzinfo=UTC), 2)
    assert fires == [
        datetime(2024, 3, 31, 2, 30, tzinfo=UTC), datetime(2024, 4, 1, 2, 30, tzinfo=UTC),
    ]


# -- fuzz -----------------------------------------------------------------------------------

TOKENS = st.sampled_from([
    "*", "?", "0", "1", "5", "7", "12", "23", "29", "30", "31", "59", "60", "99", "-1",
    "*/5", "*/0", "1-5", "5-1", "1,2", "mon", "sun-sat", "jan", "feb-dec", "L", "W", "15W",
    "mon#2", "5#6", "R", "H", "H(0-29)", "a", "", "1/2", "0-", "#", "@", "!",
])
FIELDS = st.lists(TOKENS, min_size=0, max_size=8).map(" ".join)
RAW = st.text(alphabet="0123456789*/,-#LWRHlw?@ abcdefmnorstuy\t", max_size=30)
ALIAS = st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@every", "@"])
ZONES = st.sampled_from([UTC, BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe")])
AFTER = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.one_of(FIELDS, RAW, ALIAS), after=AFTER, tz=ZONES)
@example(schedule="0 2 * * *", after=datetime(2024, 3, 31, 0, 59, 59, tzinfo=UTC), tz=BERLIN)
@example(schedule="1-0 * * * *", after=datetime(2024, 1, 1, tzinfo=UTC), tz=UTC)
def test_every_schedule_is_either_refused_cleanly_or_fires_after(schedule, after, tz):
    try:
        valid = validate_schedule(schedule, task_name="fuzz")
    except sisy.InvalidSchedule:
        return
    fire = next_fire(valid, after, tz)
    assert fire.tzinfo is not None
    assert fire > after
