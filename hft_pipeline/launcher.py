"""`hft up`: the ingest service and `dagster dev` side by side, stopped together by one Ctrl-C."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hft_pipeline.settings import Settings, environment

log = logging.getLogger(__name__)

#: Exit statuses that mean "stopped because we asked it to".
_CLEAN_EXITS = {0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


@dataclass(frozen=True, slots=True)
class UpConfig:
    """Where everything lives and listens; defaults are the zero-configuration quick start."""

    home: Path
    api_host: str = "127.0.0.1"
    api_port: int = 8002
    dagster_host: str = "127.0.0.1"
    dagster_port: int = 3000
    dagster_home: Path | None = None  # None: $DAGSTER_HOME, else <home>/dagster
    project_dir: Path | None = None  # holds workspace.yaml and dagster.yaml; None: found
    store_url: str = ""
    ingest_args: Sequence[str] = field(default_factory=tuple)
    start_timeout_s: float = 60.0
    stop_deadline_s: float = 30.0


class LauncherError(RuntimeError):
    """`hft up` cannot start: a missing file, a port in use, a child that died on start."""


def find_project_dir(start: Path | None = None) -> Path:
    """The directory with workspace.yaml: the current one, or the checkout this package runs from."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parents[1]]
    for path in candidates:
        if (path / "workspace.yaml").is_file() and (path / "dagster.yaml").is_file():
            return path.resolve()
    raise LauncherError(
        "no workspace.yaml + dagster.yaml found in the current directory or next to the "
        "hft_pipeline package; run `hft up` from the repository root"
    )


def prepare_dagster_home(dagster_home: Path, project_dir: Path) -> Path:
    """Create DAGSTER_HOME and link the project's dagster.yaml into it unless it has its own."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    source = (project_dir / "dagster.yaml").resolve()
    if target.is_symlink() and target.resolve() != source:
        target.unlink()  # a link from an older checkout: follow the current one
    if not target.exists() and not target.is_symlink():
        target.symlink_to(source)
    return dagster_home


def child_env(config: UpConfig, dagster_home: Path) -> dict[str, str]:
    """The environment both children share, so they agree on home, store and API address."""
    env = environment()
    env["HFT_HOME"] = str(config.home)
    env["HFT_API_HOST"] = config.api_host
    env["HFT_API_PORT"] = str(config.api_port)
    env["DAGSTER_HOME"] = str(dagster_home)
    env["HFT_DAGSTER_UI_URL"] = f"http://{config.dagster_host}:{config.dagster_port}"
    if config.store_url:
        env["HFT_STORE_URL"] = config.store_url
    env.setdefault("NUMBA_CACHE_DIR", str(config.home / "numba-cache"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    # Own process group: a terminal's Ctrl-C reaches only us, and we decide the order of the stop;
    # a signal to the group also reaches the grandchildren (dagster dev's webserver and daemon).
    return subprocess.Popen(list(argv), env=dict(env), cwd=cwd, process_group=0)


def _http_ok(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 500
    except OSError:
        return False
    finally:
        conn.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class Launcher:
    """Starts the children, forwards SIGINT/SIGTERM, waits, kills stragglers after a deadline."""

    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.project_dir = config.project_dir or find_project_dir()
        dagster_home = (
            config.dagster_home or Settings.from_env().dagster_home or config.home / "dagster"
        )
        self.dagster_home = dagster_home.resolve()
        self.children: dict[str, subprocess.Popen] = {}
        self.stop_signal: int | None = None

    def ingest_argv(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            "hft_pipeline.cli",
            "ingest",
            "--home",
            str(c.home),
            "--host",
            c.api_host,
            "--port",
            str(c.api_port),
            *c.ingest_args,
        ]

    def dagster_argv(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(self.project_dir / "workspace.yaml"),
            "--host",
            c.dagster_host,
            "--port",
            str(c.dagster_port),
        ]

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> int:
        """Run until a signal or a child's exit; return 0 after a requested, clean stop."""
        c = self.config
        c.home.mkdir(parents=True, exist_ok=True)
        prepare_dagster_home(self.dagster_home, self.project_dir)
        env = child_env(c, self.dagster_home)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run(env)
        finally:
            self._stop_all(self.stop_signal or signal.SIGTERM)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, env: Mapping[str, str]) -> int:
        c = self.config
        self.children["ingest"] = _spawn(self.ingest_argv(), env, self.project_dir)
        # Dagster starts once the ingest API answers (healthy or not: a store that is down at
        # start is the service's to wait for, and /health says so).
        deadline = time.monotonic() + c.start_timeout_s
        while not _http_ok(c.api_host, c.api_port, "/test"):
            if self.stop_signal is not None:
                return 0
            code = self.children["ingest"].poll()
            if code is not None:
                log.error("hft ingest exited with %d during start", code)
                return code or 1
            if time.monotonic() > deadline:
                log.error("hft ingest did not answer /test within %.0fs", c.start_timeout_s)
                return 1
            time.sleep(0.2)
        self.children["dagster"] = _spawn(self.dagster_argv(), env, self.project_dir)
        print(
            f"\n  ingest API  http://{c.api_host}:{c.api_port}   (HFT_HOME={c.home})\n"
            f"  Dagster UI  http://{c.dagster_host}:{c.dagster_port}   "
            f"(DAGSTER_HOME={self.dagster_home})\n  Ctrl-C stops both.\n",
            flush=True,
        )
        while self.stop_signal is None:
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    log.error("%s exited unexpectedly with %d; stopping the rest", name, code)
                    return code or 1
            time.sleep(0.2)
        return 0

    def _stop_all(self, sig: int) -> int:
        """Signal every child group (dagster first: its runs may still read the store), then wait."""
        order = [n for n in ("dagster", "ingest") if n in self.children]
        for name in order:
            proc = self.children[name]
            if proc.poll() is None:
                _signal_group(proc.pid, sig)
        deadline = time.monotonic() + self.config.stop_deadline_s
        stragglers = 0
        for name in order:
            proc = self.children[name]
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s still running after %.0fs: killing it", name, self.config.stop_deadline_s
                )
                stragglers += 1
            # Grandchildren left behind in the group (a code server, a run worker) go too.
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self.children_exit = {n: p.returncode for n, p in self.children.items()}
        return stragglers


def run_up(config: UpConfig) -> int:
    """`hft up`: 0 after a Ctrl-C (or SIGTERM) stopped everything cleanly, non-zero otherwise."""
    launcher = Launcher(config)
    code = launcher.run()
    exits = getattr(launcher, "children_exit", {})
    if code == 0 and launcher.stop_signal is not None:
        unclean = {n: c for n, c in exits.items() if c not in _CLEAN_EXITS}
        if unclean:
            log.warning("children exited uncleanly: %s", unclean)
            return 1
    return code
