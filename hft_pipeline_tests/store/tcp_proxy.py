"""A loopback TCP proxy that tests cut and restore, to simulate a database outage.

    with TcpProxy.for_dsn(dsn) as proxy:
        store = PostgresStore(proxy.dsn(dsn))
        proxy.cut()        # every connection closed, new ones refused
        proxy.restore()    # accepting again on the same port

`cut_at(marker)` cuts when the client sends bytes containing `marker` (e.g. b"COMMIT"),
either dropping them (the server never sees them) or delivering them and swallowing the
server's reply (the server acted, the client never learns it): the two sides of a
connection lost around a commit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


def proxied_dsn(dsn: str, port: int, host: str = "127.0.0.1") -> str:
    """`dsn` with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class _Trigger:
    marker: bytes
    after: bytes | None
    deliver: bool
    fired: threading.Event
    seen_after: bool = False
    swallowing: _Pair | None = None


class _Pair:
    """One proxied connection: the client socket and its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forward 127.0.0.1:<port> to the upstream server until told to cut."""

    def __init__(
        self,
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5432,
        listen_host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.port = port
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self._trigger: _Trigger | None = None
        self.connections_accepted = 0

    @classmethod
    def for_dsn(cls, dsn: str) -> TcpProxy:
        """A proxy to the server `dsn` names (host and port taken from it)."""
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def dsn(self, dsn: str) -> str:
        """`dsn` pointed at this proxy."""
        return proxied_dsn(dsn, self.port, self.listen_host)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen (on the same port again after a cut) and forward new connections."""
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.listen_host, self.port))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()
        return self

    restore = start

    def cut(self) -> None:
        """Close every proxied connection and refuse new ones until `restore()`."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
            self._trigger = None
        if listener is not None:
            listener.close()
        for pair in pairs:
            pair.close()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut_at(
        self, marker: bytes, *, after: bytes | None = None, deliver: bool = False
    ) -> threading.Event:
        """Cut when a client sends `marker` (once `after` has been sent, if given).

        deliver=False drops the bytes carrying `marker`; deliver=True forwards them and cuts
        as soon as the server answers, without passing the answer on. The returned event is
        set when the cut has happened.
        """
        fired = threading.Event()
        with self._lock:
            self._trigger = _Trigger(marker, after, deliver, fired)
        return fired

    # -- forwarding -----------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                if self._listener is not listener:  # cut while we were connecting
                    pair.close()
                    return
                self._pairs.add(pair)
                self.connections_accepted += 1
            threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _pump(self, pair: _Pair, to_server: bool) -> None:
        src, dst = (pair.client, pair.upstream) if to_server else (pair.upstream, pair.client)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                action = self._inspect(pair, data, to_server)
                if action == "cut":
                    self.cut_now()
                    return
                if action == "deliver-then-wait":
                    dst.sendall(data)
                    continue
                if action == "swallow-and-cut":
                    self.cut_now()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                live = pair in self._pairs
                self._pairs.discard(pair)
            if live:
                pair.close()

    def _inspect(self, pair: _Pair, data: bytes, to_server: bool) -> str:
        with self._lock:
            trigger = self._trigger
            if trigger is None:
                return "forward"
            if not to_server:
                return "swallow-and-cut" if trigger.swallowing is pair else "forward"
            if trigger.after is not None and not trigger.seen_after:
                trigger.seen_after = trigger.after in data
                return "forward"
            if trigger.swallowing is None and trigger.marker in data:
                if trigger.deliver:
                    trigger.swallowing = pair
                    return "deliver-then-wait"
                return "cut"
            return "forward"

    def cut_now(self) -> None:
        """Cut immediately and mark the pending `cut_at` trigger as fired."""
        with self._lock:
            trigger = self._trigger
        # Set first: the client may see the closed socket before this thread runs again.
        if trigger is not None:
            trigger.fired.set()
        self.cut()
