"""Fuzzing (fault-injection scenario 9): schedules and SISY settings from hypothesis.

Every input is either accepted — and then gives a valid next fire time, or
parsed settings — or refused with Sisy's own error. Nothing from croniter or
pydantic leaks out.
"""

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisy.conf import SisySettings, TaskOverride, parse_settings
from sisy.exceptions import ConfigurationError, InvalidSchedule
from sisy.schedules import next_fire, validate_schedule

pytestmark = pytest.mark.faults

AFTER = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)

cron_field = st.one_of(
    st.sampled_from(["*", "*/5", "1-5", "0", "59", "61", "mon", "jan", "L", "5#2", "?", "",
                     "1,2,3", "*/0", "-1", "a", "1-", "30/5", "H", "R"]),
    st.text(alphabet="0123456789*/,-#LW?abcdefghijklmnopqrstuvwxyz", max_size=6),
)
schedules = st.one_of(
    st.lists(cron_field, min_size=0, max_size=8).map(" ".join),
    st.text(max_size=40),
    st.sampled_from(["@hourly", "@daily", "@reboot", "@every", "@", "@weekly @daily"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules)
def test_any_schedule_is_accepted_with_a_next_fire_time_or_refused_by_sisy(schedule):
    try:
        normalised = validate_schedule(schedule, task_name="fuzz.task")
    except InvalidSchedule as exc:
        assert "of task 'fuzz.task'" in str(exc)  # Sisy's message, naming the task
        return
    fire = next_fire(normalised, AFTER)
    assert fire.tzinfo is not None and fire > AFTER


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(sorted(SisySettings.model_fields)), st.text(max_size=12))
override_keys = st.one_of(st.sampled_from(sorted(TaskOverride.model_fields)),
                          st.text(max_size=10))
overrides = st.dictionaries(override_keys, json_values, max_size=3)
tasks_dicts = st.dictionaries(st.text(max_size=15), st.one_of(overrides, json_values), max_size=3)
settings_dicts = st.one_of(
    st.dictionaries(keys, json_values, max_size=4),
    st.fixed_dictionaries({"TASKS": tasks_dicts}),
    json_values,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settings_dicts)
def test_any_settings_value_is_parsed_or_refused_with_a_configuration_error(raw):
    try:
        parsed = parse_settings(raw)
    except ConfigurationError as exc:
        assert str(exc)  # a message that names the problem
        return
    assert isinstance(parsed, SisySettings)
    for name in ("reports.daily", "x"):
        assert isinstance(parsed.overrides_for(name), dict)
