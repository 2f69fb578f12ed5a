"""Tests of hft_pipeline.observability."""
