"""@sisy.task and @sisy.periodic: registration, names, options and refusals."""

import importlib
import sys
from datetime import timedelta

import pytest

import sisy
from sisy.registry import registry

# Plain module-level functions; each test decorates them inside an isolated registry.


def first(x):
    return x * 2


def second(x):
    return x * 3


def with_context(context, x):
    return (type(context).__name__, context.run, context.attempt, x)


def no_parameters():
    return None


class NotAFunction:
    pass


# -- forms of the decorators ----------------------------------------------------------------

def test_bare_task_registers_under_module_dot_qualname(isolated_registry):
    definition = sisy.task(first)
    assert isinstance(definition, sisy.TaskDefinition)
    assert definition.name == "tests.test_decorators.first"
    assert isolated_registry.get("tests.test_decorators.first") is definition
    assert definition.schedule is None
    assert repr(definition) == "<sisy task 'tests.test_decorators.first'>"


def test_task_with_options(isolated_registry):
    definition = sisy.task(name="math.double", retries=3, retry_backoff=2.5, allow_overlap=False,
                           channel="sisy.slow")(first)
    assert definition.name == "math.double"
    assert (definition.retries, definition.retry_backoff) == (3, 2.5)
    assert (definition.allow_overlap, definition.channel) == (False, "sisy.slow")
    assert isolated_registry.names() == ["math.double"]


def test_task_called_with_empty_parentheses(isolated_registry):
    assert sisy.task()(first).name == "tests.test_decorators.first"


def test_periodic_registers_a_normalised_schedule_and_defaults(isolated_registry):
    definition = sisy.periodic("  0 7  * * mon-fri")(first)
    assert definition.schedule == "0 7 * * mon-fri"
    assert definition.allow_overlap is False  # a standing task does not overlap by default
    assert definition.catch_up == "latest"
    assert isolated_registry.periodic() == [definition]
    assert repr(definition) == "<sisy periodic 'tests.test_decorators.first'>"


def test_periodic_options(isolated_registry):
    definition = sisy.periodic(
        "@hourly", name="reports.hourly", timezone="Europe/Berlin", catch_up="all",
        start_deadline=timedelta(minutes=5), enabled=False,
    )(first)
    assert (definition.schedule, definition.timezone) == ("@hourly", "Europe/Berlin")
    assert (definition.catch_up, definition.start_deadline) == ("all", timedelta(minutes=5))
    assert definition.enabled is False


def test_bare_periodic_is_refused(isolated_registry):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r'^@sisy.periodic needs a schedule: write @sisy.periodic\("\*/5 \* \* \* \*"\), '
        r"not a bare @sisy.periodic.$"
    )):
        sisy.periodic(first)
    assert len(isolated_registry) == 0


def test_task_given_a_name_positionally_is_refused(isolated_registry):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^@sisy.task takes the task name as a keyword: write @sisy.task\(name='billing.x'\).$"
    )):
        sisy.task("billing.x")


# -- names ----------------------------------------------------------------------------------

def test_duplicate_name_from_another_function_names_both(isolated_registry):
    sisy.task(name="shared")(first)
    with pytest.raises(sisy.DuplicateTaskName, match=(
        r"^Task name 'shared' is already registered by tests.test_decorators.first; "
        r"tests.test_decorators.second cannot use it too. Give one of them another name, "
        r'e.g. @sisy.task\(name="shared_2"\).$'
    )):
        sisy.periodic("* * * * *", name="shared")(second)
    assert isolated_registry.get("shared").func is first


def test_reimporting_a_module_is_not_a_duplicate(isolated_registry):
    module = importlib.import_module("tests.fixture_modules.reloadable")
    module = importlib.reload(module)  # registers into the isolated registry
    before = isolated_registry.get("reloadable.named")
    module = importlib.reload(module)
    after = isolated_registry.get("reloadable.named")
    assert after is not before and after is module.named
    assert isolated_registry.names() == [
        "reloadable.named", "tests.fixture_modules.reloadable.hourly",
    ]


def test_a_module_that_steals_a_name_fails_at_import(isolated_registry):
    importlib.reload(importlib.import_module("tests.fixture_modules.reloadable"))
    sys.modules.pop("tests.fixture_modules.duplicate", None)
    with pytest.raises(sisy.DuplicateTaskName, match=(
        r"^Task name 'reloadable.named' is already registered by "
        r"tests.fixture_modules.reloadable.named; tests.fixture_modules.duplicate.impostor "
        r"cannot use it too."
    )):
        importlib.import_module("tests.fixture_modules.duplicate")


@pytest.mark.parametrize(("name", "shown"), [("", "''"), (5, "5"), ("x" * 201, "'xxx")])
def test_bad_names_are_refused(isolated_registry, name, shown):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^The name of task tests.test_decorators.first must be a non-empty string of at most "
        rf"200 characters, not {shown}"
    )):
        sisy.task(name=name)(first)


def test_unknown_name_lookup(isolated_registry):
    with pytest.raises(sisy.UnknownTask, match=r"^No task is registered as 'nope'. Registered"):
        isolated_registry.get("nope")


# -- what can be decorated ------------------------------------------------------------------

