"""Database connection upkeep for Sisy's long-lived processes."""

from django.db import connections

__all__ = ["tidy_connections", "execute_write"]


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


def execute_write(conn, sql: str, params, *, durable: bool):
    """Execute one write statement and return the cursor's first row and row count.

    Outside a transaction on PostgreSQL, ``durable=False`` commits it with
    ``synchronous_commit = off``: the statement and ``SET LOCAL`` travel as one
    simple query, which PostgreSQL runs as one implicit transaction, so the
    setting covers this statement only. Elsewhere it is a plain ``execute``.
    """
    async_commit = not durable and conn.vendor == "postgresql" and not conn.in_atomic_block
    with conn.cursor() as cursor:
        if async_commit:
            cursor.execute("SET LOCAL synchronous_commit TO OFF; " + sql, params)
            cursor.nextset()
        else:
            cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
        return row, cursor.rowcount
