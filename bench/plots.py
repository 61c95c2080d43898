"""PNG plots of a results table, drawn with matplotlib's Agg canvas (no display needed).

    overview.png                        every op, direction and dtype side by side: softlight's
                                        percent of the copy ceiling (median, worst and best
                                        shape; row ops) and its speedup over torch eager
                                        (geometric mean, worst and best shape; every op)
    gbps-<op>-<direction>-<dtype>.png   GB/s per provider against columns (the fixed-total
                                        sweep) and against rows (the rows sweep), with the
                                        p20-p80 band, the copy ceiling as a dashed line and
                                        the percent of it on the right-hand axis (row ops only)
    speedup-<stem>.png                  each provider's speedup over torch eager, per direction
    memory-<stem>.png                   peak memory per provider, per direction (log axis)
    time-<stem>.png                     median time per provider with its p20-p80 band, per
                                        direction (the memory-lean ops, whose point is memory
                                        at a known cost)

<stem> is <op>-<dtype>, or <op>-h<hidden>-<dtype> for a linear op (its table may hold several
hidden sizes). The x axis is the columns (the vocabulary). A row op's figure has a panel per
direction, on the fixed-total sweep (the most rows measured at each column count). A linear op's
has a panel per direction and token count: its grid holds every token count at every
vocabulary, and a provider that runs out of memory at the most tokens must still show where it
did run.

Nothing measured disappears without a mark. A result that was wrong or raised (out of memory,
say) has no time to draw; it is marked by a cross at the foot of its panel, at its shape, in its
provider's colour and named, and the provider's line breaks there. On a speedup plot, a shape where a provider ran but torch did not
has no ratio: a triangle at the top of the panel marks it. Each provider keeps one colour,
marker and line style in every plot, and softlight is drawn last, so no peer's line hides it.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from .spec import DIRECTIONS, DTYPES, LEAN_OPS, LINEAR_OPS, OPS
from .summary import OURS
from .units import time_unit

__all__ = ["OVERVIEW", "FAILED", "columns_sweep", "rows_sweep", "draw_all", "stem", "styles"]

OVERVIEW = "overview.png"
# Results that ran but have no time: they are marked, never dropped.
FAILED = ("wrong", "error")

# (colour, marker, line style) per provider: distinct in all three, so that lines lying on each
# other stay readable, also in grey print.
_STYLES = {
    OURS: ("tab:red", "o", "-"),
    "torch": ("tab:blue", "s", "--"),
    "torch.compile": ("tab:green", "^", "-."),
    "liger": ("tab:purple", "D", ":"),
    "quack": ("tab:orange", "v", (0, (6, 2))),
}
# For providers outside the built-ins (user plug-ins), in order of appearance.
_MORE_STYLES = [("tab:brown", "P", (0, (3, 1, 1, 1))), ("tab:pink", "X", (0, (1, 1))),
                ("tab:olive", "*", (0, (8, 2, 2, 2))), ("tab:cyan", "h", (0, (4, 4))),
                ("tab:gray", "p", (0, (2, 3)))]
_PEER_ORDER = ["torch", "torch.compile", "liger", "quack"]


def styles(providers) -> dict:
    """provider -> (colour, marker, line style), built-ins fixed, the others in the given order."""
    extra = [p for p in providers if p not in _STYLES]
    return {p: _STYLES.get(p) or _MORE_STYLES[extra.index(p) % len(_MORE_STYLES)] for p in providers}


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


def _plotted_providers(df) -> list[str]:
    """Providers with anything to draw (timed, or failed: marked), softlight first."""
    names = set(df.provider[df.status.isin(("ok",) + FAILED)])
    rest = sorted(names - {OURS} - set(_PEER_ORDER))
    return [OURS] * (OURS in names) + [p for p in _PEER_ORDER if p in names] + rest


def _draw_order(providers):
    """Peers first, softlight last: drawn on top, its line is never hidden."""
    return [p for p in providers if p != OURS] + [p for p in providers if p == OURS]


def _lines(ax, data, x, y, providers, style, scale=1.0, band=None, gaps=None):
    """One line per provider; `band` = (low column, high column) shades its p20-p80 spread.
    A provider's line breaks at the x of its rows in `gaps` (where it has no value: it failed),
    rather than bridging them as if it had run there."""
    for provider in _draw_order(providers):
        sub = data[data.provider == provider]
        if not len(sub):
            continue
        if gaps is not None:
            holes = sorted(set(gaps[gaps.provider == provider][x]) - set(sub[x]))
            sub = pd.concat([sub, pd.DataFrame({x: holes})], ignore_index=True)
        sub = sub.sort_values(x)
        colour, marker, linestyle = style[provider]
        ours = provider == OURS
        if band is not None:
            ax.fill_between(sub[x], sub[band[0]] * scale, sub[band[1]] * scale, color=colour, alpha=0.18,
                            linewidth=0, zorder=1.5 + ours)
        ax.plot(sub[x], sub[y] * scale, label=provider, color=colour, marker=marker, linestyle=linestyle,
                markersize=5.5 if ours else 6, markerfacecolor=colour if ours else "none",
                linewidth=2.2 if ours else 1.4, zorder=3 if ours else 2)


def _x_axis(ax, values):
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(v) for v in values))
    ax.set_xticks(ticks, [_size_label(v) for v in ticks], rotation=60 if len(ticks) > 6 else 0, fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="minor", bottom=False)
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.grid(True, alpha=0.3)


def _size_label(v):
    """1024 -> 1K, 131072 -> 128K; vocabulary sizes such as 50257 as they are."""
    v = int(v)
    return f"{v // 1024}K" if v >= 1024 and v % 1024 == 0 else str(v)


def _reason(status, note) -> str:
    """Why a result has no time, in two words: 'out of memory', else its status."""
    return "out of memory" if "OutOfMemory" in str(note) or "out of memory" in str(note) else status


def _mark(ax, rows, x, style, marker, y_axes, what, providers):
    """Marks at the foot (or top) of the panel, at each row's x, one level per provider, named."""
    for level, provider in enumerate(p for p in providers if p in set(rows.provider)):
        colour = style[provider][0]
        y = y_axes + (0.075 * level if y_axes < 0.5 else -0.075 * level)
        for row in rows[rows.provider == provider].itertuples():
            ax.plot([getattr(row, x)], [y], transform=ax.get_xaxis_transform(), marker=marker, color=colour,
                    markersize=8, markeredgewidth=2, linestyle="none", clip_on=False, zorder=4)
            right_edge = getattr(row, x) >= ax.get_xlim()[1] / 1.6
            ax.annotate(what(provider, row), (getattr(row, x), y), xycoords=ax.get_xaxis_transform(),
                        xytext=(-7 if right_edge else 7, 0), textcoords="offset points", fontsize=6.5,
                        color=colour, va="center", ha="right" if right_edge else "left", zorder=4)


