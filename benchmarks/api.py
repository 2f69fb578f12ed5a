"""Ingest API under load: `GET /ticks/{symbol}?timeframe=raw|1m&limit=1000` while the service
ingests 50,000 ticks/s over 150 symbols, against `GET /test` (the framework's floor).

The service is the real `hft ingest` command (simulator feed, 150 symbols given with
`--symbols`, a temporary home) in a subprocess, once on SQLite and once on a scratch PostgreSQL
database: the persister shares the server's GIL, and the two stores load it differently. Load
comes from CLIENT_PROCS processes with CLIENT_THREADS threads each, every thread one keep-alive
`http.client` connection asking for a random symbol, closed loop (a thread sends its next
request when the last one answered).
Latency is measured per request in the client, so it includes the client's own overhead on this
2-core machine shared with the server. The service's accepted ticks/s during each phase are
reported too, to show the ingest kept up under the query load.

Candles: 1000 one-minute candles need ~17 h of data, so before the service starts the store gets
1001 minutes of history per symbol (one simulator tick a minute, ending a second before start;
see `_seed_history`); the service resumes after it as after a restart, and a 1m answer holds
1000 candles, the newest from memory and the rest from the store (the mean `count` is reported).
Raw responses hold 1000 ticks once the ring buffers have filled (checked before measuring).

Memory completes a symbol's 1m candles only from its first whole minute on, so the candle of the
service's first minute comes from the store, which aggregates it from ticks; the API keeps that
answer once it is final (persisted, no late tick since). A long-running service is in that
steady state, so the 1m phase starts after the first minute closed and after two cold passes
(every symbol asked once, the persister catches up, every symbol asked again: that answer is final
and kept); the cold passes' latencies are reported apart.

Run: `.venv/bin/python -m benchmarks.api [--quick]`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import requests

from benchmarks.workload import percentiles, print_rows, row, scratch_database, symbol_names
from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.market.ticks import concat_batches
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store

SIMULATOR_SEED = Settings().seed  # `hft ingest` runs with the default seed

RATE = 50_000.0
N_SYMBOLS = 150
LIMIT = 1000
CLIENT_PROCS = 2
CLIENT_THREADS = 4
FULL_SECONDS = 15.0
QUICK_SECONDS = 3.0
TARGET_RPS = 1000.0
TARGET_P99_MS = 20.0
STORES = ("sqlite", "postgresql")


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


def _client_thread(port: int, paths: list[str], until: float, seed: int) -> tuple[list, int, int]:
    """Closed-loop GETs on one keep-alive connection; latencies (s), rows returned, errors."""
    rng = random.Random(seed)
    latencies: list[float] = []
    counts = errors = 0
    # http.client rather than requests: about a third of the client CPU per request, which
    # matters when the load generator shares 2 cores with the server.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while time.perf_counter() < until:
            path = rng.choice(paths)
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                errors += 1
                continue
            latencies.append(elapsed)
            if path.startswith("/ticks/"):
                counts += _COUNT.decode(body).count
    finally:
        conn.close()
    return latencies, counts, errors


def _client_process(port: int, paths: list[str], seconds: float, seed: int) -> tuple:
    """One load process: CLIENT_THREADS closed-loop threads for `seconds`."""
    until = time.perf_counter() + seconds
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = [
            pool.submit(_client_thread, port, paths, until, seed * 100 + i)
            for i in range(CLIENT_THREADS)
        ]
        parts = [f.result() for f in futures]
    return (
        [x for p in parts for x in p[0]],
        sum(p[1] for p in parts),
        sum(p[2] for p in parts),
    )


def _accepted(base: str) -> int:
    return int(requests.get(base + "/status", timeout=10).json()["ticks"]["accepted"])


def _phase(pool: ProcessPoolExecutor, port: int, paths: list[str], seconds: float) -> dict:
    """One load phase: every client process asks `paths` for `seconds`."""
    base = f"http://127.0.0.1:{port}"
    accepted0, t0 = _accepted(base), time.perf_counter()
    futures = [pool.submit(_client_process, port, paths, seconds, i) for i in range(CLIENT_PROCS)]
    parts = [f.result() for f in futures]
    accepted1, t1 = _accepted(base), time.perf_counter()
    latencies = np.array([x for p in parts for x in p[0]]) * 1e3
    n = len(latencies)
    return {
        "rps": n / seconds,
        "ms": percentiles(latencies, (50, 95, 99)),
        "max_ms": float(latencies.max()) if n else float("nan"),
        "mean_count": sum(p[1] for p in parts) / max(1, n),
        "errors": sum(p[2] for p in parts),
        "ingest_rate": (accepted1 - accepted0) / (t1 - t0),
    }


def _cold_pass(port: int, paths: list[str]) -> dict:
    """Every path once over CLIENT_PROCS * CLIENT_THREADS connections: latency percentiles."""
    chunks = [
        paths[i :: CLIENT_PROCS * CLIENT_THREADS] for i in range(CLIENT_PROCS * CLIENT_THREADS)
    ]

    def ask(chunk: list[str]) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        try:
            for path in chunk:
                started = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
        finally:
            conn.close()
        return latencies

    with ThreadPoolExecutor(len(chunks)) as pool:
        latencies = np.array([x for part in pool.map(ask, chunks) for x in part]) * 1e3
    return {"answers": len(latencies), "ms": percentiles(latencies, (50, 95, 99))}


def _wait_steady_1m(base: str, started_wall: float, port: int, paths: list[str]) -> dict:
    """Wait for the first minute to close, ask every symbol once, wait for the persister."""
    time.sleep(max(0.0, (started_wall // 60 + 1) * 60 + 2 - time.time()))
    cold = _cold_pass(port, paths)
    # The first answers are not final yet (their ticks were still being persisted): the first
    # answer after the persister caught up is, and is kept.
    target = requests.get(base + "/status", timeout=10).json()["log"]["end_offset"]
    deadline = time.monotonic() + 60
    while requests.get(base + "/status", timeout=10).json()["persistence"]["offset"] < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the persister did not catch up within 60 s")
        time.sleep(0.2)
    cold["settle"] = _cold_pass(port, paths)
    return cold


def _wait_ready(base: str, proc: subprocess.Popen, symbols: list[str], timeout: float) -> None:
    """Wait until the API answers and every ring buffer holds LIMIT ticks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hft ingest exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            answers = [
                requests.get(f"{base}/ticks/{s}", params={"limit": LIMIT}, timeout=5)
                for s in (symbols[0], symbols[-1])
            ]
            # 404 until the symbol's first tick arrived.
            if all(a.status_code == 200 and a.json()["count"] >= LIMIT for a in answers):
                return
        time.sleep(0.5)
    raise RuntimeError(f"hft ingest at {base} not ready with {LIMIT} ticks within {timeout}s")


