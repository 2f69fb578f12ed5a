"""The deterministic simulator: purity, chunking, resume, realism, pacing, subscriptions, speed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hft_pipeline.ingest.feeds import (
    DEFAULT_SYMBOLS,
    Feed,
    ResumePoint,
    SimulatorFeed,
    generate,
    instrument_for,
    interval_ns,
    make_feed,
)
from hft_pipeline.ingest.feeds import simulator as sim
from hft_pipeline.market.ticks import InvalidSymbolError, TickBatch, concat_batches
from hft_pipeline.settings import Settings

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
COLUMNS = ("ts", "seq", "price", "volume", "bid", "ask")


def assert_same_ticks(a: TickBatch, b: TickBatch) -> None:
    assert len(a) == len(b)
    assert list(a.symbol_names()) == list(b.symbol_names())
    for col in COLUMNS:
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)


def per_symbol(batch: TickBatch, symbol: str) -> TickBatch:
    return batch.take(batch.symbol_names() == symbol)


def run_fake_clock(feed: SimulatorFeed, start: int, stop: int, step: int) -> TickBatch:
    out = []
    now = start
    while now <= stop:
        batch, _ = feed.poll(now)
        assert (batch.ts <= now).all(), "a tick was emitted before its time"
        out.append(batch)
        now += step
    return concat_batches(out)


# ---- purity and chunking -------------------------------------------------------------------


def test_same_seed_symbol_and_k_give_the_same_tick() -> None:
    a = generate(7, "PETR4", 100, 300, 1000.0, 5, T0)
    b = generate(7, "PETR4", 100, 300, 1000.0, 5, T0)
    assert_same_ticks(a, b)
    np.testing.assert_array_equal(a.seq, np.arange(100, 300))
    other_seed = generate(8, "PETR4", 100, 300, 1000.0, 5, T0)
    other_symbol = generate(7, "VALE3", 100, 300, 1000.0, 5, T0)
    assert not np.array_equal(a.volume, other_seed.volume)
    assert not np.array_equal(a.ts, other_seed.ts)
    assert not np.array_equal(a.ts - T0, other_symbol.ts - T0)


def test_tick_zero_starts_at_the_instrument_level() -> None:
    for symbol, level in [("PETR4", 38.0), ("VALE3", 62.0), ("ITUB4", 33.0), ("BBDC4", 14.0),
                          ("ABEV3", 13.0), ("frxEURUSD", 1.08)]:  # fmt: skip
        assert generate(1, symbol, 0, 1, 1.0, 1, T0).price[0] == level


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=3 * sim.BLOCK + 40), max_size=6),
    start=st.integers(min_value=0, max_value=2 * sim.BLOCK),
)
def test_any_chunking_of_k_gives_identical_ticks(cuts: list[int], start: int) -> None:
    end = start + 3 * sim.BLOCK + 41
    whole = generate(3, "ITUB4", start, end, 500.0, 5, T0)
    bounds = sorted({start, end, *(start + c for c in cuts)})
    parts = [
        generate(3, "ITUB4", lo, hi, 500.0, 5, T0)
        for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]
    assert_same_ticks(concat_batches(parts), whole)


def test_resuming_far_into_a_stream_does_not_depend_on_how_the_coarse_walk_is_chunked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = 300 * sim.BLOCK + 17
    reference = generate(5, "VALE3", k - 3, k + 3, 1000.0, 5, T0)
    monkeypatch.setattr(sim, "_COARSE_CHUNK", 7)
    assert_same_ticks(generate(5, "VALE3", k - 3, k + 3, 1000.0, 5, T0), reference)


def test_resume_at_k_equals_continuing_across_a_block_boundary() -> None:
    k = 5 * sim.BLOCK - 2
    continuing = generate(11, "ABEV3", k - 1000, k + 1000, 1000.0, 5, T0)
    resumed = generate(11, "ABEV3", k, k + 1000, 1000.0, 5, T0)
    assert_same_ticks(resumed, continuing.take(slice(1000, 2000)))


def test_the_walk_has_unit_variance_steps() -> None:
    # Log-price increments of the bridge construction must look like the plain random walk
    # it replaces: mean 0, variance sigma^2 per tick, also across block boundaries.
    inst = instrument_for("R_100")
    k = np.arange(0, 40 * sim.BLOCK)
    blocks = np.arange(40, dtype=np.int64)
    key = sim.stream_key(9, "R_100", sim._STREAM_SHOCK)
    coarse = sim._coarse_step(sim.stream_key(9, "R_100", sim._STREAM_COARSE), blocks)
    ends = np.cumsum(coarse)
    starts = np.concatenate(([0.0], ends[:-1]))
    walk = sim._block_walk(np.full(40, key), blocks, starts, ends).reshape(-1)
    steps = np.diff(walk)
    assert steps.size == k.size - 1
    assert abs(steps.mean()) < 0.02
    assert 0.97 < steps.var() < 1.03
    assert abs(walk[sim.BLOCK * 7] - ends[6]) < 1e-9  # block starts sit on the coarse walk
    assert inst.sigma > 0


# ---- realism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symbol", ["PETR4", "BBDC4", "frxEURUSD", "frxUSDJPY", "R_100", "R_50", "XPTO11"]
)
def test_prices_sit_on_the_tick_grid_and_stay_positive(symbol: str) -> None:
    inst = instrument_for(symbol)
    batch = generate(2, symbol, 0, 50_000, 1000.0, 5, T0)
    for col in ("price", "bid", "ask"):
        values = getattr(batch, col)
        assert (values > 0).all()
        ticks = np.rint(values * inst.inv_tick)
        np.testing.assert_array_equal(ticks / inst.inv_tick, values)  # exact decimals
    assert (batch.bid <= batch.price).all() and (batch.price <= batch.ask).all()
    assert (batch.ask - batch.bid > 0).all()
    assert (batch.volume > 0).all()
    if inst.lot == 100.0:
        np.testing.assert_array_equal(batch.volume % 100, 0)
    assert np.all(np.diff(batch.seq) == 1)
    assert np.all(np.diff(batch.ts) > 0)
    assert len(np.unique(batch.price)) > 5  # it moves


def test_price_stays_positive_far_into_a_volatile_stream() -> None:
    for k in (10**6, 10**8):
        batch = generate(4, "R_100", k, k + 5000, 1.0, 1, T0)
        assert (batch.price > 0).all()
        assert (batch.bid > 0).all()


def test_unknown_symbols_get_a_stable_level_and_realistic_ticks() -> None:
    a, b = instrument_for("XPTO11"), instrument_for("XPTO11")
    assert a == b and 5.0 <= a.p0 <= 100.0 and a.tick == 0.01
    assert instrument_for("frxEURUSD").tick == pytest.approx(1e-5)
    assert instrument_for("R_100").tick == pytest.approx(0.01)


def test_timestamps_follow_the_interval_with_bounded_jitter() -> None:
    step = interval_ns(1000.0, 5)
    assert step == 5 * MS
    batch = generate(1, "PETR4", 0, 10_000, 1000.0, 5, T0)
    offset = batch.ts - (T0 + batch.seq * step)
    assert (offset >= 0).all() and (offset < step // 2).all()
    assert offset.std() > step / 20  # jitter is real, not constant
    assert interval_ns(10_000_000.0, 1) == 100  # millions of ticks/s still give distinct ns


def test_fault_injection_marks_every_nth_tick_and_is_off_by_default() -> None:
    clean = generate(1, "PETR4", 0, 100, 1000.0, 5, T0)
    assert np.isfinite(clean.price).all() and (clean.volume > 0).all()
    faulty = generate(1, "PETR4", 0, 100, 1000.0, 5, T0, bad_every=10)
    bad = ~np.isfinite(faulty.price) | (faulty.volume < 0)
    np.testing.assert_array_equal(np.flatnonzero(bad), np.arange(9, 100, 10))
    assert np.isnan(faulty.price).sum() == 5 and (faulty.volume < 0).sum() == 5
    good = ~bad
    np.testing.assert_array_equal(faulty.price[good], clean.price[good])


# ---- the feed against a fake clock --------------------------------------------------------


def test_feed_emits_exactly_the_generated_stream_at_the_configured_rate() -> None:
    feed = SimulatorFeed(seed=5, rate=5000.0)
    assert isinstance(feed, Feed)
    assert feed.symbols == list(DEFAULT_SYMBOLS)
    out = run_fake_clock(feed, T0, T0 + 10_000 * MS, 2 * MS)
    # 10 s at 5000 ticks/s over 5 symbols, give or take one tick per symbol at the edges.
    assert abs(len(out) - 50_000) <= 5
    assert np.all(np.diff(out.ts[:1000]) >= 0)  # batches are time ordered
    for symbol in DEFAULT_SYMBOLS:
        mine = per_symbol(out, symbol)
        assert feed.anchor(symbol) == T0
        assert_same_ticks(mine, feed.expected(symbol, 0, len(mine)))
        assert abs(len(mine) - 10_000) <= 1


def test_restart_with_resume_point_continues_exactly_and_catches_up_the_downtime() -> None:
    first = SimulatorFeed(seed=9, rate=2000.0)
    before = run_fake_clock(first, T0, T0 + 3000 * MS, 2 * MS)
    last = {}
    for symbol in DEFAULT_SYMBOLS:
        mine = per_symbol(before, symbol)
        last[symbol] = ResumePoint(int(mine.seq[-1]), int(mine.ts[-1]), float(mine.price[-1]))
    # The first process would have gone on; the restarted one comes back 2 s later.
    reference = run_fake_clock(first, T0 + 3002 * MS, T0 + 8000 * MS, 2 * MS)

    second = SimulatorFeed(seed=9, rate=2000.0, max_batch=1000)
    second.resume_from(last)
    restart = T0 + 5000 * MS
    backlog_batches = []
    while True:
        batch, backlog = second.poll(restart)
        backlog_batches.append(batch)
        assert len(batch) <= 1000
        if not backlog:
            break
    assert len(backlog_batches) > 1  # the 2 s downtime came back in capped batches
    resumed = concat_batches(
        [*backlog_batches, run_fake_clock(second, restart + 2 * MS, T0 + 8000 * MS, 2 * MS)]
    )
    for symbol in DEFAULT_SYMBOLS:
        assert second.anchor(symbol) == T0
        assert per_symbol(resumed, symbol).seq[0] == last[symbol].seq + 1
        assert_same_ticks(per_symbol(resumed, symbol), per_symbol(reference, symbol))


def test_subscribe_and_unsubscribe_at_run_time() -> None:
    feed = SimulatorFeed(seed=1, rate=1000.0)
    run_fake_clock(feed, T0, T0 + 100 * MS, 2 * MS)
    feed.subscribe("frxEURUSD")
    feed.subscribe("frxEURUSD")  # idempotent
    feed.unsubscribe("PETR4")
    feed.unsubscribe("NOPE")  # unknown: ignored
    petr_next = feed.next_seq("PETR4")
    later = run_fake_clock(feed, T0 + 102 * MS, T0 + 1000 * MS, 2 * MS)
    assert "PETR4" not in set(later.symbol_names())
    fx = per_symbol(later, "frxEURUSD")
    assert feed.anchor("frxEURUSD") == T0 + 102 * MS
    assert fx.seq[0] == 0
    assert_same_ticks(fx, feed.expected("frxEURUSD", 0, len(fx)))

    # Back again: the sequence goes on from where it stopped, with no backlog of the pause.
    last_ts = int(generate(1, "PETR4", petr_next - 1, petr_next, 1000.0, 5, T0).ts[0])
    feed.subscribe("PETR4")
    again = per_symbol(run_fake_clock(feed, T0 + 5000 * MS, T0 + 5100 * MS, 2 * MS), "PETR4")
    assert again.seq[0] == petr_next
    assert again.ts[0] > last_ts and again.ts[0] >= T0 + 5000 * MS
    assert len(again) <= 21  # 100 ms at 200 ticks/s, not the 4.9 s pause
    assert feed.symbols == [*DEFAULT_SYMBOLS, "frxEURUSD"]
    with pytest.raises(InvalidSymbolError):
        feed.subscribe("BAD SYMBOL")


# ---- the async iterator against the real clock --------------------------------------------


async def test_batches_are_paced_by_the_wall_clock() -> None:
    polls: list[int] = []

    def clock() -> int:
        polls.append(time.time_ns())
        return polls[-1]

    feed = SimulatorFeed(seed=3, rate=2000.0, clock=clock)
    emitted: list[tuple[int, TickBatch]] = []
    started = time.monotonic()
    async for batch in feed.batches():
        emitted.append((time.time_ns(), batch))
        if time.monotonic() - started > 1.0:
            await feed.close()
    for wall, batch in emitted:
        assert batch.ts.max() <= wall  # never early
    out = concat_batches([b for _, b in emitted])
    t0 = feed.anchor("PETR4")
    assert t0 is not None and polls[0] <= t0
    # Everything due by the last poll that produced ticks was emitted, exactly as generated.
    horizon = int(out.ts.max())
    for symbol in DEFAULT_SYMBOLS:
        mine = per_symbol(out, symbol)
        expected = feed.expected(symbol, 0, len(mine) + 5)
        assert_same_ticks(mine, expected.take(expected.ts <= int(mine.ts[-1])))
        assert int(expected.ts[len(mine)]) > horizon - interval_ns(2000.0, 5)
    seconds = (horizon - t0) / 1e9
    assert seconds > 0.9
    assert len(out) / seconds == pytest.approx(2000.0, rel=0.02)
    # Batched, not one tick per await: about one batch per emit interval or less.
    assert len(emitted) < len(out) / 2


async def test_backlog_is_emitted_at_full_speed_after_downtime() -> None:
    now = time.time_ns()
    feed = SimulatorFeed(seed=3, rate=50_000.0, max_batch=10_000)
    last = ResumePoint(seq=99, ts=now - 2_000_000_000, price=38.0)
    feed.resume_from(dict.fromkeys(DEFAULT_SYMBOLS, last))
    started = time.monotonic()
    seen = []
    async for batch in feed.batches():
        seen.append(batch)
        assert len(batch) <= 10_000
        if batch.ts.max() >= now:
            break
    await feed.close()
    elapsed = time.monotonic() - started
    out = concat_batches(seen)
    assert len(out) >= 100_000  # 2 s at 50k ticks/s
    assert elapsed < 1.9  # faster than real time
    for symbol in DEFAULT_SYMBOLS:
        seq = per_symbol(out, symbol).seq
        np.testing.assert_array_equal(seq, np.arange(100, 100 + seq.size))


# ---- throughput -----------------------------------------------------------------------------


def test_bulk_generation_exceeds_200k_ticks_per_second() -> None:
    symbols = [f"SYM{i}" for i in range(150)]
    generate(0, symbols[0], 0, 1000, 1e6, 150, T0)  # warm up
    started = time.perf_counter()
    total = sum(len(generate(0, s, 0, 20_000, 1e6, 150, T0)) for s in symbols)
    rate = total / (time.perf_counter() - started)
    assert total == 3_000_000
    assert rate >= 200_000, f"{rate:,.0f} ticks/s"


def test_streaming_keeps_up_with_a_million_ticks_per_second() -> None:
    feed = SimulatorFeed([f"SYM{i}" for i in range(145)], seed=0, rate=1_000_000.0)
    started = time.perf_counter()
    out = run_fake_clock(feed, T0, T0 + 500 * MS, 2 * MS)  # 0.5 s of simulated time
    compute = time.perf_counter() - started
    assert abs(len(out) - 500_000) <= 150
    assert len(out) / compute >= 200_000


def test_make_feed_builds_an_unsubscribed_simulator_sized_for_the_configured_symbols() -> None:
    feed = make_feed(Settings(rate=300.0, seed=4, symbols=("PETR4", "R_100", "frxEURUSD")))
    assert isinstance(feed, SimulatorFeed)
    assert feed.symbols == [] and feed.seed == 4
    assert feed.interval_ns == interval_ns(300.0, 3)
    with pytest.raises(ValueError, match="HFT_FEED='kafka'"):
        make_feed(Settings(feed="kafka"))
    with pytest.raises(ValueError, match="HFT_REPLAY_FILE"):
        make_feed(Settings(feed="replay"))


async def test_close_ends_an_idle_iterator_promptly() -> None:
    feed = SimulatorFeed(include_defaults=False)  # nothing subscribed: nothing to emit

    async def consume() -> int:
        return sum([len(b) async for b in feed.batches()])

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await feed.close()
    assert await asyncio.wait_for(task, 1.0) == 0


def test_a_symbol_subscribed_at_run_time_with_history_continues_without_backlog() -> None:
    feed = SimulatorFeed(seed=2, rate=1000.0)
    run_fake_clock(feed, T0, T0 + 50 * MS, 2 * MS)
    # The service knows VALE9 from an earlier session that ended an hour ago.
    feed.resume_from({"VALE9": ResumePoint(seq=500, ts=T0 - 3600 * 10**9, price=20.0)})
    feed.subscribe("VALE9")
    out = per_symbol(run_fake_clock(feed, T0 + 52 * MS, T0 + 152 * MS, 2 * MS), "VALE9")
    assert out.seq[0] == 501 and out.ts[0] >= T0 + 52 * MS
    assert len(out) <= 21  # 100 ms at 200 ticks/s, not an hour of backlog
    assert_same_ticks(out, feed.expected("VALE9", 501, 501 + len(out)))


def test_history_starts_the_first_symbols_in_the_past_and_later_ones_now() -> None:
    history_s = 60.0
    feed = SimulatorFeed(["R_10"], include_defaults=False, seed=8, rate=100.0, history_s=history_s)
    parts, backlog = [], True
    while backlog:  # the history comes at full speed, BLOCK ticks per symbol and poll
        batch, backlog = feed.poll(T0)
        parts.append(batch)
    first = concat_batches(parts)
    assert len(parts) == 2
    start = T0 - int(history_s * 1e9)
    assert feed.anchor("R_10") == start
    assert_same_ticks(first, feed.expected("R_10", 0, len(first)))
    assert first.ts[0] >= start and first.ts[0] < start + 10 * MS
    assert abs(len(first) - 6000) <= 1 and (first.ts <= T0).all()

    feed.subscribe("R_25")  # while running: no history
    later = per_symbol(run_fake_clock(feed, T0 + 2 * MS, T0 + 1000 * MS, 2 * MS), "R_25")
    assert feed.anchor("R_25") == T0 + 2 * MS
    assert later.seq[0] == 0 and len(later) <= 101


def test_history_is_a_setting_of_the_simulator_feed() -> None:
    feed = make_feed(Settings(sim_history_s=120.0))
    assert isinstance(feed, SimulatorFeed) and feed.history_ns == 120 * 10**9
    with pytest.raises(Exception, match="HFT_SIM_HISTORY_S"):
        Settings.from_env({"HFT_SIM_HISTORY_S": "-1"})