def _mark_failed(ax, failed, x, providers, style):
    _mark(ax, failed, x, style, "x", 0.05, lambda provider, row: f"{provider}: {_reason(row.status, row.note)}", providers)


def _legend(fig, axes, failed_any=False, torch_failed_any=False):
    """One legend for the figure, below its panels (never over a line): softlight first, then
    the peers, the reference lines and what the marks mean."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    labels = sorted(entries, key=lambda label: label != OURS)
    handles = [entries[label] for label in labels]
    if failed_any:
        handles.append(Line2D([], [], color="black", marker="x", markeredgewidth=2, linestyle="none"))
        labels.append("failed: no time (wrong, error, out of memory)")
    if torch_failed_any:
        handles.append(Line2D([], [], color="black", marker="^", linestyle="none"))
        labels.append("ran where torch failed: no ratio")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=8)


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


def _with_gbps_spread(data):
    """GB/s at the p80 and p20 times: the band of a GB/s line."""
    data = data.copy()
    n_bytes = data["bytes"].astype("float64")
    data["gbps_low"] = n_bytes / data.ms_p80 / 1e6
    data["gbps_high"] = n_bytes / data.ms_p20 / 1e6
    return data


def _gbps_figure(group, providers, style, title, path):
    """`group`: one row op, direction and dtype, its timed and failed results."""
    by_cols, by_rows = columns_sweep(group), rows_sweep(group)
    panels = [("cols", by_cols, "columns (rows x columns fixed)")]
    if len(by_rows):
        panels.append(("rows", by_rows, f"rows (at {_size_label(by_rows.cols.iloc[0])} columns)"))
    fig = _figure(6 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ceiling = group.ceiling_gbps.median()
    failed_any = False
    for ax, (x, data, label) in zip(axes, panels):
        ok, failed = data[data.status == "ok"], data[data.status.isin(FAILED)]
        _lines(ax, _with_gbps_spread(ok), x, "gbps", providers, style, band=("gbps_low", "gbps_high"), gaps=failed)
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=f"copy ceiling {ceiling:.0f} GB/s")
        _x_axis(ax, data[x])
        ax.set_ylim(0, max(ceiling, ok.gbps.max() if len(ok) else 0) * 1.12)
        _mark_failed(ax, failed, x, providers, style)
        failed_any |= len(failed) > 0
        ax.set_xlabel(label)
        ax.set_ylabel("GB/s (minimum bytes / median time)")
        pct = ax.secondary_yaxis("right", functions=(lambda g: 100 * g / ceiling, lambda p: p * ceiling / 100))
        pct.set_ylabel("% of the copy ceiling")
    _legend(fig, axes, failed_any)
    fig.suptitle(title)
    return _save(fig, path)


def stem(op, dtype, hidden=0) -> str:
    """The part of a plot's file name after its kind: <op>-<dtype>, or <op>-h<hidden>-<dtype>."""
    return f"{op}-h{int(hidden)}-{dtype}" if op in LINEAR_OPS else f"{op}-{dtype}"


