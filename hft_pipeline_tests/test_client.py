"""The ingest API client against the real API on loopback: JSON, errors, token, keep-alive."""

from __future__ import annotations

import http.server
import threading
import time

import msgspec
import numpy as np
import pytest

from hft_pipeline.client import ApiError, IngestClient
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline_tests.ingest.harness import ScriptedFeed, free_port, running_service

NOW_S = time.time_ns() // 10**9


def ticks(symbol: str, n: int) -> TickBatch:
    ts = (NOW_S - 600) * 10**9 + np.arange(n) * 250_000_000
    return TickBatch.from_columns(symbol, ts, np.arange(n), np.full(n, 50.0), np.full(n, 100.0))


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    home = tmp_path_factory.mktemp("client") / "home"
    settings = Settings(home=home, symbols=("PETR4",), api_token="s3cret")
    with running_service(settings, feed=ScriptedFeed([ticks("PETR4", 300)])) as running:
        running.wait(lambda: running.service.counters.accepted == 300)
        yield running


def test_get_decodes_json_and_keeps_one_connection(svc):
    with IngestClient(svc.url) as client:
        assert client.get("/test").json()["message"]
        first = client._conn.sock
        body = client.get("/ticks/PETR4", {"limit": 5}).json()
        assert client._conn.sock is first  # the same kept-alive socket answered both
    assert body["count"] == 5
    assert [r["seq"] for r in body["data"]] == [299, 298, 297, 296, 295]


def test_json_decodes_to_a_given_type(svc):
    class Count(msgspec.Struct):
        count: int

    with IngestClient(svc.url) as client:
        assert client.get("/ticks/PETR4", {"limit": 7}).json(Count) == Count(7)


def test_unexpected_status_raises_with_the_status_and_the_api_detail(svc):
    with IngestClient(svc.url) as client:
        with pytest.raises(ApiError) as caught:
            client.get("/ticks/PETR4", {"timeframe": "2m"})
        assert caught.value.status == 422
        assert "answered 422: timeframe: Input should be" in str(caught.value)
        assert isinstance(caught.value.body, dict) and "detail" in caught.value.body
        # `expect` names the status the caller wants; `|` goes out percent-encoded.
        assert client.get("/ticks/bad|symbol", expect=422).json()["detail"]


def test_mutating_requests_carry_the_token(svc):
    with IngestClient(svc.url) as anonymous:
        with pytest.raises(ApiError) as caught:
            anonymous.post("/subscribe", {"symbol": "VALE3"})
        assert caught.value.status == 401 and "bearer token" in caught.value.body["detail"]
    with IngestClient(svc.url, token="s3cret") as client:
        assert client.post("/subscribe", {"symbol": "VALE3"}).json()["status"] == "subscribed"
        listed = client.get("/subscriptions").json()["subscriptions"]
        assert "VALE3" in {s["symbol"] for s in listed}
        assert client.post("/unsubscribe", {"symbol": "VALE3"}).json() == {
            "status": "unsubscribed",
            "symbol": "VALE3",
        }


def test_no_server_raises_api_error_without_a_status():
    url = f"http://127.0.0.1:{free_port()}"
    with IngestClient(url, timeout=2) as client, pytest.raises(ApiError) as caught:
        client.get("/health")
    assert caught.value.status is None
    assert url in str(caught.value) and "hft ingest" in str(caught.value)


def test_a_connection_the_server_closed_is_reopened():
    # A server that drops every connection after one answer without saying so: the client
    # must notice on its next request and send it on a new connection.
    seen: list[int] = []

    class OneShot(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.command == "POST":
                self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.client_address[1])
            body = msgspec.json.encode({"n": len(seen)})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneShot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with IngestClient(f"http://127.0.0.1:{server.server_port}") as client:
            answers = []
            for _ in range(2):
                answers.append(client.get("/x").json()["n"])  # found stale, sent again
                time.sleep(0.05)  # lets the server's close arrive, as an idle timeout would
                answers.append(client.post("/x", {}).json()["n"])  # checked before it goes out
                time.sleep(0.05)
        assert answers == [1, 2, 3, 4]
        assert len(set(seen)) == 4  # four connections, one per request
    finally:
        server.shutdown()
        server.server_close()


def test_bad_url_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match=r"http\(s\)://host"):
        IngestClient("127.0.0.1:8002")
