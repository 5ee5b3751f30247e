"""System checks: sisy.E001-E004, sisy.W001-W002."""

import pytest
from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from sisy import checks as sisy_checks

REDIS = "channels_redis.core.RedisChannelLayer"
URL = "redis://127.0.0.1:6379/0"


def sisy_messages():
    return checks.run_checks(tags=["sisy"])


def ids(messages):
    return [m.id for m in messages]


@pytest.fixture
def redis_8(monkeypatch):
    monkeypatch.setattr(sisy_checks, "_redis_major", lambda: 8)


def redis_layer(*hosts, **config):
    if hosts:
        config["hosts"] = list(hosts)
    return {"default": {"BACKEND": REDIS, "CONFIG": config}}


# -- good configurations --------------------------------------------------------------------

@pytest.mark.django_db  # Django 6.1's own checks ask SQLite about JSON support
def test_the_test_settings_pass_every_check(sisy_settings):
    sisy_settings(TASKS={"reports.*": {"schedule": "0 7 * * *"}, "reports.weekly": {}})
    assert sisy_messages() == []
    call_command("check", "--fail-level", "WARNING")  # raises SystemCheckError otherwise


@pytest.mark.parametrize("host", [
    {"address": URL, "socket_timeout": 10},
    {"address": URL + "?socket_timeout=30"},
    URL + "?socket_timeout=5.5",
])
def test_redis_8_with_a_long_socket_timeout_is_fine(redis_8, host):
    with override_settings(CHANNEL_LAYERS=redis_layer(host)):
        assert sisy_messages() == []


@pytest.mark.parametrize("major", [7, None])
def test_older_or_missing_redis_py_is_fine(monkeypatch, major):
    monkeypatch.setattr(sisy_checks, "_redis_major", lambda: major)
    with override_settings(CHANNEL_LAYERS=redis_layer(("localhost", 6379))):
        assert sisy_messages() == []


# -- E001-E003: the SISY setting ------------------------------------------------------------

def test_e001_unknown_key(sisy_settings):
    sisy_settings(ENABELD=False)
    [error] = sisy_messages()
    assert error.id == "sisy.E001"
    assert error.level == checks.ERROR
    assert error.msg == "SISY['ENABELD'] is not a Sisy setting. Did you mean 'ENABLED'?"
    assert error.hint.startswith("Remove the key or correct its spelling")


def test_e002_invalid_schedule_in_tasks(sisy_settings):
    sisy_settings(TASKS={"reports.daily": {"schedule": "0 25 * * *"}})
    [error] = sisy_messages()
    assert error.id == "sisy.E002"
    assert error.msg == (
        "SISY['TASKS']['reports.daily']['schedule'] = '0 25 * * *' is invalid: Schedule "
        "'0 25 * * *' is not valid cron: hour field '25' is out of range 0-23."
    )
    assert error.hint == "Give 5 cron fields (6 with seconds last) or an alias such as @hourly."


def test_e002_invalid_default_schedule(sisy_settings):
    sisy_settings(DEFAULT_SCHEDULE="every minute")
    assert ids(sisy_messages()) == ["sisy.E002"]


@pytest.mark.parametrize("raw", [
    {"ENABLED": "yes"}, {"TASKS": {"reports.daily": {"enabled": "yes"}}}, "not a dict",
])
def test_e003_wrong_type(sisy_settings, raw):
    sisy_settings(raw)
    [error] = sisy_messages()
    assert error.id == "sisy.E003"
    assert error.hint == "See the settings reference for the allowed values."


def test_several_setting_errors_are_each_reported(sisy_settings):
    sisy_settings(ENABELD=True, ENABLED="no", DEFAULT_SCHEDULE="x")
    assert sorted(ids(sisy_messages())) == ["sisy.E001", "sisy.E002", "sisy.E003"]


