import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hft_pipeline.ingest.sequencer import Sequencer, SilenceDetector
from hft_pipeline.market.ticks import TickBatch


def make(symbols, seqs):
    n = len(seqs)
    return TickBatch.from_columns(symbols, np.arange(n) + 1, seqs, np.ones(n), np.ones(n))


def test_duplicates_within_and_across_batches_are_dropped():
    seq = Sequencer()
    out, stats = seq.process(make(["A", "A", "B", "A"], [0, 1, 0, 1]))
    assert stats.duplicates == 1
    assert list(zip(out.symbol_names(), out.seq, strict=True)) == [("A", 0), ("A", 1), ("B", 0)]
    out, stats = seq.process(make(["A", "B", "B"], [1, 0, 1]))
    assert (
        stats.duplicates == 2 and out.seq.tolist() == [1] and out.symbol_names().tolist() == ["B"]
    )
    assert seq.duplicates.tolist() == [2, 1]


def test_gap_is_counted_and_a_late_fill_is_accepted_once():
    seq = Sequencer()
    seq.process(make(["A"] * 3, [0, 1, 2]))
    out, stats = seq.process(make(["A", "A"], [6, 7]))
    assert (stats.gaps, stats.missing) == (1, 3)
    assert seq.holes("A") == [(3, 5)]
    out, stats = seq.process(make(["A", "A"], [4, 4]))
    assert out.seq.tolist() == [4] and stats.filled == 1 and stats.duplicates == 1
    assert seq.holes("A") == [(3, 3), (5, 5)]
    out, stats = seq.process(make(["A"], [4]))
    assert len(out) == 0 and stats.duplicates == 1
    assert seq.last_seq("A") == 7


def test_seed_from_store_makes_old_seqs_duplicates():
    seq = Sequencer()
    seq.seed({"A": 10})
    out, stats = seq.process(make(["A", "A"], [10, 11]))
    assert out.seq.tolist() == [11] and stats.duplicates == 1 and stats.gaps == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 40)), min_size=1, max_size=200),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
)
def test_every_symbol_seq_is_accepted_exactly_once_however_batched(ticks, cuts):
    """Whatever the arrival order and batching, each (symbol, seq) is accepted once."""
    sequencer = Sequencer()
    accepted = []
    first_seen: dict[str, int] = {}  # min seq of a symbol's first batch: nothing below is a gap
    i = 0
    for size in cuts * 100:
        if i >= len(ticks):
            break
        chunk = ticks[i : i + size]
        i += size
        for s in {s for s, _ in chunk} - set(first_seen):
            first_seen[s] = min(q for t, q in chunk if t == s)
        out, _ = sequencer.process(make([s for s, _ in chunk], [q for _, q in chunk]))
        accepted += list(zip(out.symbol_names().tolist(), out.seq.tolist(), strict=True))
    assert len(accepted) == len(set(accepted))
    assert set(accepted) == {(s, q) for s, q in ticks if q >= first_seen[s]}


def test_silence_detector_flags_each_silence_once():
    det = SilenceDetector(multiple=5, min_silence_ns=100_000_000)
    second = 1_000_000_000
    t = 10 * second
    for _ in range(3):  # A and B tick 10 times a second for 3 s
        for _ in range(10):
            t += second // 10
            det.observe(make(["A", "B"], [0, 0]), t)
        det.check(t)
    assert det.interval.tolist() == [second / 10, second / 10]
    assert det.check(t + 400_000_000) == []  # 0.4 s < 5 x 0.1 s
    det.observe(make(["B"], [1]), t + 400_000_000)
    assert det.check(t + 600_000_000) == ["A"]  # 0.6 s > 0.5 s
    assert det.check(t + 700_000_000) == []  # counted once per silence
    assert det.gaps.tolist() == [1, 0]
    det.observe(make(["A"], [1]), t + 800_000_000)
    assert not det.silent[0]


def test_sporadic_symbol_is_judged_by_its_own_interval():
    det = SilenceDetector(multiple=3, min_silence_ns=1)
    second = 1_000_000_000
    for k in range(1, 6):  # one tick every 10 s, checks every second
        det.observe(make(["SLOW"], [k]), k * 10 * second)
        for c in range(1, 10):
            assert det.check(k * 10 * second + c * second) == []
    assert det.interval.tolist() == [10 * second]
    assert det.check(50 * second + 31 * second) == ["SLOW"]


def test_silence_never_flags_a_symbol_that_was_never_heard():
    det = SilenceDetector()
    assert det.check(10**18) == []
