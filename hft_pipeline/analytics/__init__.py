"""The application layer: the jobs the Dagster assets run, on `market` and `store`, no Dagster.

One module per job (candles, indicators, backtests, comparison, checks); docs/analytics.md says
what each function promises. Submodules are imported on use: backtests and comparison load
vectorbt, which definition loading must not pay for.
"""
