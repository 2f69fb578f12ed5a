"""The layers hold: import-linter's contracts are kept, and importing the core changes nothing.

docs/layers.md says what each contract forbids and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import hft_pipeline

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _top_level_modules() -> set[str]:
    package = Path(hft_pipeline.__file__).parent
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    return {f"hft_pipeline.{name}" for name in names}


def test_import_contracts_are_kept() -> None:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the dev extra (make test does)"
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kept = [
        line for line in result.stdout.splitlines() if line.endswith(("KEPT", "ignored imports)"))
    ]
    assert len(kept) == len(_contracts()), result.stdout


def test_every_top_level_module_is_placed_in_the_layer_map() -> None:
    # Forbidden lists name modules one by one: a new top-level module must be added to them,
    # or store and analytics could import it unchecked.
    contracts = _contracts()
    modules = _top_level_modules()
    allowed_below = {"hft_pipeline.market", "hft_pipeline.store"}
    store = contracts["store-below-services"]
    assert set(store["forbidden_modules"]) == modules - allowed_below
    analytics = contracts["analytics-on-market-and-store"]
    assert set(analytics["forbidden_modules"]) == modules - allowed_below - {
        "hft_pipeline.analytics"
    }


def test_importing_the_core_changes_nothing_in_the_process() -> None:
    # vectorbt imports scikit-learn, which sets two OpenMP variables itself: compare against the
    # process after that import alone, so what is measured is our modules.
    script = """
import importlib, json, os, pkgutil, sys
import vectorbt, vectorbt._engine
third_party = dict(os.environ)
for name in ("hft_pipeline.market", "hft_pipeline.store", "hft_pipeline.analytics"):
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(info.name)
from numba.core import config
print(json.dumps({
    "changed": sorted(k for k in set(third_party) | set(os.environ)
                      if third_party.get(k) != os.environ.get(k)),
    "numba_cache_dir": config.CACHE_DIR,
    "backtest_loaded": "hft_pipeline.market.backtest" in sys.modules,
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"changed": [], "numba_cache_dir": "", "backtest_loaded": True}
