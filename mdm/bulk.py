"""Bulk INSERT of many rows in the session's transaction, with one Python step per distinct value.

``insert_rows(table, rows)`` writes what ``session.execute(insert(table), rows)`` writes: the same
columns, the same stored values (each value goes through its column type's own bind processor). On
SQLite it skips SQLAlchemy's per-row parameter handling: each distinct value object of a column is
processed once (a declaration set shared by thousands of devices is JSON-encoded once, one ``now`` is
formatted once), the rows become tuples and go to the driver's ``executemany`` in one call. On other
databases (PostgreSQL) it is ``session.execute(insert(table), rows)`` itself, whose batched INSERTs the
driver needs there.

Rules for callers: every row names the same columns; a column with a Python-side default that the rows
do not name makes it fall back to ``session.execute`` (the default is SQLAlchemy's to fill); values are
not mutated while the call runs. Nothing here flushes ORM objects or commits.

``collector_paused()`` wraps bulk work over the whole fleet (the DDM spine's recomputation): its
chunk-sized structures outlive a few young collections, and CPython then runs a full collection over the
whole heap every few thousand devices (1.2 s of a 100,000-device first run, measured). Automatic cyclic
collection is paused while it runs; reference counting still frees everything that is not a cycle, and
the collector resumes as it was found (a nested or concurrent pause never leaves it off).
"""
from __future__ import annotations

import contextlib
import gc
import operator

from sqlalchemy import LargeBinary, Table, bindparam, insert

from .extensions import db

_statements: dict[tuple, tuple[str, tuple, tuple]] = {}


def insert_rows(table: Table, rows: list[dict]) -> None:
    """INSERT ``rows`` (dicts naming the same columns) into ``table``; see the module docstring."""
    if not rows:
        return
    session = db.session
    connection = session.connection()
    dialect = connection.dialect
    columns = tuple(rows[0])
    if dialect.name != "sqlite" or _needs_defaults(table, columns):
        session.execute(insert(table), rows)
        return
    sql, order, processors = _statement(table, columns, dialect)
    values = [list(map(operator.itemgetter(name), rows)) for name in order]
    for i, process in enumerate(processors):
        if process is not None:
            values[i] = _processed(values[i], process)
    connection.exec_driver_sql(sql, list(zip(*values)))


def _needs_defaults(table: Table, columns: tuple) -> bool:
    named = set(columns)
    return any(c.default is not None and c.key not in named for c in table.columns)


def _statement(table: Table, columns: tuple, dialect) -> tuple[str, tuple, tuple]:
    """The INSERT's SQL with positional parameters, their column names in that order, and each one's bind
    processor (compiled once per table, column list and dialect)."""
    key = (table, columns, dialect.name)
    cached = _statements.get(key)
    if cached is None:
        compiled = insert(table).values({name: bindparam(name) for name in columns}).compile(dialect=dialect)
        order = tuple(compiled.positiontup or ())
        if sorted(order) != sorted(columns):
            raise RuntimeError(f"unexpected parameters for {table.name}: {order}")
        processors = tuple(_processor(table.c[name].type, dialect) for name in order)
        cached = _statements[key] = (str(compiled), order, processors)
    return cached


def _processor(type_, dialect):
    impl = type_.dialect_impl(dialect)
    if isinstance(impl, LargeBinary):
        return None       # sqlite3 binds bytes as a BLOB itself; SQLAlchemy's wrapper would only copy them
    return impl.bind_processor(dialect)


def _processed(column_values: list, process) -> list:
    """``process`` applied once per distinct object (by identity: every value stays referenced by the rows
    for the whole call, so an id cannot be reused meanwhile)."""
    ids = list(map(id, column_values))
    distinct = dict(zip(ids, column_values))
    done = {key: process(value) for key, value in distinct.items()}
    return list(map(done.__getitem__, ids))


@contextlib.contextmanager
def collector_paused():
    """Pause Python's automatic cyclic garbage collection for the block (module docstring)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
