"""`hft import FILE`: a CSV/Parquet tick file through the same validate -> log -> store path."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.ingest.feeds.replay import count_rows, read_tick_file
from hft_pipeline.ingest.server import lock_home
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.settings import Settings


@dataclass(slots=True)
class ImportResult:
    path: Path
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    persisted: int = 0
    pending: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.pending == 0

    def summary(self) -> str:
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{k}={v}" for k, v in self.rejected.items() if v) or "none"
        rate = self.rows / self.seconds if self.seconds else 0.0
        text = (
            f"{self.path}: {self.rows:,} rows read, {self.accepted:,} accepted, "
            f"{self.duplicates:,} duplicates, {rejected:,} rejected ({reasons}), "
            f"{self.persisted:,} persisted in {self.seconds:.1f}s ({rate:,.0f} rows/s)"
        )
        if self.pending:
            text += (
                f"; {self.pending:,} ticks are still only in the import log and will be "
                "persisted when the same import is run again"
            )
        return text


def import_file(path: Path, settings: Settings, progress: bool = True) -> ImportResult:
    """Import `path` into the store of `settings`; ticks already stored (same symbol, seq) are skipped.

    The import has its own tick log under HFT_HOME/imports/<file name>, so it can run next to
    a live ingest service; the log is deleted once every tick is persisted. An interrupted
    import resumes its backlog when run again.
    """
    started = time.perf_counter()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    home = settings.home / "imports" / path.name
    import_settings = settings.with_(home=home, store_url=settings.resolved_store_url)
    lock = lock_home(home)
    service = IngestService(import_settings, live=False)
    result = ImportResult(path)
    try:
        service.open()
        assert service.store is not None
        resume = {s: ResumePoint(q, 0, 0.0) for s, q in service.store.last_seqs().items()}
        total = count_rows(path)
        with tqdm(
            total=total, unit="tick", unit_scale=True, desc="import", disable=not progress
        ) as bar:
            for batch in read_tick_file(path, resume=resume):
                service.ingest(batch)
                result.rows += len(batch)
                bar.update(len(batch))
        with tqdm(
            total=service.pending_ticks,
            unit="tick",
            unit_scale=True,
            desc="persist",
            disable=not progress,
        ) as bar:
            done = 0
            while service.pending_ticks > 0 and service.persister is not None:
                persisted = service.persister.persisted_ticks
                bar.update(persisted - done)
                done = persisted
                if not service.persister.store_up:
                    bar.set_postfix_str(
                        f"store unavailable, retrying: {service.persister.last_error}"
                    )
                time.sleep(0.05)
            bar.update(service.persister.persisted_ticks - done)
    finally:
        service.close()
        result.accepted = service.counters.accepted
        result.duplicates = service.counters.duplicates
        result.rejected = {k: v for k, v in service.validator.rejected.items() if v}
        result.persisted = service.persister.persisted_ticks if service.persister else 0
        result.pending = service.pending_ticks
        result.seconds = time.perf_counter() - started
        lock.close()
    if result.pending == 0:
        shutil.rmtree(home, ignore_errors=True)
    return result