def test_lambda_is_refused(isolated_registry):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^Sisy cannot register a lambda \(in tests.test_decorators\): a worker finds a task "
        r"by name in its module. Define it with def at module level.$"
    )):
        sisy.task(lambda: None)


def test_nested_function_is_refused(isolated_registry):
    def inner():
        return None

    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^Sisy cannot register the nested function tests.test_decorators."
        r"test_nested_function_is_refused.<locals>.inner: a worker imports tasks.py"
    )):
        sisy.periodic("* * * * *")(inner)


def test_class_is_refused(isolated_registry):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^Sisy cannot register the class NotAFunction: decorate a function."
    )):
        sisy.task(NotAFunction)


@pytest.mark.parametrize("thing", [len, print, 42])
def test_non_functions_are_refused(isolated_registry, thing):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^Sisy can only register functions defined with def, not "
    )):
        sisy.task(thing)


def test_a_task_cannot_be_decorated_twice(isolated_registry):
    definition = sisy.task(first)
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^tests.test_decorators.first is already a Sisy task; apply one Sisy decorator"
    )):
        sisy.periodic("* * * * *", name="again")(definition)


# -- options --------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"retries": -1}, r"retries of task 't' must be a whole number >= 0, not -1."),
    ({"retries": 1.5}, r"retries of task 't' must be a whole number >= 0, not 1.5."),
    ({"retries": True}, r"retries of task 't' must be a whole number >= 0, not True."),
    ({"retry_backoff": -1}, r"retry_backoff of task 't' must be a number of seconds >= 0"),
    ({"timezone": "Mars/Olympus"},
     r"timezone of task 't': Timezone 'Mars/Olympus' is not a known IANA timezone name"),
    ({"timezone": 1}, r"timezone of task 't' must be an IANA name such as 'Europe/Berlin'."),
    ({"catch_up": "sometimes"},
     r"catch_up of task 't' must be one of latest, all, skip, not 'sometimes'."),
    ({"enabled": "yes"}, r"enabled of task 't' must be True or False, not 'yes'."),
    ({"allow_overlap": 1}, r"allow_overlap of task 't' must be True or False, not 1."),
    ({"start_deadline": 30}, r"start_deadline of task 't' must be a timedelta or None, not 30."),
    ({"channel": 5}, r"channel of task 't' must be a string, not 5."),
])
def test_bad_option_values_are_refused(isolated_registry, options, message):
    with pytest.raises(sisy.InvalidTaskDefinition, match="^" + message.replace("(", r"\(")):
        sisy.periodic("* * * * *", name="t", **options)(first)
    assert len(isolated_registry) == 0


def test_takes_context_needs_a_parameter(isolated_registry):
    with pytest.raises(sisy.InvalidTaskDefinition, match=(
        r"^Task 'ctx' has takes_context=True, so its function needs a first parameter for the "
        r"context: def my_task\(context, ...\).$"
    )):
        sisy.task(name="ctx", takes_context=True)(no_parameters)


@pytest.mark.parametrize(("schedule", "message"), [
    ("61 * * * *", r"Schedule '61 \* \* \* \*' of task 'tests.test_decorators.first' is not "
                   r"valid cron: minute field '61' is out of range 0-59.$"),
    ("* * *", r"Schedule '\* \* \*' of task 'tests.test_decorators.first' is not valid cron: "
              r"it has 3 fields"),
    (None, r"Schedule None of task 'tests.test_decorators.first' must be a cron string"),
])
def test_invalid_cron_names_the_task_the_schedule_and_the_reason(
    isolated_registry, schedule, message
):
    with pytest.raises(sisy.InvalidSchedule, match="^" + message):
        sisy.periodic(schedule)(first)
    assert len(isolated_registry) == 0


def test_invalid_cron_with_a_name_is_refused_before_decorating(isolated_registry):
    with pytest.raises(sisy.InvalidSchedule, match=(
        r"^Schedule '61 \* \* \* \*' of task 'shop.bad' is not valid cron: minute field '61' is "
        r"out of range 0-59.$"
    )):
        sisy.periodic("61 * * * *", name="shop.bad")


# -- calling inline -------------------------------------------------------------------------

def test_decorated_functions_stay_callable_inline(isolated_registry):
    double = sisy.task(first)
    tripled = sisy.periodic("* * * * *")(second)
    assert double(4) == 8
    assert tripled(x=2) == 6
    assert double.__name__ == "first" and double.__wrapped__ is first


def test_takes_context_gets_an_inline_context(isolated_registry):
    definition = sisy.task(takes_context=True)(with_context)
    assert definition(7) == ("TaskContext", None, 1, 7)


def test_fixture_task_with_context_runs_inline():
    from tests.testapp.tasks import add, every_second

    assert every_second() is None  # no Run when called inline
    assert add(2, b=3) == 5


# -- autodiscovery --------------------------------------------------------------------------

def test_autodiscovery_imported_the_test_apps_tasks_module():
    assert {
        "tests.testapp.tasks.every_five_minutes", "reports.daily", "reports.weekly",
        "fast.every_second", "tests.testapp.tasks.add", "testapp.fail",
    } <= set(registry.names())
    assert registry.get("reports.weekly").enabled is False


def test_isolated_registry_restores_the_real_one(isolated_registry):
    assert len(isolated_registry) == 0
    assert isolated_registry is registry  # the same object, emptied for the test
