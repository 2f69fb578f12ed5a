"""Ingest API under load, and what the load costs the zero-loss path: `GET /ticks/{symbol}`
(raw, 1m, and a mix that includes store-backed queries) from 16 and 64 keep-alive clients while
the service ingests 50,000 ticks/s over 150 symbols, on SQLite and on PostgreSQL.

The service is the real `hft ingest` command (simulator feed, 150 symbols, a temporary home) in a
subprocess with default settings, so the API's admission control runs with its defaults
(docs/candles.md). Load comes from CLIENT_PROCS processes of closed-loop threads, each one
keep-alive connection (hft_pipeline.client, over `http.client`) asking for a random path; a
client that gets a 429/503 waits the Retry-After it was given, as a well-behaved client does.
Latency is measured per answered request in the client, on the same 2 cores as the server, the
persister and the database.

Per phase the benchmark reports req/s, p50/p99 of the 200 answers, the non-200 answers by
status, and from /status (sampled every second) the persister's share of what was ingested in
the phase (persisted ticks / accepted ticks, target >= 0.99) and the backlog (accepted, not yet
persisted) at its largest and at the end: API load must never starve the persister.

Phases run back to back, the first one 10 s after the service started: `1m` then is the first
minute, when the stored-candle answers are not final yet and every request reads the store
(the 1m candles kept in candles_1m, an index read); the later `1m` phases are warm (final stored
candles are kept encoded). `mixed` draws from raw (also oldest-first, which always reads the
store), 1s/15s (aggregated from stored ticks for what memory does not complete), 1m, 5m, 15m
and 1h. `GET /test` with 16 clients, last, is the framework's floor in the same run.

Candles: 1000 one-minute candles need ~17 h of data, so before the service starts the store gets
1001 minutes of history per symbol (one simulator tick a minute, ending a second before start;
see `_seed_history`): a 1m answer holds 1000 candles, the newest from memory.

Run: `.venv/bin/python -m benchmarks.api [--quick]` (--quick: 4 s phases, for development).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np

from benchmarks.workload import percentiles, print_rows, row, scratch_database, symbol_names
from hft_pipeline.client import ApiError, IngestClient
from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.market.ticks import concat_batches
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store

SIMULATOR_SEED = Settings().seed  # `hft ingest` runs with the default seed

RATE = 50_000.0
N_SYMBOLS = 150
LIMIT = 1000
CLIENT_PROCS = 2
FULL_SECONDS = 30.0
QUICK_SECONDS = 4.0
START_AFTER_S = 10.0
#: (paths, clients, label) in the order they run.
PHASES = (
    ("1m", 16, "first minute"),
    ("raw", 16, ""),
    ("mixed", 16, ""),
    ("1m", 16, "warm"),
    ("raw", 64, ""),
    ("1m", 64, "warm"),
    ("mixed", 64, ""),
    ("test", 16, "baseline"),
)
TARGET_PERSISTED = 0.99
TARGET_1M_FIRST_P99_MS = 500.0
TARGET_1M_WARM_P99_MS = 50.0
STORES = ("sqlite", "postgresql")
# Mixed: (path template, weight); {s} is the symbol.
MIXED = (
    (f"/ticks/{{s}}?timeframe=raw&limit={LIMIT}", 6),
    (f"/ticks/{{s}}?timeframe=raw&limit={LIMIT}&order=asc", 2),  # oldest: always the store
    (f"/ticks/{{s}}?timeframe=1s&limit={LIMIT}", 2),
    (f"/ticks/{{s}}?timeframe=15s&limit={LIMIT}", 1),
    (f"/ticks/{{s}}?timeframe=1m&limit={LIMIT}", 5),
    (f"/ticks/{{s}}?timeframe=5m&limit={LIMIT}", 2),
    (f"/ticks/{{s}}?timeframe=15m&limit={LIMIT}", 1),
    (f"/ticks/{{s}}?timeframe=1h&limit={LIMIT}", 1),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Count(msgspec.Struct):
    count: int


# The client checks every body is valid JSON and sums its "count" without building the rows:
# json.loads of a 1,000-row raw answer (~170 kB) costs ~1.8 ms of client CPU, which at ~1,000
# req/s is most of the 2 cores the server shares; msgspec validates the same bytes in ~0.13 ms.
_COUNT = msgspec.json.Decoder(_Count)


def _paths(kind: str, symbols: list[str]) -> list[str]:
    if kind == "test":
        return ["/test"]
    if kind == "mixed":
        return [t.format(s=s) for t, weight in MIXED for s in symbols for _ in range(weight)]
    return [f"/ticks/{s}?timeframe={kind}&limit={LIMIT}" for s in symbols]


def _client_thread(port: int, paths: list[str], until: float, seed: int) -> tuple:
    """Closed-loop GETs on one keep-alive connection: latencies (s) of 200s, rows, statuses."""
    rng = random.Random(seed)
    latencies: list[float] = []
    counts = 0
    statuses: Counter = Counter()
    # The project's client is http.client underneath, not requests: about a third of the client
    # CPU per request, which matters when the load generator shares 2 cores with the server.
    with IngestClient(f"http://127.0.0.1:{port}", timeout=60) as client:
        while (now := time.perf_counter()) < until:
            path = rng.choice(paths)
            try:
                reply = client.request("GET", path)  # the next request reconnects after an error
            except ApiError:
                statuses["connection error"] += 1
                continue
            elapsed = time.perf_counter() - now
            if reply.status != 200:
                statuses[reply.status] += 1
                retry = reply.header("Retry-After")
                if retry and retry.isdigit():
                    time.sleep(max(0.0, min(float(retry), until - time.perf_counter())))
                continue
            latencies.append(elapsed)
            if path.startswith("/ticks/"):
                counts += _COUNT.decode(reply.body).count
    return latencies, counts, statuses


def _client_process(port: int, paths: list[str], threads: int, seconds: float, seed: int):
    """One load process: `threads` closed-loop clients for `seconds`."""
    until = time.perf_counter() + seconds
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(_client_thread, port, paths, until, seed * 1000 + i) for i in range(threads)
        ]
        parts = [f.result() for f in futures]
    statuses: Counter = Counter()
    for p in parts:
        statuses.update(p[2])
    return [x for p in parts for x in p[0]], sum(p[1] for p in parts), dict(statuses)


def _status(api: IngestClient) -> tuple[float, int, int, int]:
    """(time, accepted, persisted, pending) from /status."""
    body = api.get("/status").json()
    persistence = body["persistence"]
    return (
        time.perf_counter(),
        int(body["ticks"]["accepted"]),
        int(persistence["persisted_ticks"]),
        int(persistence["pending_ticks"]),
    )


def _phase(
    pool: ProcessPoolExecutor, port: int, paths: list[str], clients: int, seconds: float
) -> dict:
    """One load phase of `clients` closed-loop clients for `seconds`, /status every second."""
    api = IngestClient(f"http://127.0.0.1:{port}", timeout=30)
    samples = [_status(api)]
    per_proc = [clients // CLIENT_PROCS + (i < clients % CLIENT_PROCS) for i in range(CLIENT_PROCS)]
    futures = [
        pool.submit(_client_process, port, paths, n, seconds, i) for i, n in enumerate(per_proc)
    ]
    while not all(f.done() for f in futures):
        time.sleep(max(0.0, samples[-1][0] + 1.0 - time.perf_counter()))
        samples.append(_status(api))
    api.close()
    parts = [f.result() for f in futures]
    latencies = np.array([x for p in parts for x in p[0]]) * 1e3
    statuses: Counter = Counter()
    for p in parts:
        statuses.update(p[2])
    (t0, accepted0, persisted0, _), (t1, accepted1, persisted1, _) = samples[0], samples[-1]
    n = len(latencies)
    return {
        "rps": n / seconds,
        "ms": percentiles(latencies, (50, 99)),
        "max_ms": float(latencies.max()) if n else float("nan"),
        "mean_count": sum(p[1] for p in parts) / max(1, n),
        "statuses": dict(statuses),
        "ingest_rate": (accepted1 - accepted0) / (t1 - t0),
        "persist_rate": (persisted1 - persisted0) / (t1 - t0),
        "persisted_share": (persisted1 - persisted0) / max(1, accepted1 - accepted0),
        "backlog_max": max(s[3] for s in samples),
        "backlog_start": samples[0][3],
        "backlog_end": samples[-1][3],
    }


def _wait_ready(base: str, proc: subprocess.Popen, symbols: list[str], timeout: float) -> None:
    """Wait until the API answers and ring buffers hold LIMIT ticks (raw answers are full)."""
    deadline = time.monotonic() + timeout
    api = IngestClient(base, timeout=5)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hft ingest exited with {proc.returncode}")
        with contextlib.suppress(ApiError):
            # 404 until the symbol's first tick arrived.
            if all(
                api.get(f"/ticks/{s}", {"limit": LIMIT}).json(_Count).count >= LIMIT
                for s in (symbols[0], symbols[-1])
            ):
                api.close()
                return
        time.sleep(0.5)
    api.close()
    raise RuntimeError(f"hft ingest at {base} not ready with {LIMIT} ticks within {timeout}s")


def _seed_history(store_url: str, symbols: list[str]) -> None:
    """Write LIMIT + 1 minutes of history per symbol to the store before the service starts.

    Tick k of each symbol is the simulator's own tick k (seed, price, volume), one per minute
    and ending a second ago, so `hft ingest` resumes every symbol after seq LIMIT as after a
    restart (nearly no backlog) and a 1m request with limit=LIMIT gets LIMIT candles: the
    newest from memory, the rest from the store. The rows go in under their own offset stream,
    so the service's tick log offset is untouched.
    """
    n = LIMIT + 1
    parts = [generate(SIMULATOR_SEED, s, 0, n, RATE, len(symbols), 0) for s in symbols]
    end_ns = time.time_ns() - 1_000_000_000
    minute_ts = end_ns - (n - 1 - np.arange(n, dtype=np.int64)) * 60_000_000_000
    for batch in parts:
        batch.ts[:] = minute_ts
    history = concat_batches(parts)
    store = open_store(store_url)
    try:
        store.write_ticks(history, len(history), stream="bench-history")
    finally:
        store.close()


def _load_average() -> float:
    return os.getloadavg()[0]


def _serve_and_load(store: str, symbols: list[str], seconds: float) -> list[dict]:
    """Start `hft ingest` on `store` (sqlite or postgresql), run PHASES, stop it."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="hft-bench-api-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFT_")}
        cmd = [
            sys.executable, "-m", "hft_pipeline.cli", "ingest",
            "--rate", str(RATE), "--symbols", ",".join(symbols),
            "--home", home, "--port", str(port),
        ]  # fmt: skip
        if store == "postgresql":
            store_url = stack.enter_context(scratch_database("hft_bench_api"))
        else:
            store_url = f"sqlite:///{Path(home) / 'hft.sqlite3'}"
        cmd += ["--store", store_url]
        _seed_history(store_url, symbols)
        with open(Path(home) / "ingest.log", "w") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(base, proc, symbols, 120.0)
            time.sleep(max(0.0, started + START_AFTER_S - time.perf_counter()))
            results = []
            with ProcessPoolExecutor(CLIENT_PROCS) as pool:
                pool.submit(time.sleep, 0).result()  # client processes up before the clock runs
                for kind, clients, label in PHASES:
                    load = _load_average()
                    since = time.perf_counter() - started
                    r = _phase(pool, port, _paths(kind, symbols), clients, seconds)
                    results.append(r | {"kind": kind, "clients": clients, "label": label,
                                        "since_start_s": since, "load": load})  # fmt: skip
                    print(f"  {store} {kind} x{clients} {label}: {r['rps']:,.0f} req/s "
                          f"p50 {r['ms'][50]:.1f} p99 {r['ms'][99]:.1f} ms, {r['statuses']}, "
                          f"persisted {r['persisted_share']:.3f}, backlog max "
                          f"{r['backlog_max']:,}", flush=True)  # fmt: skip
            return results
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _phase_rows(store: str, r: dict, floor: dict, seconds: float) -> list[dict]:
    kind, clients = r["kind"], r["clients"]
    what = "GET /test" if kind == "test" else (
        f"GET /ticks/{{symbol}}?timeframe={kind}&limit={LIMIT}" if kind != "mixed"
        else "GET /ticks mixed (raw, raw oldest-first, 1s, 15s, 1m, 5m, 15m, 1h)"
    )  # fmt: skip
    label = f" {r['label']}" if r["label"] and kind != "test" else ""
    tag = f" [{store}, {clients} clients{label}, from {r['since_start_s']:.0f} s]"
    base = dict(baseline="GET /test, 16 clients, same run", baseline_value=floor["rps"])
    target = met = None
    if kind == "1m":
        limit_ms = TARGET_1M_FIRST_P99_MS if r["label"] == "first minute" else TARGET_1M_WARM_P99_MS
        if clients == 16:
            target, met = f"p99 < {limit_ms:g} ms", r["ms"][99] < limit_ms
    s = r["statuses"]
    errors = sum(s.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(s.items(), key=str)) or "none"
    rows = [
        row("api", f"{what} throughput{tag}", r["rps"], "req/s", **base,
            ratio=r["rps"] / floor["rps"]),
        row("api", f"{what} latency p50{tag}", r["ms"][50], "ms"),
        row("api", f"{what} latency p99{tag}", r["ms"][99], "ms", target=target, met=met),
        row("api", f"{what} non-200 answers ({detail}){tag}", errors, "answers"),
        row("api", f"persisted / ingested ticks while serving{tag}", r["persisted_share"],
            "ratio", target=f">= {TARGET_PERSISTED}", met=r["persisted_share"] >= TARGET_PERSISTED),
        row("api", f"backlog (accepted, not persisted): largest, sampled each second{tag}",
            r["backlog_max"], "ticks", baseline="at the phase's start",
            baseline_value=r["backlog_start"]),
    ]  # fmt: skip
    if kind == "1m" and r["label"] == "first minute":
        rows.append(row("api", f"{what} latency max{tag}", r["max_ms"], "ms"))
    if kind != "test":
        rows.append(row("api", f"ingest accepted ticks/s{tag}", r["ingest_rate"], "ticks/s",
                        target=f"~{RATE:,.0f} ticks/s", met=r["ingest_rate"] >= 0.95 * RATE))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows per store and phase: req/s, latency, errors, persisted share, backlog."""
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    symbols = symbol_names(N_SYMBOLS)  # with --symbols the simulator runs exactly those
    rows = []
    for store in STORES:
        results = _serve_and_load(store, symbols, seconds)
        floor = next(r for r in results if r["kind"] == "test")
        for r in results:
            rows += _phase_rows(store, r, floor, seconds)
        rows.append(
            row("api", f"load average (1 min) when the phases began [{store}]",
                float(np.mean([r["load"] for r in results])), "runnable")
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv[1:]))
