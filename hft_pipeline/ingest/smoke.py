"""`hft smoke`: end-to-end check of a running ingest API (the original test_system.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hft_pipeline.client import IngestClient, Reply
from hft_pipeline.market.timeframes import ALL_TIMEFRAMES
from hft_pipeline.settings import Settings

TEST_SYMBOLS = ("SMOKE_A", "SMOKE_B")


@dataclass
class SmokeReport:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.checks if not ok)

    def render(self) -> str:
        lines = [
            f"{'PASS' if ok else 'FAIL'}  {name:<44} {detail}" for name, ok, detail in self.checks
        ]
        passed = len(self.checks) - self.failed
        lines.append(f"{passed} passed, {self.failed} failed")
        return "\n".join(lines)


def run_smoke(
    url: str = "http://127.0.0.1:8002",
    collect_s: float = 5.0,
    token: str | None = None,
    out: Callable[[str], None] = print,
) -> SmokeReport:
    """Check connectivity, subscribe test symbols, collect, call every endpoint, unsubscribe."""
    token = token if token is not None else Settings.from_env().api_token.get_secret_value()
    api = IngestClient(url, token=token or None, timeout=10)
    report = SmokeReport()

    def check(name: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none aborts the run
            report.checks.append((name, False, f"{type(exc).__name__}: {exc}"))
            out(f"FAIL  {name}: {exc}")
            return False
        report.checks.append((name, True, detail))
        out(f"PASS  {name}: {detail}")
        return True

    def get(path: str, status: int = 200, **params) -> Reply:
        return api.get(path, params, expect=status)

    def post(path: str, body: dict) -> dict:
        return api.post(path, body).json()

    if not check("connectivity GET /test", lambda: get("/test").json()["message"]):
        api.close()
        return report
    check("GET /health", lambda: get("/health").json()["status"])
    for symbol in TEST_SYMBOLS:
        check(
            f"POST /subscribe {symbol}",
            lambda s=symbol: post("/subscribe", {"symbol": s, "exchange": "SIM"})["status"],
        )

    def subscribed() -> str:
        symbols = {s["symbol"] for s in get("/subscriptions").json()["subscriptions"]}
        missing = set(TEST_SYMBOLS) - symbols
        if missing:
            raise AssertionError(f"not listed: {sorted(missing)}")
        return f"{len(symbols)} symbols"

    check("GET /subscriptions lists test symbols", subscribed)
    out(f"collecting for {collect_s:.0f}s ...")
    time.sleep(collect_s)
    for symbol in TEST_SYMBOLS:
        for tf in ALL_TIMEFRAMES:

            def ticks(symbol=symbol, tf=tf) -> str:
                body = get(f"/ticks/{symbol}", timeframe=tf, limit=100).json()
                if body["count"] == 0:
                    raise AssertionError("no data after collecting")
                first = body["data"][0]
                price = first.get("price", first.get("close"))
                return f"{body['count']} rows from {body['source']}, latest {price}"

            check(f"GET /ticks/{symbol}?timeframe={tf}", ticks)

    def status() -> str:
        body = get("/status").json()
        return (
            f"received={body['ticks']['received']} pending={body['persistence']['pending_ticks']}"
        )

    check("GET /status", status)

    def metrics() -> str:
        text = get("/metrics").text
        for name in (
            "hft_ticks_received_total",
            "hft_ticks_persisted_total",
            "hft_persist_pending_ticks",
        ):
            if name not in text:
                raise AssertionError(f"{name} missing")
        return f"{len(text.splitlines())} lines"

    check("GET /metrics", metrics)
    check("GET /docs", lambda: f"{len(get('/docs').text)} bytes")
    check("bad symbol -> 422", lambda: get("/ticks/bad|symbol", status=422).json()["detail"][:60])
    check(
        "bad timeframe -> 422",
        lambda: get(f"/ticks/{TEST_SYMBOLS[0]}", status=422, timeframe="2m").json()["detail"][:60],
    )
    for symbol in TEST_SYMBOLS:
        check(
            f"POST /unsubscribe {symbol}",
            lambda s=symbol: post("/unsubscribe", {"symbol": s})["status"],
        )
    api.close()
    out("")
    out(report.render())
    return report