@pytest.mark.django_db  # Django 6.1's own checks ask SQLite about JSON support
def test_manage_py_check_fails_on_a_settings_error(sisy_settings):
    sisy_settings(ENABELD=False)
    with pytest.raises(SystemCheckError, match=r"\(sisy.E001\) SISY\['ENABELD'\] is not a Sisy"):
        call_command("check")


# -- E004: channel layers -------------------------------------------------------------------

def test_e004_no_channel_layers():
    with override_settings():
        del settings.CHANNEL_LAYERS
        [error] = sisy_messages()
    assert error.id == "sisy.E004"
    assert error.msg == "CHANNEL_LAYERS has no 'default' layer, so Sisy cannot wake workers."
    assert "channels.layers.InMemoryChannelLayer" in error.hint


@pytest.mark.parametrize("layers", [{}, {"other": {"BACKEND": REDIS}}, "nonsense"])
def test_e004_no_default_layer(layers):
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(sisy_messages()) == ["sisy.E004"]


# -- W001: overrides that match nothing -----------------------------------------------------

def test_w001_misspelt_task_name_with_did_you_mean(sisy_settings):
    sisy_settings(TASKS={"reports.daly": {"enabled": False}})
    [warning] = sisy_messages()
    assert warning.id == "sisy.W001"
    assert warning.level == checks.WARNING
    assert warning.msg == "SISY['TASKS']['reports.daly'] matches no registered task, so it " \
                          "changes nothing."
    assert warning.hint == "Did you mean 'reports.daily'?"


def test_w001_glob_that_matches_nothing_lists_registered_tasks(sisy_settings, isolated_registry):
    import sisy
    from tests.test_decorators import first

    sisy.task(name="only.one")(first)
    sisy_settings(TASKS={"billing.*": {"enabled": False}})
    [warning] = sisy_messages()
    assert warning.msg.startswith("SISY['TASKS']['billing.*'] matches no registered task")
    assert warning.hint == "Registered tasks: only.one."


def test_w001_with_an_empty_registry(sisy_settings, isolated_registry):
    sisy_settings(TASKS={"zzz": {}})
    assert sisy_messages()[0].hint == "Registered tasks: none."


# -- W002: channels-redis with redis-py 8 ---------------------------------------------------

@pytest.mark.parametrize("hosts", [
    [("localhost", 6379)],
    [URL],
    [{"address": URL}],
    [{"address": URL, "socket_timeout": 5}],
    [{"address": URL, "socket_timeout": None}],
    [{"address": URL, "socket_timeout": "soon"}],
    [URL + "?socket_timeout=5"],
    [URL + "?socket_timeout=abc"],
    [{"address": URL, "socket_timeout": 10}, URL],  # one good host is not enough
])
def test_w002_redis_8_without_a_long_socket_timeout(redis_8, hosts):
    with override_settings(CHANNEL_LAYERS=redis_layer(*hosts)):
        [warning] = sisy_messages()
    assert warning.id == "sisy.W002"
    assert warning.msg == (
        "CHANNEL_LAYERS['default'] uses channels-redis with redis-py 8, whose default 5 s "
        "socket timeout equals channels-redis's 5 s blocking pop: idle workers will crash "
        "with a timeout (channels_redis #422)."
    )
    assert warning.hint == (
        "Give each host as a dict with a longer timeout: "
        "{'address': 'redis://127.0.0.1:6379', 'socket_timeout': 10}."
    )


def test_w002_default_hosts(redis_8):
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": REDIS}}):
        assert ids(sisy_messages()) == ["sisy.W002"]


def test_w002_once_per_layer(redis_8):
    layers = {**redis_layer(URL, URL), "pubsub": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [URL]},
    }}
    with override_settings(CHANNEL_LAYERS=layers):
        messages = sisy_messages()
    assert ids(messages) == ["sisy.W002", "sisy.W002"]
    assert "CHANNEL_LAYERS['pubsub']" in messages[1].msg


def test_installed_redis_py_version_is_read():
    from importlib.metadata import version

    assert sisy_checks._redis_major() == int(version("redis").split(".")[0])