def _times_x(v, _):
    return f"{v:g}x"


# Ratio ticks that read at a glance, on a log axis.
_RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256, 512, 1024)


def _plain(v, _=None):
    """A tick label without exponents: 0.5, 20, 1,000, 10,000."""
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _log_axis(axis, lo, hi):
    """Ticks at 1, 2 and 5 times powers of ten within [lo, hi] (only the powers of ten if that
    makes too many, more steps if too few), labelled as plain numbers."""
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for steps in ((1, 2, 5), (1,), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        ticks = [m * 10.0**e for e in decades for m in steps if lo <= m * 10.0**e <= hi]
        if 2 <= len(ticks) <= 8:
            break
    else:  # many decades: every k-th power of ten
        ticks = [10.0**e for e in decades if lo <= 10.0**e <= hi] or [lo, hi]
        ticks = ticks[::math.ceil(len(ticks) / 8)]
    axis.set_ticks(ticks)
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(NullFormatter())


def _ratio_axis(axis, lo, hi):
    """Label a log axis of ratios spanning [lo, hi] as 0.5x, 1x, 2x, never as 2 x 10^0."""
    ticks = [t for t in _RATIO_TICKS if lo <= t <= hi]
    if len(ticks) > 8:
        ticks = ticks[::2] if 1 in ticks[::2] else ticks[1::2]
    axis.set_ticks(ticks)
    axis.set_major_formatter(FuncFormatter(_times_x))
    axis.set_minor_formatter(NullFormatter())


def _per_direction_figure(data, failed, providers, style, y, ylabel, title, path, scale=1.0, log=False,
                          band=None, reference_line=None, torch_failed=None):
    """Panels per direction (a row op), or per direction and token count (a linear op).

    `data` holds the points to draw, `failed` the results to mark with a cross, `torch_failed`
    (speedup plots) those that ran where torch did not, marked with a triangle at the top."""
    torch_failed = torch_failed if torch_failed is not None else data.iloc[0:0]
    every = pd.concat([data, failed, torch_failed])
    directions = [d for d in DIRECTIONS if d in set(every.direction)]
    linear = every.op.iloc[0] in LINEAR_OPS
    tokens = sorted(set(every.rows)) if linear else [None]
    fig = _figure(4.8 * len(directions), 3.9 * len(tokens))
    axes = fig.subplots(len(tokens), len(directions), squeeze=False)

    def panel(frame, direction, n):
        return frame[(frame.direction == direction) & ((frame.rows == n) if linear else True)]

    for row, n in enumerate(tokens):
        for ax, direction in zip(axes[row], directions):
            _lines(ax, panel(data, direction, n), "cols", y, providers, style, scale, band,
                   gaps=pd.concat([panel(failed, direction, n), panel(torch_failed, direction, n)]))
            if reference_line is not None:
                ax.axhline(reference_line, color="black", linestyle="--", linewidth=1)
            _x_axis(ax, panel(every, direction, n).cols)
            if log:
                ax.set_yscale("log")
                # Room at the foot and top for the marks.
                lo, hi = ax.get_ylim()
                ax.set_ylim(lo / 2.2, hi * 2.2)
                if reference_line is not None:  # a ratio
                    _ratio_axis(ax.yaxis, lo / 2.2, hi * 2.2)
                else:
                    _log_axis(ax.yaxis, lo / 2.2, hi * 2.2)
            else:
                ax.set_ylim(bottom=0)
            _mark_failed(ax, panel(failed, direction, n), "cols", providers, style)
            _mark(ax, panel(torch_failed, direction, n), "cols", style, "^", 0.95,
                  lambda provider, r: f"{provider} ran, torch: {r.torch_reason}", providers)
            ax.set_title(f"{direction}, {n} tokens" if linear else direction)
            ax.set_xlabel("vocabulary" if linear else "columns (rows x columns fixed)")
            ax.set_ylabel(ylabel)
    _legend(fig, axes.flat, len(failed) > 0, len(torch_failed) > 0)
    fig.suptitle(title)
    return _save(fig, path)


def _speedup_over_torch(group):
    """(ratios, failed, torch_failed) for the providers other than torch: the speedup (torch's
    median time / theirs) where both ran, their own failures, and the shapes where they ran
    but torch failed (with torch's reason), where no ratio exists."""
    at = ["direction", "rows", "cols"]
    torch_rows = group[group.provider == "torch"][at + ["status", "ms_p50", "note"]].rename(
        columns={"status": "torch_status", "ms_p50": "torch_ms", "note": "torch_note"})
    others = group[group.provider != "torch"].merge(torch_rows, on=at, how="left")
    ran = others.status == "ok"
    ratios = others[ran & (others.torch_status == "ok")]
    ratios = ratios.assign(speedup=ratios.torch_ms / ratios.ms_p50)
    torch_failed = others[ran & others.torch_status.isin(FAILED)]
    torch_failed = torch_failed.assign(torch_reason=[_reason(s, n) for s, n in
                                                     zip(torch_failed.torch_status, torch_failed.torch_note)])
    return ratios, others[others.status.isin(FAILED)], torch_failed


def _overview_rows(df):
    """Per op, direction and dtype (in the report's order) that softlight ran: its percent of the
    ceiling (median, worst, best) and its speedup over torch eager (geometric mean, worst, best),
    with the number of shapes where softlight failed, and where it ran and torch failed."""
    rows = []
    for op in OPS:
        for direction in DIRECTIONS:
            for dtype in DTYPES:
                group = df[(df.op == op) & (df.direction == direction) & (df.dtype == dtype)]
                ours = group[(group.provider == OURS) & (group.status == "ok")]
                ours_failed = int(((group.provider == OURS) & group.status.isin(FAILED)).sum())
                if ours.empty and not ours_failed:
                    continue
                pct = ours.pct_of_ceiling.dropna()
                ratios, _, torch_failed = _speedup_over_torch(group)
                speedup = ratios[ratios.provider == OURS].speedup
                rows.append(dict(label=f"{op} {direction} {dtype}", linear=op in LINEAR_OPS,
                                 pct=(pct.median(), pct.min(), pct.max()) if len(pct) else None,
                                 speedup=(float(np.exp(np.log(speedup).mean())), speedup.min(), speedup.max())
                                 if len(speedup) else None,
                                 torch_failed=int((torch_failed.provider == OURS).sum()), failed=ours_failed))
    return rows


def _overview_figure(df, device, path):
    rows = _overview_rows(df)
    if not rows:
        return None
    fig = _figure(13, 1.6 + 0.3 * len(rows))
    left, right = fig.subplots(1, 2, sharey=True)
    colour, marker, _ = _STYLES[OURS]
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows):
        if r["pct"]:
            median, worst, best = r["pct"]
            left.plot([worst, best], [y, y], color=colour, linewidth=1.5, alpha=0.6)
            left.plot([worst], [y], marker="|", color=colour, markersize=10, markeredgewidth=2)
            left.plot([median], [y], marker=marker, color=colour, markersize=6)
            # Right of the ceiling line: the notes form a column and cross no line.
            left.annotate(f"{median:.0f}% (worst {worst:.0f}%)", (max(best, 100), y), xytext=(6, 0),
                          textcoords="offset points", fontsize=7, va="center")
        elif r["linear"]:
            left.annotate("matmul-bound: no bytes model, no ceiling", (2, y), fontsize=7, va="center", color="gray")
        at = 1.0
        if r["speedup"]:
            mean, worst, best = r["speedup"]
            right.plot([worst, best], [y, y], color=colour, linewidth=1.5, alpha=0.6)
            right.plot([worst], [y], marker="|", color=colour, markersize=10, markeredgewidth=2)
            right.plot([mean], [y], marker=marker, color=colour, markersize=6)
            at = max(best, 1.0)
        note = [f"{mean:.2f}x (worst {worst:.2f}x)"] if r["speedup"] else ["no shape where both ran"]
        if r["failed"]:
            note.append(f"softlight failed on {r['failed']} shape{'s' * (r['failed'] > 1)}")
        if r["torch_failed"]:
            note.append(f"+ {r['torch_failed']} shape{'s' * (r['torch_failed'] > 1)} where torch failed")
        right.annotate(", ".join(note), (at, y), xytext=(8, 0), textcoords="offset points", fontsize=7, va="center")
    left.set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    most = max([r["pct"][2] for r in rows if r["pct"]] + [100])
    left.set_xlim(0, most * 1.35)
    left.set_xticks([0, 20, 40, 60, 80, 100])
    left.axvline(100, color="black", linestyle="--", linewidth=1)
    left.set_xlabel("softlight's % of the copy ceiling, row ops\n(dot: median over the shapes; bar: worst to best)")
    ends = [v for r in rows if r["speedup"] for v in r["speedup"][1:]] + [1.0]
    right.set_xscale("log", base=2)
    right.set_xlim(min(ends) / 1.5, max(ends) * 12)  # room on the right for the notes
    right.axvline(1, color="black", linestyle="--", linewidth=1)
    _ratio_axis(right.xaxis, *right.get_xlim())
    right.set_xlabel("softlight's speedup over torch eager, every op\n(dot: geometric mean; bar: worst to best shape)")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(rows) - 0.3)
    fig.suptitle(f"softlight at a glance — {device}")
    return _save(fig, path)


