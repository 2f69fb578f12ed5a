"""The `hft` command: `hft ingest`, `hft import FILE`, `hft smoke [URL]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from hft_pipeline.runtime import configure_numba_cache
from hft_pipeline.settings import Settings, SettingsError

#: `hft up`'s default simulator history on a fresh store: two complete hourly partitions.
UP_HISTORY_S = 2 * 3600.0


def _settings(args: argparse.Namespace) -> Settings:
    symbols = None
    if getattr(args, "symbols", None):
        symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    return Settings.from_env(
        feed=getattr(args, "feed", None),
        symbols=symbols,
        seed=getattr(args, "seed", None),
        rate=getattr(args, "rate", None),
        sim_history_s=getattr(args, "history", None),
        store_url=getattr(args, "store", None),
        api_host=getattr(args, "host", None),
        api_port=getattr(args, "port", None),
        home=Path(args.home) if getattr(args, "home", None) else None,
        replay_file=getattr(args, "file", None),
        replay_speed=getattr(args, "speed", None),
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    from hft_pipeline.ingest.server import serve

    settings = _settings(args)
    if settings.feed == "replay" and not settings.replay_file:
        raise SettingsError("--feed replay needs --file PATH (or HFT_REPLAY_FILE)")
    return asyncio.run(serve(settings))


def cmd_import(args: argparse.Namespace) -> int:
    from hft_pipeline.ingest.importer import import_file

    settings = _settings(args)
    result = import_file(
        Path(args.path), settings, progress=not args.no_progress, strict=args.strict
    )
    print(result.summary())
    return 0 if result.ok else 1


def cmd_smoke(args: argparse.Namespace) -> int:
    from hft_pipeline.ingest.smoke import run_smoke

    report = run_smoke(args.url, collect_s=args.seconds)
    return 0 if report.failed == 0 and report.checks else 1


def cmd_up(args: argparse.Namespace) -> int:
    from hft_pipeline.launcher import UpConfig, run_up

    settings = _settings(args)
    extra = [] if args.rate is None else ["--rate", str(args.rate)]
    # A fresh system starts with history, so the first hourly candle partitions are complete
    # (and backtests have bars) within a minute instead of after the first hour.
    history = args.history if args.history is not None else settings.sim_history_s or UP_HISTORY_S
    extra += ["--history", str(history)]
    if args.symbols:
        extra += ["--symbols", args.symbols]
    config = UpConfig(
        home=settings.home.resolve(),
        api_host=settings.api_host,
        api_port=settings.api_port,
        dagster_port=args.dagster_port,
        dagster_home=Path(args.dagster_home).resolve() if args.dagster_home else None,
        store_url=args.store or "",
        ingest_args=extra,
    )
    return run_up(config)


def cmd_config(args: argparse.Namespace) -> int:
    from hft_pipeline.observability.redaction import redact_url
    from hft_pipeline.settings import DEFAULT, env_name, fields_by_group, reference_markdown

    if args.reference:
        print(reference_markdown(), end="")
        return 0
    settings = _settings(args)
    sources = settings.sources()
    groups = list(fields_by_group())
    rows = [
        (env_name(name), settings.display(name), sources.get(name, DEFAULT))
        for _, _, members in groups
        for name, _ in members
    ]
    var_w = max(len(r[0]) for r in rows)
    value_w = min(60, max(len(r[1]) for r in rows))
    for key, title, members in groups:
        print(f"[{key}] {title}")
        for name, _ in members:
            var, value, source = env_name(name), settings.display(name), sources.get(name, DEFAULT)
            print(f"  {var:<{var_w}}  {value or '-':<{value_w}}  {source}")
        if key == "store":
            print(f"  {'(store opened)':<{var_w}}  {redact_url(settings.resolved_store_url)}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="sqlite:///PATH or postgresql://... [HFT_STORE_URL]")
        p.add_argument("--home", help="state directory: tick log, SQLite file [HFT_HOME, ./.hft]")

    ingest = sub.add_parser("ingest", help="run the ingest service and its API")
    ingest.add_argument("--feed", choices=("simulator", "replay"), help="[HFT_FEED, simulator]")
    ingest.add_argument("--symbols", help="extra comma-separated symbols [HFT_SYMBOLS]")
    ingest.add_argument("--seed", type=int, help="simulator seed [HFT_SEED, 42]")
    ingest.add_argument("--rate", type=float, help="simulator ticks/s in total [HFT_RATE, 1000]")
    ingest.add_argument(
        "--history",
        type=float,
        help="simulator: seconds of history a symbol without stored ticks starts with "
        "[HFT_SIM_HISTORY_S, 0]",
    )
    ingest.add_argument("--file", help="file for --feed replay [HFT_REPLAY_FILE]")
    ingest.add_argument("--speed", type=float, help="replay speed, 0 = max [HFT_REPLAY_SPEED]")
    ingest.add_argument("--host", help="API host [HFT_API_HOST, 127.0.0.1]")
    ingest.add_argument("--port", type=int, help="API port [HFT_API_PORT, 8002]")
    common(ingest)
    ingest.set_defaults(func=cmd_ingest)

    imp = sub.add_parser(
        "import", help="import a CSV/Parquet tick file through the log into the store"
    )
    imp.add_argument("path", help="file with columns symbol, ts, price, volume[, bid, ask][, seq]")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument(
        "--strict",
        action="store_true",
        help="refuse the whole file at its first bad row (default: skip bad rows, count them)",
    )
    common(imp)
    imp.set_defaults(func=cmd_import)

    up = sub.add_parser("up", help="run the ingest service and the Dagster UI + daemon together")
    up.add_argument("--rate", type=float, help="simulator ticks/s in total [HFT_RATE, 1000]")
    up.add_argument("--symbols", help="extra comma-separated symbols [HFT_SYMBOLS]")
    up.add_argument(
        "--history",
        type=float,
        help=f"simulator history on a fresh store, seconds [HFT_SIM_HISTORY_S, {UP_HISTORY_S:g}]",
    )
    up.add_argument("--port", type=int, help="ingest API port [HFT_API_PORT, 8002]")
    up.add_argument("--dagster-port", type=int, default=3000, help="Dagster UI port [3000]")
    up.add_argument(
        "--dagster-home", help="Dagster instance directory [DAGSTER_HOME, HOME/dagster]"
    )
    common(up)
    up.set_defaults(func=cmd_up)

    config = sub.add_parser(
        "config", help="print the effective settings by group, secrets masked, and their source"
    )
    config.add_argument(
        "--reference",
        action="store_true",
        help="print every variable's type, default and meaning as Markdown (docs/configuration.md)",
    )
    common(config)
    config.set_defaults(func=cmd_config)

    smoke = sub.add_parser("smoke", help="end-to-end check of a running ingest API")
    smoke.add_argument("url", nargs="?", default="http://127.0.0.1:8002")
    smoke.add_argument("--seconds", type=float, default=5.0, help="how long to collect ticks")
    smoke.set_defaults(func=cmd_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any command imports numba (live candles, vectorbt): numba reads it only then.
    configure_numba_cache(getattr(args, "home", None))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from hft_pipeline.observability import redaction

    redaction.install()
    try:
        return args.func(args)
    except (SettingsError, OSError, RuntimeError, ValueError) as exc:
        print(f"hft {args.command}: error: {redaction.redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
