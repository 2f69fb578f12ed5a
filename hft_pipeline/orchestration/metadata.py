"""What the assets show in the Dagster UI: metadata of each report, markdown tables, PNG figures."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from dagster import MetadataValue

from hft_pipeline.market.strategies import get_strategy

if TYPE_CHECKING:
    from hft_pipeline.analytics.backtests import BacktestReport
    from hft_pipeline.analytics.candles import CandlesReport
    from hft_pipeline.analytics.comparison import ComparisonReport
    from hft_pipeline.analytics.indicators import IndicatorsReport
    from hft_pipeline.market.comparison import ComparisonResult

Metadata = dict[str, Any]


def candles_metadata(report: CandlesReport, seconds: float) -> Metadata:
    """Counts of a candles rebuild, with the corrections it made against stored and live candles."""
    return {
        "ticks_read": report.ticks_read,
        "symbols": len(report.symbols),
        "symbol_list": ", ".join(sorted(report.symbols))[:2000],
        **{f"candles_{tf}": n for tf, n in report.candles.items()},
        "candles_total": sum(report.candles.values()),
        # A re-run after late ticks: 1m candles that differ from the previous materialization.
        "late_tick_corrections_vs_stored": report.vs_stored.changed + report.vs_stored.added,
        "stored_1m_candles_compared": report.vs_stored.compared,
        # 1m candles the ingest API served from its live candles, where they differ.
        "late_tick_corrections_vs_live": report.vs_live.changed,
        "live_1m_candles_compared": report.vs_live.compared,
        "seconds": round(seconds, 3),
    }


def indicators_metadata(report: IndicatorsReport, names: list[str]) -> Metadata:
    """Per timeframe `{tf}_{count}`, the indicators and timeframes, and the cache hits."""
    metadata: Metadata = {
        f"{tf}_{key}": value
        for tf, counts in report.timeframes.items()
        for key, value in counts.items()
    }
    metadata["indicators"] = ", ".join(names)
    metadata["timeframes"] = ", ".join(report.timeframes)
    metadata["cache_hits"] = report.cache_hits
    return metadata


def backtests_metadata(report: BacktestReport, top: pd.Series | None, seconds: float) -> Metadata:
    """The stored run's key, size and window, and its single best run (`top`)."""
    run = report.run
    return {
        "run_key": run.run_key,
        "runs": len(report.metrics),
        "strategies": len(run.config["strategies"]),
        "symbols": report.symbols,
        "bars": report.bars,
        "window_start": pd.Timestamp(run.start_ns, tz="UTC").isoformat(),
        "window_end": pd.Timestamp(run.end_ns, tz="UTC").isoformat(),
        "trades_stored": len(report.trades),
        "best_sharpe": float(top["sharpe"]) if top is not None else float("nan"),
        "best_run": f"{top['strategy']} {top['symbol']} ({top['params']})"
        if top is not None
        else "none",
        "wall_seconds": round(seconds, 3),
    }


def comparison_metadata(report: ComparisonReport) -> Metadata:
    """The ranked table and the figures as markdown, and the top row."""
    best = report.result.best
    top = best.iloc[0]
    with tempfile.TemporaryDirectory() as tmp:
        images = png_markdown(render_figures(report.result, tmp))
    return {
        "run_key": report.run_key,
        "ranked": MetadataValue.md(comparison_markdown(best)),
        "figures": MetadataValue.md(images),
        "rows": len(best),
        "best": f"{top['strategy']} {top['symbol']} ({top['params']}): sharpe {top['sharpe']:.3f}",
    }


def comparison_markdown(ranked: pd.DataFrame, top: int = 40) -> str:
    """The ranked best runs as a markdown table (first `top` rows)."""
    columns = ["rank", "strategy", "symbol", "params", "sharpe", "total_return", "max_drawdown",
               "win_rate", "n_trades"]  # fmt: skip
    shown = ranked[columns].head(top).copy()
    for column in ("sharpe", "total_return", "max_drawdown", "win_rate"):
        shown[column] = shown[column].map(lambda v: "nan" if pd.isna(v) else f"{v:.3f}")
    return shown.to_markdown(index=False)


def png_markdown(paths: dict[str, Path]) -> str:
    """PNG files as markdown images with data URIs, each under its name in bold."""
    # The Dagster UI renders markdown images with data URIs; a path value would show as text.
    parts = []
    for name, path in paths.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"**{name}**\n\n![{name}](data:image/png;base64,{data})")
    return "\n\n".join(parts)


def render_figures(result: ComparisonResult, out_dir: Path | str) -> dict[str, Path]:
    """Write equity, underwater and per-strategy heatmap PNGs; return {figure name: path}."""
    import matplotlib

    matplotlib.use("Agg")  # headless: Dagster workers have no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    growth = result.equity / result.init_cash
    by_strategy = growth.T.groupby(level="strategy", sort=False).mean().T
    n_symbols = growth.columns.get_level_values("symbol").nunique()
    title_suffix = f" (mean of best runs over {n_symbols} symbols)" if n_symbols > 1 else ""

    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for name in by_strategy.columns:
        ax.plot(by_strategy.index, by_strategy[name], label=name, linewidth=1.4)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set(title="Equity growth of best parameters" + title_suffix, ylabel="equity / initial cash")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    paths["equity_curves"] = out / "equity_curves.png"
    fig.savefig(paths["equity_curves"])
    plt.close(fig)

    underwater = by_strategy / by_strategy.cummax() - 1.0
    fig, ax = plt.subplots(figsize=(10, 4), dpi=110)
    for name in underwater.columns:
        ax.fill_between(underwater.index, underwater[name] * 100, 0, alpha=0.35, label=name)
    ax.set(title="Underwater (drawdown from peak)" + title_suffix, ylabel="drawdown [%]")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    paths["drawdown"] = out / "drawdown.png"
    fig.savefig(paths["drawdown"])
    plt.close(fig)

    for name, table in result.runs.items():
        params = list(get_strategy(name).defaults)
        varying = [p for p in params if table[p].nunique() > 1] or params[:1]
        rows, cols = varying[0], (varying[1] if len(varying) > 1 else None)
        # Mean over symbols (and over any further parameters): how robust each cell is.
        heat = table.groupby([rows, cols] if cols else [rows])[result.rank_by].mean()
        grid = heat.unstack(cols) if cols else heat.to_frame(result.rank_by)
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdYlGn", aspect="auto")
        ax.set_xticks(
            range(grid.shape[1]),
            [f"{c:g}" if isinstance(c, float) else str(c) for c in grid.columns],
        )
        ax.set_yticks(range(grid.shape[0]), [f"{r:g}" for r in grid.index])
        ax.set(xlabel=cols or "", ylabel=rows, title=f"{name}: mean {result.rank_by} over symbols")
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            ax.text(
                j, i, "nan" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8
            )
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        paths[f"heatmap_{name}"] = out / f"heatmap_{name}.png"
        fig.savefig(paths[f"heatmap_{name}"])
        plt.close(fig)
    return paths


__all__ = [
    "backtests_metadata",
    "candles_metadata",
    "comparison_markdown",
    "comparison_metadata",
    "indicators_metadata",
    "png_markdown",
    "render_figures",
]
