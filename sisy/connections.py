"""Database connection upkeep for Sisy's long-lived processes."""

import contextlib

from django.db import connections

try:
    import psycopg
    from psycopg.pq import Format
except ImportError:  # psycopg2, or no PostgreSQL at all
    psycopg = None
    _Replanned = None
else:
    _TIMESTAMPTZ = psycopg.adapters.types["timestamptz"].oid

    class _Replanned(psycopg.Cursor):
        """A server-side cursor whose statements are planned at each execution.

        A queue table goes from empty to thousands of rows and back: a plan
        that PostgreSQL chose and kept (a prepared statement's generic plan)
        while it was small reads the whole table once it has grown.
        """

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=False, binary=binary)

__all__ = ["tidy_connections", "execute_write", "fast_cursor", "async_commit_possible",
           "ASYNC_COMMIT"]

#: A ``FROM`` item that makes the statement it is in commit with ``synchronous_commit
#: = off`` (``execute_write``'s ``async_sql``): the setting lasts for its transaction.
ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS sisy_async"


def tidy_connections() -> None:
    """``close_old_connections()`` for workers and schedulers.

    Django closes a connection after each request when ``CONN_MAX_AGE`` is 0.
    A worker runs thousands of short runs, and reconnecting for each costs
    more than the run (5–10 ms against PostgreSQL), so with ``CONN_MAX_AGE =
    0`` a Sisy process keeps a connection while it works and closes it only
    when it is broken. A positive ``CONN_MAX_AGE`` is honoured as usual.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        if conn.settings_dict.get("CONN_MAX_AGE") != 0:
            conn.close_if_unusable_or_obsolete()
        elif conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]:
            conn.close()
        elif conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


def _server_side_binding(conn) -> bool:
    return conn.settings_dict.get("OPTIONS", {}).get("server_side_binding") is True


def async_commit_possible(conn) -> bool:
    """Whether a statement on ``conn`` can commit on its own with ``synchronous_commit = off``."""
    return conn.vendor == "postgresql" and not conn.in_atomic_block


def _timestamp_loader(conn, raw):
    """psycopg's own ``timestamptz`` loader where it reads what Django's does on ``raw``,
    else ``None``.

    Django registers a subclass of psycopg's pure-Python loader that puts the
    connection's time zone on each value: 5-6 µs per value, a fifth of a
    worker's CPU per run while it drains a backlog (five per ``Run``).
    psycopg's own loader (in C, with psycopg-binary or psycopg-c) reads each
    value in the session's time zone, which Django sets to the connection's:
    where both are the very same ``tzinfo`` (``USE_TZ = True``), the values are
    the same. Decided once per database connection.
    """
    cached = conn.__dict__.get("_sisy_timestamp_loader")
    if cached is not None and cached[0] is raw:
        return cached[1]
    django_loader = raw.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)
    own = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)
    zone = getattr(django_loader, "timezone", None)
    usable = (zone is not None and not issubclass(django_loader, own)
              and zone is conn.timezone and zone is raw.info.timezone)
    conn.__dict__["_sisy_timestamp_loader"] = (raw, own if usable else None)
    return own if usable else None


@contextlib.contextmanager
def fast_cursor(conn, *, single_statement: bool = True, preparable: bool = False,
                timestamps: bool = False):
    """A cursor for Sisy's hot statements (``.delay()``, claims, outcomes).

    On PostgreSQL, unless queries are being logged (``DEBUG``) or an execute
    wrapper is installed, this is the driver's own cursor under Django's connection
    checks and error translation, without Django's cursor wrapper. For one
    statement on psycopg 3 it binds values on the server: they travel apart
    from the SQL instead of being quoted into it (half the CPU of a
    ``.delay()`` besides the commit). Its statements are planned at each
    execution: their best plan changes as the queue table grows and shrinks.
    Only ``preparable=True`` statements (``.delay()``'s ``INSERT``, which has
    one plan) are prepared, as the connection's ``prepare_threshold`` says
    (Django's default: never, so connection poolers keep working). With
    ``timestamps=True`` (rows with ``timestamptz`` columns to read) it reads
    them with psycopg's own loader where that gives the same values as
    Django's (:func:`_timestamp_loader`).
    """
    if conn.vendor != "postgresql" or conn.queries_logged or conn.execute_wrappers:
        with conn.cursor() as cursor:
            yield cursor
        return
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    conn.validate_thread_sharing()
    conn.validate_no_broken_transaction()
    with conn.wrap_database_errors:
        raw = conn.connection
        psycopg3 = psycopg is not None and isinstance(raw, psycopg.Connection)
        if single_statement and psycopg3:
            cursor = psycopg.Cursor(raw) if preparable else _Replanned(raw)
        else:
            cursor = raw.cursor()
        if timestamps and psycopg3:
            loader = _timestamp_loader(conn, raw)
            if loader is not None:
                cursor.adapters.register_loader(_TIMESTAMPTZ, loader)
        try:
            yield cursor
        finally:
            cursor.close()


def execute_write(conn, sql: str, params, *, durable: bool, async_sql: str | None = None,
                  preparable: bool = False):
    """Execute one write statement and return the cursor's first row and row count.

    Outside a transaction on PostgreSQL, ``durable=False`` commits it with
    ``synchronous_commit = off``. ``async_sql``, if given, is the statement
    written to do that itself (:data:`ASYNC_COMMIT` among its ``FROM``
    items); otherwise ``SET LOCAL`` and the statement travel as one
    simple query, which PostgreSQL runs as one implicit transaction, so the
    setting covers this statement only (not with ``server_side_binding``,
    which allows one statement per query). Elsewhere it is a plain ``execute``.
    """
    two_statements = False
    if not durable and async_commit_possible(conn):
        if async_sql is not None:
            sql = async_sql
        elif not _server_side_binding(conn):
            sql, two_statements = "SET LOCAL synchronous_commit TO OFF; " + sql, True
    with fast_cursor(conn, single_statement=not two_statements,
                     preparable=preparable) as cursor:
        cursor.execute(sql, params)
        if two_statements:
            cursor.nextset()
        row = cursor.fetchone() if cursor.description else None
        return row, cursor.rowcount
