"""Process start-up settings that must be in place before heavy imports (numba's cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

from hft_pipeline.settings import Settings, SettingsError

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
    try:
        settings = Settings.from_env()
    except SettingsError:
        # Another variable is wrong: the command's own settings read reports it by name.
        settings = Settings()
    if settings.numba_cache_dir is not None:
        return str(settings.numba_cache_dir)
    directory = str(numba_cache_dir(settings.home if home is None else home))
    os.environ["NUMBA_CACHE_DIR"] = directory  # numba reads its own variable, once
    return directory
