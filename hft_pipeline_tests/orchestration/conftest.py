"""Orchestration fixtures: a fixed partition start; the analytics tests' ticks and stores."""

from __future__ import annotations

import os

# Must precede any import of hft_pipeline.orchestration: the partitions' start is fixed when
# the definitions load, and test data lives at fixed times well after this start.
os.environ.setdefault("HFT_PARTITIONS_START", "2026-01-01T00:00Z")

from hft_pipeline_tests.analytics.conftest import (  # noqa: E402, F401 - fixtures and helpers
    HOUR_NS,
    SYMBOLS,
    T0,
    StoreCase,
    simulator_ticks,
    store_case,
    write_ticks,
)
