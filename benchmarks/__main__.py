"""Run benchmarks, print one table, write JSON and refresh benchmarks/RESULTS.md.

Each module in MODULES exposes `run(quick: bool) -> list[dict]` rows (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from hft_pipeline.runtime import configure_numba_cache

HERE = Path(__file__).parent
MODULES = (
    "ingest_core",
    "ingest_e2e",
    "latency",
    "buffers",
    "api",
    "candles",
    "ticklog",
    "store_copy",
    "importer",
    "simulator",
    "analytics",
    "dagster",
)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    head = [
        "benchmark",
        "metric",
        "value",
        "unit",
        "baseline",
        "baseline value",
        "ratio",
        "target",
        "met",
    ]
    keys = [
        "benchmark",
        "metric",
        "value",
        "unit",
        "baseline",
        "baseline_value",
        "ratio",
        "target",
        "met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def machine() -> str:
    import psutil

    mem = psutil.virtual_memory().total / 1024**3
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def write_results(rows: list[dict], stamp: str) -> None:
    """Merge `rows` into benchmarks/results.json (by benchmark) and render RESULTS.md from it."""
    store = HERE / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {"benchmarks": {}}
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        saved["benchmarks"][name] = {
            "date": stamp,
            "machine": machine(),
            "rows": [r for r in rows if r["benchmark"] == name],
        }
    store.write_text(json.dumps(saved, indent=2, default=_plain) + "\n")
    order = {name: i for i, name in enumerate(MODULES)}
    sections = []
    for name, entry in sorted(saved["benchmarks"].items(), key=lambda kv: order.get(kv[0], 99)):
        sections.append(
            f"## {name}\n\nMeasured {entry['date']} on {entry['machine']}.\n\n{table(entry['rows'])}\n"
        )
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\n"
        "Produced by `make bench` (`.venv/bin/python -m benchmarks [NAME ...]`); each section is\n"
        "the latest full run of that benchmark. Ratios compare against the baseline named in the\n"
        "same row, measured in the same run. `met` = NO marks a target missed (see the notes).\n\n"
        + "\n".join(sections)
        + (notes.read_text() if (notes := HERE / "NOTES.md").exists() else "")
    )


def _plain(value):
    """JSON for the numpy scalars a row may carry (np.bool_, np.float64, ...)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"subset of: {', '.join(MODULES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute each")
    parser.add_argument(
        "--json", default=str(HERE / "out" / "results.json"), help="JSON output path"
    )
    parser.add_argument("--no-results-md", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    names = args.names or list(MODULES)
    # Before a benchmark module imports numba, which reads it only then; children inherit it.
    configure_numba_cache()
    unknown = set(names) - set(MODULES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rows: list[dict] = []
    failures: list[str] = []
    for name in names:
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            got = module.run(quick=args.quick)
        except Exception:  # noqa: BLE001 - report and go on with the others
            failures.append(name)
            traceback.print_exc()
            continue
        rows.extend(got)
        print(table(got), f"\n({time.perf_counter() - started:.1f}s)\n", flush=True)
    print(table(rows))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"date": stamp, "machine": machine(), "quick": args.quick, "rows": rows},
            indent=2,
            default=_plain,
        )
    )
    print(f"\nJSON written to {out}")
    if not args.no_results_md and not args.quick and rows:
        write_results(rows, stamp)
        print(f"{HERE / 'RESULTS.md'} updated")
    if failures:
        print(f"benchmarks that failed to run: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
