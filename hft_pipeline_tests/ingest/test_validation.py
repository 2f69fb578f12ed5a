import numpy as np

from hft_pipeline.ingest.validation import REJECT_REASONS, TickValidator
from hft_pipeline.market.ticks import TickBatch

NOW = 1_790_000_000_000_000_000


def batch(symbols, prices, volumes, ts=None):
    n = len(prices)
    ts = ts if ts is not None else [NOW - 1000 * (n - i) for i in range(n)]
    return TickBatch.from_columns(symbols, ts, list(range(n)), prices, volumes)


def test_malformed_ticks_are_rejected_and_counted_by_reason():
    v = TickValidator(max_future_skew_s=5, clock=lambda: NOW)
    b = batch(
        ["OK", "bad|sym", "OK", "OK", "OK", "OK", "OK", "OK", "OK"],
        [10.0, 10.0, np.nan, np.inf, 0.0, -1.0, 10.0, 10.0, 10.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -5.0, np.nan, 2.0],
        ts=[NOW] * 8 + [NOW + 6_000_000_000],
    )
    accepted, counts = v.validate(b)
    assert accepted.symbol_names().tolist() == ["OK"]
    assert accepted.price.tolist() == [10.0]
    assert counts == {
        "bad_symbol": 1,
        "non_finite_price": 2,
        "non_positive_price": 2,
        "negative_volume": 1,
        "non_finite_volume": 1,
        "future_timestamp": 1,
    }
    assert set(v.rejected) == set(REJECT_REASONS)
    assert sum(v.rejected.values()) == 8


def test_first_failing_reason_wins_and_totals_accumulate():
    v = TickValidator(clock=lambda: NOW)
    b = batch(["a/b", "ok"], [np.nan, 1.0], [-1.0, 0.0])  # bad symbol AND bad price AND bad volume
    accepted, counts = v.validate(b)
    assert counts == {"bad_symbol": 1}
    assert len(accepted) == 1 and accepted.volume.tolist() == [0.0]
    v.validate(b)
    assert v.rejected["bad_symbol"] == 2


def test_clean_batch_passes_through_unchanged():
    v = TickValidator(clock=lambda: NOW)
    b = batch(["R_100", "frxEURUSD", "PETR4"], [1.0, 1.1, 38.5], [0.0, 1.0, 100.0])
    accepted, counts = v.validate(b)
    assert counts == {} and accepted is b
