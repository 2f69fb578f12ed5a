"""Tick sources for the ingest service: the deterministic simulator and file replay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hft_pipeline.ingest.feeds.base import Feed, ResumePoint
from hft_pipeline.ingest.feeds.replay import ReplayFeed
from hft_pipeline.ingest.feeds.simulator import (
    DEFAULT_SYMBOLS,
    Instrument,
    SimulatorFeed,
    generate,
    instrument_for,
    interval_ns,
)

if TYPE_CHECKING:
    from hft_pipeline.settings import Settings

FEED_KINDS = ("simulator", "replay")


def make_feed(settings: Settings, symbols: Sequence[str] | None = None) -> Feed:
    """The feed `settings.feed` names, with no symbols subscribed (the service subscribes them).

    For the simulator, `settings.rate` is the total rate over `symbols` (the subscriptions the
    service restores), else over `settings.symbols`, else over the default symbols.
    """
    if settings.feed == "simulator":
        return SimulatorFeed(
            (),
            include_defaults=False,
            n_symbols=len(symbols or settings.symbols or DEFAULT_SYMBOLS),
            seed=settings.seed,
            rate=settings.rate,
            history_s=settings.sim_history_s,
        )
    if settings.feed == "replay":
        if not settings.replay_file:
            raise ValueError("HFT_FEED=replay needs HFT_REPLAY_FILE (a .csv, .csv.gz or .parquet)")
        return ReplayFeed(settings.replay_file, settings.replay_speed)
    raise ValueError(f"HFT_FEED={settings.feed!r}: use one of {', '.join(FEED_KINDS)}")


__all__ = [
    "DEFAULT_SYMBOLS",
    "FEED_KINDS",
    "Feed",
    "Instrument",
    "ReplayFeed",
    "ResumePoint",
    "SimulatorFeed",
    "generate",
    "instrument_for",
    "interval_ns",
    "make_feed",
]
