"""Pure domain code: ticks, timeframes, candles, indicators, strategies, backtests. No I/O."""
