"""Procrastinate for the side-by-side benchmark: its own PostgreSQL database.

Workers run as ``procrastinate --app extra.bench.ref_procrastinate.app worker
--concurrency 1`` (LISTEN/NOTIFY on); the producer defers from sync code.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from extra.bench import marks

DATABASE = os.environ.get("SISY_BENCH_PROCRASTINATE_DB", "sisy_bench_procrastinate")
CONNINFO = f"host=127.0.0.1 port=5432 user=postgres dbname={DATABASE}"

app = App(connector=PsycopgConnector(conninfo=CONNINFO))


@app.task(name="bench.noop")
def noop(i: int) -> None:
    marks.record(i)


def recreate_database() -> None:
    """Drop and create the database, then apply Procrastinate's schema."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(app.schema_manager.get_schema())


def drop_database() -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