def draw_all(df: pd.DataFrame, folder) -> list[Path]:
    """Every plot of the table into `folder`; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = df[df.status.isin(("ok",) + FAILED)]
    providers = _plotted_providers(df)
    style = styles(providers)
    device = df.device.iloc[0]
    written = [p for p in [_overview_figure(df, device, folder / OVERVIEW)] if p is not None]
    for (op, direction, dtype), group in drawn[~drawn.op.isin(LINEAR_OPS)].groupby(["op", "direction", "dtype"]):
        written.append(_gbps_figure(group, providers, style, f"{op} {direction}, {dtype} — {device}",
                                    folder / f"gbps-{op}-{_slug(direction)}-{dtype}.png"))
    for (op, dtype, hidden), group in drawn.groupby(["op", "dtype", "hidden"]):
        name = stem(op, dtype, hidden)
        what = f"{op}" + (f" (hidden {hidden})" if hidden else "") + f", {dtype}"
        shown = group if op in LINEAR_OPS else pd.concat([columns_sweep(g) for _, g in group.groupby("direction")])
        ok, failed = shown[shown.status == "ok"], shown[shown.status.isin(FAILED)]
        ratios, ratio_failed, torch_failed = _speedup_over_torch(shown)
        if len(ratios) or len(torch_failed):
            written.append(_per_direction_figure(
                ratios, ratio_failed, [p for p in providers if p != "torch"], style, "speedup",
                "speedup over torch eager (x)", f"{what}: speedup over torch eager — {device}",
                folder / f"speedup-{name}.png", log=True, reference_line=1.0, torch_failed=torch_failed))
        memory = ok.dropna(subset=["peak_mem_bytes"])
        if len(memory):
            written.append(_per_direction_figure(
                memory.astype({"peak_mem_bytes": "float64"}), failed, providers, style, "peak_mem_bytes",
                "peak memory above inputs (MiB, log scale)", f"{what}: peak memory — {device}",
                folder / f"memory-{name}.png", scale=1 / 2**20, log=True))
        if op in LEAN_OPS and len(ok):
            unit, ms_per_unit = time_unit(ok.ms_p50.median())
            written.append(_per_direction_figure(
                ok, failed, providers, style, "ms_p50", f"median time ({unit}, log scale; band: p20-p80)",
                f"{what}: time per call — {device}", folder / f"time-{name}.png", scale=1 / ms_per_unit, log=True,
                band=("ms_p20", "ms_p80")))
    return written
