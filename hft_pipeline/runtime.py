"""Process start-up settings that must be in place before heavy imports (numba's cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["configure_numba_cache", "numba_cache_dir"]


def numba_cache_dir(home: Path | str) -> Path:
    """Where compiled numba kernels are kept for the project home `home`."""
    return Path(home).resolve() / "numba-cache"


def configure_numba_cache(home: Path | str | None = None) -> str:
    """Point `NUMBA_CACHE_DIR` at `<home>/numba-cache` unless it is set; return the directory.

    Call it first thing in a process's entry point: numba reads the variable once, when it is
    first imported (vectorbt and the live-candle kernel import it), and never again. `home`
    defaults to `HFT_HOME` (else `.hft`), the settings' home. An explicit `NUMBA_CACHE_DIR` wins.
    """
    if home is None:
        home = os.environ.get("HFT_HOME") or ".hft"
    return os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_cache_dir(home)))
