"""Bulk inserts and reads of numeric columns, the one place the results layer asks its driver.

Row dicts through SQLAlchemy cost 31 us a row on PostgreSQL and 8 on SQLite, and a partition's
indicators are hundreds of thousands of rows (docs/results.md#speed). PostgreSQL gets one binary
COPY built with numpy, SQLite one executemany of tuples, both in the caller's transaction; reads
come straight from the driver's cursor into numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sqlalchemy as sa

from hft_pipeline.store.copy import encode_fixed_rows


def _copy_format(column: sa.Column) -> str:
    kind = column.type
    if isinstance(kind, sa.Double | sa.Float):
        return ">f8"
    if isinstance(kind, sa.BigInteger):
        return ">i8"
    if isinstance(kind, sa.Integer):
        return ">i4"
    raise TypeError(f"{column.table.name}.{column.name}: bulk insert has no binary format for it")


def insert_columns(
    conn: sa.Connection, table: sa.Table, text: Mapping[str, str], numbers: Mapping[str, np.ndarray]
) -> None:
    """Insert rows into `table`: `text` columns hold one value for every row, `numbers` one
    numpy array each (NaN kept as NaN, NULL on SQLite). Every column of `table` is given."""
    names = [c.name for c in table.columns]
    if set(names) != {*text, *numbers}:
        raise ValueError(f"{table.name}: give exactly the columns {names}")
    n = len(next(iter(numbers.values())))
    if n == 0:
        return
    if conn.dialect.name == "postgresql":
        fields: list[tuple[str, np.ndarray | bytes]] = [
            ("text", text[c.name].encode())
            if c.name in text
            else (_copy_format(c), np.ascontiguousarray(numbers[c.name]))
            for c in table.columns
        ]
        quoted = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in names)
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            statement = f"copy {table.name} ({quoted}) from stdin (format binary)"
            with cur.copy(statement) as copy:
                copy.write(encode_fixed_rows(fields, n))
        return
    columns = [[text[c]] * n if c in text else numbers[c].tolist() for c in names]
    marks = ", ".join("?" * len(names))
    quoted = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in names)
    conn.exec_driver_sql(
        f"insert into {table.name} ({quoted}) values ({marks})", list(zip(*columns, strict=True))
    )


def fetch_array(conn: sa.Connection, query: sa.Select, dtype: np.dtype) -> np.ndarray:
    """The rows of a numeric `query` as a structured array (NULL -> NaN), straight from the
    driver's cursor: no Row object per row."""
    return np.fromiter(conn.execute(query).cursor, dtype)


def dense_lookup(labels: Mapping[int, str], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label of each id as an object array, rank of each id's label in sorted label order)."""
    if not labels or not len(ids):
        return np.empty(0, object), np.empty(0, np.int64)
    size = max(labels) + 1
    names, rank = np.empty(size, object), np.zeros(size, np.int64)
    for position, ident in enumerate(sorted(labels, key=labels.__getitem__)):
        names[ident], rank[ident] = labels[ident], position
    return names[ids], rank[ids]
