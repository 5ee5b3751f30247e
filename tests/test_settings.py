"""The SISY setting: parsing, caching, overrides per task, and the seed's SISY_* names."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.test import override_settings

import sisy
from sisy.conf import get_settings, parse_settings
from tests.helpers import ROOT


def test_defaults_when_sisy_is_empty(sisy_settings):
    sisy_settings()
    conf = get_settings()
    assert conf.ENABLED is True
    assert conf.TASKS == {}
    assert conf.DEFAULT_SCHEDULE == "* * * * *"
    assert conf.RUN_TASK_CHANNEL == "sisy.run_task"
    assert conf.HEARTBEAT_CHANNEL == "sisy.heartbeat"
    assert conf.KILL_TASK_CHANNEL == "sisy.kill_task"
    assert conf.HEARTBEAT_FREQUENCY == 5.0
    assert conf.RETENTION == timedelta(days=30)


def test_parsed_once_and_cached(sisy_settings):
    sisy_settings(ENABLED=False)
    assert get_settings() is get_settings()


def test_override_settings_resets_the_cache(sisy_settings):
    sisy_settings(ENABLED=True)
    assert get_settings().ENABLED is True
    with override_settings(SISY={"ENABLED": False, "HEARTBEAT_FREQUENCY": 2}):
        assert get_settings().ENABLED is False
        assert get_settings().HEARTBEAT_FREQUENCY == 2.0
    assert get_settings().ENABLED is True


def test_settings_are_frozen(sisy_settings):
    sisy_settings()
    with pytest.raises(ValueError, match="frozen"):
        get_settings().ENABLED = False


def test_sisy_none_means_defaults():
    assert parse_settings(None).ENABLED is True


@pytest.mark.parametrize(("value", "type_name"), [
    ([("ENABLED", True)], "list"), ("ENABLED", "str"), (True, "bool"),
])
def test_sisy_must_be_a_dict(sisy_settings, value, type_name):
    sisy_settings(value)
    with pytest.raises(sisy.ConfigurationError, match=(
        rf"^The SISY setting must be a dict such as {{'ENABLED': True}}, not {type_name}.$"
    )):
        get_settings()


def test_configuration_error_is_improperly_configured():
    from django.core.exceptions import ImproperlyConfigured

    assert issubclass(sisy.ConfigurationError, ImproperlyConfigured)


@pytest.mark.parametrize(("raw", "message"), [
    ({"ENABELD": True}, r"SISY\['ENABELD'\] is not a Sisy setting. Did you mean 'ENABLED'\?"),
    ({"HEARTBEAT_FREQ": 5}, r"SISY\['HEARTBEAT_FREQ'\] is not a Sisy setting. Did you mean "
                            r"'HEARTBEAT_FREQUENCY'\?"),
    ({"XYZZY": 1}, r"SISY\['XYZZY'\] is not a Sisy setting.$"),
    ({"TASKS": {"a.b": {"schedul": "@daily"}}},
     r"SISY\['TASKS'\]\['a.b'\]\['schedul'\] is not a Sisy setting. Did you mean 'schedule'\?"),
])
def test_unknown_keys_are_named_with_a_suggestion(sisy_settings, raw, message):
    sisy_settings(raw)
    with pytest.raises(sisy.ConfigurationError, match="^" + message):
        get_settings()


@pytest.mark.parametrize(("raw", "message"), [
    ({"ENABLED": "yes"}, r"SISY\['ENABLED'\] = 'yes' is invalid: Input should be a valid boolean"),
    ({"TASKS": {"a": {"enabled": "yes"}}},
     r"SISY\['TASKS'\]\['a'\]\['enabled'\] = 'yes' is invalid: Input should be a valid boolean"),
    ({"TASKS": {"a": {"retries": -1}}},
     r"SISY\['TASKS'\]\['a'\]\['retries'\] = -1 is invalid: Input should be greater than or "
     r"equal to 0"),
    ({"TASKS": {"a": {"catch_up": "sometimes"}}},
     r"SISY\['TASKS'\]\['a'\]\['catch_up'\] = 'sometimes' is invalid: Input should be "
     r"'latest', 'all' or 'skip'"),
    ({"TASKS": {"a": {"timezone": "Mars/Olympus"}}},
     r"SISY\['TASKS'\]\['a'\]\['timezone'\] = 'Mars/Olympus' is invalid: Timezone "
     r"'Mars/Olympus' is not a known IANA timezone name"),
    ({"TASKS": ["a"]}, r"SISY\['TASKS'\] = \['a'\] is invalid: Input should be a valid dictionary"),
    ({"TASKS": {"a": 5}}, r"SISY\['TASKS'\]\['a'\] = 5 is invalid: Input should be a valid "
                          r"dictionary or instance of TaskOverride"),
    ({"TASKS": {5: {}}}, r"SISY\['TASKS'\] has the key 5, which is invalid: Input should be a "
                         r"valid string"),
    ({"HEARTBEAT_FREQUENCY": 0}, r"SISY\['HEARTBEAT_FREQUENCY'\] = 0 is invalid: Input should "
                                 r"be greater than 0"),
    ({"HEARTBEAT_FREQUENCY": "5"}, r"SISY\['HEARTBEAT_FREQUENCY'\] = '5' is invalid: Input "
                                   r"should be a valid number"),
])
def test_wrong_types_and_ranges_are_named(sisy_settings, raw, message):
    sisy_settings(raw)
    with pytest.raises(sisy.ConfigurationError, match="^" + message):
        get_settings()


def test_invalid_schedule_in_tasks_names_where_and_why(sisy_settings):
    sisy_settings(TASKS={"reports.*": {"schedule": "61 * * * *"}})
    with pytest.raises(sisy.ConfigurationError, match=(
        r"^SISY\['TASKS'\]\['reports.\*'\]\['schedule'\] = '61 \* \* \* \*' is invalid: "
        r"Schedule '61 \* \* \* \*' is not valid cron: minute field '61' is out of range 0-59.$"
    )):
        get_settings()


def test_every_problem_is_reported_at_once(sisy_settings):
    sisy_settings(ENABELD=True, ENABLED="no")
    with pytest.raises(sisy.ConfigurationError) as caught:
        get_settings()
    assert str(caught.value).splitlines() == [
        "SISY['ENABLED'] = 'no' is invalid: Input should be a valid boolean",
        "SISY['ENABELD'] is not a Sisy setting. Did you mean 'ENABLED'?",
    ]


def test_task_schedules_are_normalised(sisy_settings):
    sisy_settings(TASKS={"a": {"schedule": " @Daily "}})
    assert get_settings().TASKS["a"].schedule == "@daily"


# -- TASKS precedence -----------------------------------------------------------------------

def test_overrides_for_merges_globs_then_the_exact_name(sisy_settings):
    sisy_settings(TASKS={
        "reports.weekly": {"enabled": True},
        "*": {"retries": 1, "enabled": False, "channel": "any"},
        "reports.*": {"schedule": "0 7 * * *", "enabled": False, "retries": 2},
        "reports.w*": {"schedule": "0 8 * * *"},
    })
    conf = get_settings()
    assert conf.overrides_for("reports.weekly") == {
        "enabled": True,             # exact name beats every glob
        "schedule": "0 8 * * *",     # longer glob beats shorter
        "retries": 2,                # reports.* beats *
        "channel": "any",            # only * sets it
    }
    assert conf.overrides_for("reports.daily") == {
        "enabled": False, "schedule": "0 7 * * *", "retries": 2, "channel": "any",
    }
    assert conf.overrides_for("billing.nightly") == {
        "enabled": False, "retries": 1, "channel": "any",
    }


def test_glob_match_is_case_sensitive_and_none_means_not_overridden(sisy_settings):
    sisy_settings(TASKS={"Reports.*": {"enabled": False}, "reports.daily": {"schedule": None}})
    assert get_settings().overrides_for("reports.daily") == {}


# -- the seed's SISY_* names ----------------------------------------------------------------

def test_legacy_settings_are_honoured(sisy_settings):
    sisy_settings()
    with override_settings(
        SISY_HEARTBEAT_FREQUENCY=10, SISY_DEFAULT_SCHEDULE="0 * * * *",
        SISY_HEARTBEAT_CHANNEL="old.heartbeat", SISY_RUN_TASK_CHANNEL="old.run",
        SISY_KILL_TASK_CHANNEL="old.kill",
    ):
        conf = get_settings()
        assert conf.HEARTBEAT_FREQUENCY == 10.0
        assert conf.DEFAULT_SCHEDULE == "0 * * * *"
        assert conf.HEARTBEAT_CHANNEL == "old.heartbeat"
        assert conf.RUN_TASK_CHANNEL == "old.run"
        assert conf.KILL_TASK_CHANNEL == "old.kill"
    assert get_settings().RUN_TASK_CHANNEL == "sisy.run_task"


def test_sisy_wins_over_a_legacy_setting(sisy_settings):
    sisy_settings(RUN_TASK_CHANNEL="new.run")
    with override_settings(SISY_RUN_TASK_CHANNEL="old.run", SISY_HEARTBEAT_CHANNEL="old.hb"):
        assert get_settings().RUN_TASK_CHANNEL == "new.run"
        assert get_settings().HEARTBEAT_CHANNEL == "old.hb"


def test_a_bad_legacy_value_is_named_by_its_legacy_name(sisy_settings):
    sisy_settings()
    with override_settings(SISY_DEFAULT_SCHEDULE="often"):
        with pytest.raises(sisy.ConfigurationError, match=(
            r"^SISY_DEFAULT_SCHEDULE = 'often' is invalid: Schedule 'often' is not valid cron: "
            r"it has 1 field"
        )):
            get_settings()


def test_a_bad_legacy_value_hidden_by_sisy_is_ignored(sisy_settings):
    sisy_settings(DEFAULT_SCHEDULE="@daily")
    with override_settings(SISY_DEFAULT_SCHEDULE="often"):
        assert get_settings().DEFAULT_SCHEDULE == "@daily"


# -- importing sisy -------------------------------------------------------------------------

@pytest.mark.parametrize("settings_module", [None, "no.such.settings"])
def test_importing_sisy_does_not_touch_settings(settings_module):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    if settings_module:
        env["DJANGO_SETTINGS_MODULE"] = settings_module
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import sisy, sisy.conf, sisy.schedules, sisy.registry, sisy.base\n"
        "from django.conf import settings\n"
        "assert not settings.configured, 'settings were read'\n"
        "print(sisy.task.__name__, sisy.periodic.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "task periodic\n"
