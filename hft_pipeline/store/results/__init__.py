"""The results of the Dagster assets, one SQLAlchemy implementation for both databases."""

from __future__ import annotations

from hft_pipeline.store.results.engine import postgres_engine, sqlite_engine
from hft_pipeline.store.results.repository import ResultsRepository
from hft_pipeline.store.results.tables import METADATA

__all__ = ["METADATA", "ResultsRepository", "postgres_engine", "sqlite_engine"]
