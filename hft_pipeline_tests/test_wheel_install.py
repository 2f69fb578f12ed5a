"""`pip install .` (not editable) works: the wheel carries its migrations and `hft ingest` stores ticks.

The wheel is built from a copy of the working tree (what a clone holds, untouched by the build)
and installed without dependencies into a fresh virtual environment; the dependencies come from
this environment's site-packages on PYTHONPATH, which loads no `.pth` file, so the editable
install of the checkout stays out of the way (the test asserts which copy ran).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from hft_pipeline_tests.ingest.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
#: What `pip install .` reads from a clone.
SOURCES = ("pyproject.toml", "README.md", "sql", "hft_pipeline", "hft_pipeline_tests")


def _expected_versions(dialect: str) -> list[int]:
    # Read from the repository's top-level sql/, where the migrations are written.
    return sorted(int(p.name.split("_", 1)[0]) for p in (ROOT / "sql" / dialect).glob("*.sql"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(bin directory of a fresh venv holding the built wheel, environment to run it with)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("hft_pipeline-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", str(wheel)])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFT_", "NUMBA_CACHE_DIR"))}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    yield venv / "bin", env


def test_the_package_sql_directory_is_a_link_to_the_top_level_sql() -> None:
    # One copy of each migration: the package's view is the repository's sql/, never a copy.
    link = ROOT / "hft_pipeline" / "store" / "sql"
    assert link.is_symlink() and os.readlink(link) == "../../sql"
    assert link.resolve() == (ROOT / "sql").resolve()


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_and_reads_its_own_migrations(installed) -> None:
    bin_dir, env = installed
    probe = _run(
        [str(bin_dir / "python"), "-c",
         "import json, hft_pipeline; from hft_pipeline.store import migrations as m; "
         "print(json.dumps({'package': hft_pipeline.__file__, 'sql': str(m.SQL_ROOT), "
         "'sqlite': [x.version for x in m.load_migrations('sqlite')], "
         "'postgres': [x.version for x in m.load_migrations('postgres')]}))"],
        env=env, cwd=bin_dir.parent,
    )  # fmt: skip
    got = json.loads(probe.stdout)
    site = bin_dir.parent / "lib"
    assert Path(got["package"]).is_relative_to(site), got
    assert Path(got["sql"]).is_relative_to(site) and not Path(got["sql"]).is_symlink(), got
    assert got["sqlite"] == _expected_versions("sqlite")
    assert got["postgres"] == _expected_versions("postgres")


def _ingest_for_a_while(bin_dir: Path, env: dict[str, str], home: Path, store_url: str) -> dict:
    """Run the installed `hft ingest` until it has persisted ticks; its last /status."""
    port = free_port()
    proc = subprocess.Popen(
        [str(bin_dir / "hft"), "ingest", "--home", str(home), "--store", store_url,
         "--port", str(port), "--rate", "200", "--symbols", "R_100,PETR4"],
        env=env, cwd=home.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    status: dict = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/status", timeout=2).json()
            except requests.RequestException:
                status = {}
            if status.get("persistence", {}).get("persisted_ticks", 0) >= 100:
                break
            time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert status.get("persistence", {}).get("persisted_ticks", 0) >= 100, (status, out)
    return status


@pytest.mark.slow
def test_installed_hft_ingest_migrates_a_new_sqlite_store_and_stores_ticks(
    installed, tmp_path: Path
) -> None:
    bin_dir, env = installed
    db = tmp_path / "store" / "hft.sqlite3"
    status = _ingest_for_a_while(bin_dir, env, tmp_path / "home", f"sqlite:///{db}")
    conn = sqlite3.connect(db)
    try:
        versions = [r[0] for r in conn.execute("select version from schema_migrations order by 1")]
        (stored,) = conn.execute("select count(*) from ticks").fetchone()
    finally:
        conn.close()
    assert versions == _expected_versions("sqlite")
    assert stored >= status["persistence"]["persisted_ticks"] >= 100


@pytest.mark.slow
def test_installed_hft_ingest_migrates_a_new_postgres_database_and_stores_ticks(
    installed, tmp_path: Path, pg_dsn: str
) -> None:
    bin_dir, env = installed
    status = _ingest_for_a_while(bin_dir, env, tmp_path / "home", pg_dsn)  # a new database
    with psycopg.connect(pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("select version from schema_migrations order by 1")]
        (stored,) = conn.execute("select count(*) from ticks").fetchone()
    assert versions == _expected_versions("postgres")
    assert stored >= status["persistence"]["persisted_ticks"] >= 100
