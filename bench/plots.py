"""PNG plots of a results table, drawn with matplotlib's Agg canvas (no display needed).

    gbps-<op>-<direction>-<dtype>.png   GB/s per provider against columns (the fixed-total
                                        sweep) and against rows (the rows sweep), with the
                                        copy ceiling as a dashed line (row ops only)
    speedup-<stem>.png                  each provider's speedup over torch eager, per direction
    memory-<stem>.png                   peak memory per provider, per direction
    time-<stem>.png                     median time per provider, per direction (the
                                        memory-lean ops, whose point is memory at a known cost)

<stem> is <op>-<dtype>, or <op>-h<hidden>-<dtype> for a linear op (its table may hold several
hidden sizes). The x axis is the columns (the vocabulary). A row op's figure has a panel per
direction, on the fixed-total sweep (the most rows measured at each column count). A linear op's
has a panel per direction and token count: its grid holds every token count at every
vocabulary, and a provider that runs out of memory at the most tokens must still show where it
did run.
"""

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .spec import DIRECTIONS, LEAN_OPS, LINEAR_OPS
from .summary import OURS, peers, timed

__all__ = ["columns_sweep", "rows_sweep", "draw_all", "stem"]

_COLORS = {OURS: "tab:red", "torch": "tab:blue", "torch.compile": "tab:green", "liger": "tab:purple", "quack": "tab:orange"}


def columns_sweep(group: pd.DataFrame) -> pd.DataFrame:
    """Per column count, the shape with the most rows: the fixed-total sweep of the grid."""
    most_rows = group.groupby("cols").rows.transform("max")
    return group[group.rows == most_rows]


def rows_sweep(group: pd.DataFrame) -> pd.DataFrame:
    """The shapes of the column count measured at the most row counts (empty if fewer than 3)."""
    if group.empty:
        return group
    counts = group.groupby("cols").rows.nunique()
    if counts.max() < 3:
        return group.iloc[0:0]
    return group[group.cols == counts.idxmax()]


def _providers(df):
    return [OURS] * (OURS in set(timed(df).provider)) + peers(df)


def _lines(ax, data, x, y, providers, scale=1.0):
    for provider in providers:
        sub = data[data.provider == provider].sort_values(x)
        if len(sub):
            ax.plot(sub[x], sub[y] * scale, marker="o", markersize=3, label=provider,
                    color=_COLORS.get(provider), linewidth=2.2 if provider == OURS else 1.2)
    ax.set_xscale("log", base=2)
    ticks = sorted(set(data[x]))
    ax.set_xticks(ticks, [_size_label(v) for v in ticks], rotation=60 if len(ticks) > 6 else 0, fontsize=7)
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def _size_label(v):
    """1024 -> 1K, 131072 -> 128K; vocabulary sizes such as 50257 as they are."""
    v = int(v)
    return f"{v // 1024}K" if v >= 1024 and v % 1024 == 0 else str(v)


def _figure(width, height):
    """A figure on the Agg canvas of its own: no pyplot, no global state, no display."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    fig.savefig(path, dpi=90, metadata={"Software": None})
    return path


def _slug(direction):
    return direction.replace("+", "-")


def _gbps_figure(group, providers, title, path):
    by_cols, by_rows = columns_sweep(group), rows_sweep(group)
    panels = [("cols", by_cols, "columns (rows x columns fixed)")]
    if len(by_rows):
        panels.append(("rows", by_rows, f"rows (at {int(by_rows.cols.iloc[0])} columns)"))
    fig = _figure(5.5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ceiling = group.ceiling_gbps.median()
    for ax, (x, data, label) in zip(axes, panels):
        _lines(ax, data, x, "gbps", providers)
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=f"copy ceiling {ceiling:.0f}")
        ax.set_xlabel(label)
        ax.set_ylabel("GB/s (minimum bytes / median time)")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def stem(op, dtype, hidden=0) -> str:
    """The part of a plot's file name after its kind: <op>-<dtype>, or <op>-h<hidden>-<dtype>."""
    return f"{op}-h{int(hidden)}-{dtype}" if op in LINEAR_OPS else f"{op}-{dtype}"


def _per_direction_figure(data, providers, y, ylabel, title, path, scale=1.0, reference_line=None):
    """Panels per direction (a row op), or per direction and token count (a linear op)."""
    directions = [d for d in DIRECTIONS if d in set(data.direction)]
    linear = data.op.iloc[0] in LINEAR_OPS
    tokens = sorted(set(data.rows)) if linear else [None]
    fig = _figure(4.5 * len(directions), 3.8 * len(tokens))
    axes = fig.subplots(len(tokens), len(directions), squeeze=False)
    for row, n in enumerate(tokens):
        for ax, direction in zip(axes[row], directions):
            panel = data[(data.direction == direction) & ((data.rows == n) if linear else True)]
            _lines(ax, panel, "cols", y, providers, scale)
            if reference_line is not None:
                ax.axhline(reference_line, color="black", linestyle="--", linewidth=1)
            else:
                ax.set_ylim(bottom=0)
            ax.set_title(f"{direction}, {n} tokens" if linear else direction)
            ax.set_xlabel("vocabulary" if linear else "columns (rows x columns fixed)")
            ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _speedup_over_torch(group):
    torch_ms = group[group.provider == "torch"].set_index(["direction", "rows", "cols"]).ms_p50
    others = group[group.provider != "torch"].copy()
    others["speedup"] = torch_ms.reindex(pd.MultiIndex.from_frame(others[["direction", "rows", "cols"]])).values / others.ms_p50
    return others.dropna(subset=["speedup"])


def draw_all(df: pd.DataFrame, folder) -> list[Path]:
    """Every plot of the table into `folder`; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ok = timed(df)
    providers = _providers(df)
    device = df.device.iloc[0]
    written = []
    for (op, direction, dtype), group in ok[~ok.op.isin(LINEAR_OPS)].groupby(["op", "direction", "dtype"]):
        written.append(_gbps_figure(group, providers, f"{op} {direction}, {dtype} — {device}",
                                    folder / f"gbps-{op}-{_slug(direction)}-{dtype}.png"))
    for (op, dtype, hidden), group in ok.groupby(["op", "dtype", "hidden"]):
        name = stem(op, dtype, hidden)
        what = f"{op}" + (f" (hidden {hidden})" if hidden else "") + f", {dtype}"
        shown = group if op in LINEAR_OPS else pd.concat([columns_sweep(g) for _, g in group.groupby("direction")])
        speedup = _speedup_over_torch(shown)
        if len(speedup):
            written.append(_per_direction_figure(
                speedup, [p for p in providers if p != "torch"], "speedup", "speedup over torch eager (x)",
                f"{what}: speedup over torch eager — {device}", folder / f"speedup-{name}.png",
                reference_line=1.0))
        memory = shown.dropna(subset=["peak_mem_bytes"])
        if len(memory):
            written.append(_per_direction_figure(
                memory.astype({"peak_mem_bytes": "float64"}), providers, "peak_mem_bytes",
                "peak memory above inputs (MiB)", f"{what}: peak memory — {device}",
                folder / f"memory-{name}.png", scale=1 / 2**20))
        if op in LEAN_OPS:
            written.append(_per_direction_figure(
                shown, providers, "ms_p50", "median time (ms)", f"{what}: time per call — {device}",
                folder / f"time-{name}.png"))
    return written
