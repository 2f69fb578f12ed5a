"""hft_pipeline: high-frequency market data on Dagster."""

__version__ = "0.1.0"
