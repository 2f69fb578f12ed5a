"""Tick sources for the ingest service: the deterministic simulator and file replay."""

from hft_pipeline.ingest.feeds.base import Feed, ResumePoint
from hft_pipeline.ingest.feeds.simulator import (
    DEFAULT_SYMBOLS,
    Instrument,
    SimulatorFeed,
    generate,
    instrument_for,
    interval_ns,
)

__all__ = [
    "DEFAULT_SYMBOLS",
    "Feed",
    "Instrument",
    "ResumePoint",
    "SimulatorFeed",
    "generate",
    "instrument_for",
    "interval_ns",
]
