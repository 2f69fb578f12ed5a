"""numpy columns as PostgreSQL binary array parameters (for `unnest(%b, ...)` upserts).

psycopg dumps a Python list element by element (~0.6 us each); the per-batch statement of
`write_ticks` sends ~4,000 numbers, so that was ~2.5 ms of persister CPU per batch. Binary
arrays are a fixed layout per element type, which numpy writes in one call.
"""

from __future__ import annotations

import struct

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.postgres import types as pg_types
from psycopg.pq import Format


class PgArray:
    """A 1-d numpy column sent as a PostgreSQL array of `TYPE` (binary format, `%b`)."""

    __slots__ = ("values",)
    TYPE = ""  # PostgreSQL element type
    DTYPE = ""  # its big-endian numpy dtype

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


class Int4Array(PgArray):
    TYPE, DTYPE = "int4", ">i4"


class Int8Array(PgArray):
    TYPE, DTYPE = "int8", ">i8"


class Float8Array(PgArray):
    TYPE, DTYPE = "float8", ">f8"


def _dumper(kind: type[PgArray]) -> type[Dumper]:
    info = pg_types.get(kind.TYPE)
    assert info is not None
    element_oid = info.oid
    # Array wire format: ndim, has-null flag, element oid, then (length, lower bound) per
    # dimension, then every element as int32 length + big-endian value.
    value = np.dtype(kind.DTYPE)
    row = np.dtype([("length", ">i4"), ("value", value)])

    class ArrayDumper(Dumper):
        format = Format.BINARY
        oid = info.array_oid

        def dump(self, obj: PgArray) -> bytes:
            n = len(obj.values)
            if n == 0:
                return struct.pack("!iii", 0, 0, element_oid)
            rows = np.empty(n, row)
            rows["length"] = value.itemsize
            rows["value"] = obj.values
            return struct.pack("!iiiii", 1, 0, element_oid, n, 1) + rows.tobytes()

    ArrayDumper.__name__ = f"{kind.__name__}Dumper"
    return ArrayDumper


for _kind in (Int4Array, Int8Array, Float8Array):
    # Global adapters: every connection opened afterwards knows them; nothing else dumps these.
    psycopg.adapters.register_dumper(_kind, _dumper(_kind))