def _seed_history(store_url: str, symbols: list[str]) -> None:
    """Write LIMIT + 1 minutes of history per symbol to the store before the service starts.

    Tick k of each symbol is the simulator's own tick k (seed, price, volume), one per minute
    and ending a second ago, so `hft ingest` resumes every symbol after seq LIMIT as after a
    restart (nearly no backlog) and a 1m request with limit=LIMIT gets LIMIT candles: the
    newest from memory, the rest aggregated by the store, as a long-running service answers.
    The rows go in under their own offset stream, so the service's tick log offset is untouched.
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
        store.migrate()
        store.write_ticks(history, len(history), stream="bench-history")
    finally:
        store.close()


def _serve_and_load(store: str, symbols: list[str], seconds: float) -> dict[str, dict]:
    """Start `hft ingest` on `store` (sqlite or postgresql), load it phase by phase, stop it."""
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
        started_wall = time.time()
        with open(Path(home) / "ingest.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(base, proc, symbols, 120.0)
            phases = {
                "test": ["/test"],
                "raw": [f"/ticks/{s}?timeframe=raw&limit={LIMIT}" for s in symbols],
                "1m": [f"/ticks/{s}?timeframe=1m&limit={LIMIT}" for s in symbols],
            }
            results: dict[str, dict] = {}
            with ProcessPoolExecutor(CLIENT_PROCS) as pool:
                for name, paths in phases.items():
                    if name == "1m":
                        results["1m_cold"] = _wait_steady_1m(base, started_wall, port, paths)
                    results[name] = _phase(pool, port, paths, seconds)
            return results
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(quick: bool = False) -> list[dict]:
    """Rows: req/s and p50/p95/p99 of /ticks raw and 1m under 50k ticks/s ingest vs /test."""
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    # With --symbols the simulator runs exactly those (the 5 defaults only come without it).
    symbols = symbol_names(N_SYMBOLS)
    rows = []
    for store in STORES:
        results = _serve_and_load(store, symbols, seconds)
        floor = results["test"]
        label = (
            f"under {RATE:,.0f} ticks/s ingest, {len(symbols)} symbols, {store} store, "
            f"{CLIENT_PROCS}x{CLIENT_THREADS} keep-alive clients, {seconds:.0f} s"
        )
        tag = f" [{store}]"
        for name in ("raw", "1m"):
            r = results[name]
            what = f"GET /ticks/{{symbol}}?timeframe={name}&limit={LIMIT}"
            rows += [
                row("api", f"{what} throughput ({label})", r["rps"], "req/s",
                    baseline="GET /test, same clients", baseline_value=floor["rps"],
                    ratio=r["rps"] / floor["rps"], target=f">= {TARGET_RPS:,.0f} req/s",
                    met=r["rps"] >= TARGET_RPS),
                row("api", f"{what} latency p50{tag}", r["ms"][50], "ms",
                    baseline="GET /test", baseline_value=floor["ms"][50],
                    ratio=floor["ms"][50] / r["ms"][50]),
                row("api", f"{what} latency p95{tag}", r["ms"][95], "ms",
                    baseline="GET /test", baseline_value=floor["ms"][95],
                    ratio=floor["ms"][95] / r["ms"][95]),
                row("api", f"{what} latency p99{tag}", r["ms"][99], "ms",
                    baseline="GET /test", baseline_value=floor["ms"][99],
                    ratio=floor["ms"][99] / r["ms"][99], target=f"p99 < {TARGET_P99_MS:g} ms",
                    met=r["ms"][99] < TARGET_P99_MS),
                row("api", f"{what} mean rows per response{tag}", r["mean_count"], "rows"),
                row("api", f"{what} non-200 responses{tag}", r["errors"], "responses"),
                row("api", f"ingest accepted ticks/s while serving {name}{tag}",
                    r["ingest_rate"], "ticks/s", target=f"~{RATE:,.0f} ticks/s",
                    met=r["ingest_rate"] >= 0.95 * RATE),
            ]  # fmt: skip
        cold = results["1m_cold"]
        for what, part in (("first", cold), ("second (final, kept)", cold["settle"])):
            rows += [
                row("api", f"{what} 1m answer per symbol after the first minute closed, "
                    f"p{q}{tag}", part["ms"][q], "ms",
                    baseline=f"{part['answers']} answers, one per symbol")
                for q in (50, 99)
            ]  # fmt: skip
        rows.append(
            row("api", f"ingest accepted ticks/s while serving /test{tag}", floor["ingest_rate"],
                "ticks/s")
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv[1:]))
