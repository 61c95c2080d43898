"""The headline of a results table, per op, direction and dtype: the best provider, softlight's
percent of the copy ceiling, its speedup over each peer, and where it loses.

Speedup over a peer = the peer's median time / softlight's, on the shapes where both were
checked and timed; summarised by the geometric mean over those shapes (ratios average
multiplicatively). Above 1 softlight is faster.

The memory-lean losses (spec.LEAN_OPS) have a headline of their own, led by memory: memory
ratio over a peer = the peer's peak memory / softlight's, per shape where both were timed,
summarised the same way (above 1 softlight needs less), beside the speedup and softlight's rate
(TFLOP/s for a linear op, GB/s for a row op). The row-op headline leaves the linear ops out:
they have no bytes, so no GB/s and no percent of the ceiling.
"""

import math

import numpy as np
import pandas as pd

from .spec import DIRECTIONS, DTYPES, LEAN_OPS, LINEAR_OPS, OPS, ROW_OPS

__all__ = ["OURS", "SHAPE", "peers", "timed", "headline", "losses", "lean_headline", "lean_losses",
           "peers_not_timed", "rate", "format_text", "shape_label", "best_label", "pct_label"]

OURS = "softlight"
_PEER_ORDER = ["torch", "torch.compile", "liger", "quack"]
GROUP = ["op", "direction", "dtype"]
SHAPE = ["rows", "cols", "hidden"]


def timed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.status == "ok"]


def peers(df: pd.DataFrame) -> list[str]:
    """The providers other than softlight that were timed somewhere, built-ins first."""
    names = set(timed(df).provider) - {OURS}
    return [p for p in _PEER_ORDER if p in names] + sorted(names - set(_PEER_ORDER))


def rate(op: str) -> tuple[str, str]:
    """(column, unit) of an op's rate: TFLOP/s for a linear op, GB/s for a row op."""
    return ("tflops", "TFLOP/s") if op in LINEAR_OPS else ("gbps", "GB/s")


def shape_label(rows, cols, hidden=0) -> str:
    """How every report and summary writes a shape: '4096 x 50257', or for a linear op tokens x
    vocabulary x hidden size, '8192 x 128256 x 4096'."""
    return f"{int(rows)} x {int(cols)}" + (f" x {int(hidden)}" if hidden else "")


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    order = {"op": OPS, "direction": DIRECTIONS, "dtype": DTYPES}
    key = {c: (lambda s, c=c: s.map({v: i for i, v in enumerate(order[c])})) for c in order}
    return df.sort_values(GROUP, key=lambda s: key[s.name](s), ignore_index=True)


def _ratios(group: pd.DataFrame, peer: str, column: str = "ms_p50") -> pd.DataFrame:
    """Per shape where both have `column`: peer's value / softlight's (time: speedup; peak
    memory: how many times softlight's the peer needs)."""
    values = group.astype({column: "float64"}).pivot_table(index=SHAPE, columns="provider", values=column,
                                                           aggfunc="first")
    if OURS not in values or peer not in values:
        return pd.DataFrame(columns=SHAPE + ["ratio"])
    both = values[[OURS, peer]].dropna()
    both = both[both[OURS] > 0]
    return pd.DataFrame({"ratio": both[peer] / both[OURS]}).reset_index()


def _geomean(s) -> float:
    return float(np.exp(np.log(s).mean())) if len(s) else math.nan


def _best(group: pd.DataFrame) -> tuple[str | None, int, int]:
    """The provider fastest on the most shapes (ties: higher median rate): name, wins, shapes.
    None when softlight was timed on none of them: the summary is about softlight, and naming a
    winner among the peers alone would read as if softlight had lost."""
    fastest = group.loc[group.groupby(SHAPE).ms_p50.idxmin()]
    if OURS not in set(group.provider):
        return None, 0, len(fastest)
    wins = fastest.provider.value_counts()
    median_rate = group.groupby("provider")[rate(group.op.iloc[0])[0]].median()
    best = max(wins.index, key=lambda p: (wins[p], median_rate[p]))
    return best, int(wins[best]), len(fastest)


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per row op, direction and dtype with anything timed: softlight's median percent
    of the ceiling, and its worst shape's ("softlight_pct_worst" at "worst_shape") beside it."""
    ok = timed(df)
    ok = ok[ok.op.isin(ROW_OPS)]
    rows = []
    for (op, direction, dtype), group in ok.groupby(GROUP):
        best, wins, shapes = _best(group)
        ours = group[group.provider == OURS]
        worst = ours.loc[ours.pct_of_ceiling.idxmin()] if ours.pct_of_ceiling.notna().any() else None
        row = dict(op=op, direction=direction, dtype=dtype, best=best, best_wins=wins, shapes=shapes,
                   softlight_pct=ours.pct_of_ceiling.median() if len(ours) else math.nan,
                   softlight_pct_worst=worst.pct_of_ceiling if worst is not None else math.nan,
                   worst_shape=shape_label(worst.rows, worst.cols, worst.hidden) if worst is not None else "",
                   softlight_gbps=ours.gbps.median() if len(ours) else math.nan)
        for peer in peers(df):
            row[f"vs {peer}"] = _geomean(_ratios(group, peer).ratio)
        rows.append(row)
    return _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=GROUP)


def lean_headline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per memory-lean op, direction and dtype with anything timed: the best provider,
    softlight's median rate and largest peak memory, and per peer the speedup ("vs PEER") and
    the memory ratio ("memory vs PEER")."""
    ok = timed(df)
    ok = ok[ok.op.isin(LEAN_OPS)]
    rows = []
    for (op, direction, dtype), group in ok.groupby(GROUP):
        best, wins, shapes = _best(group)
        ours = group[group.provider == OURS]
        column, unit = rate(op)
        peak = ours.peak_mem_bytes.dropna()
        row = dict(op=op, direction=direction, dtype=dtype, best=best, best_wins=wins, shapes=shapes,
                   softlight_rate=ours[column].median() if len(ours) else math.nan, rate_unit=unit,
                   softlight_peak_max=float(peak.max()) if len(peak) else math.nan)
        for peer in peers(df):
            row[f"vs {peer}"] = _geomean(_ratios(group, peer).ratio)
        for peer in peers(df):
            row[f"memory vs {peer}"] = _geomean(_ratios(group, peer, "peak_mem_bytes").ratio)
        rows.append(row)
    return _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=GROUP)


def _groups(ok: pd.DataFrame, ops):
    ok = ok[ok.op.isin(ops)]
    for op, direction, dtype in _ordered(ok[GROUP].drop_duplicates()).itertuples(index=False):
        yield (op, direction, dtype), ok[(ok.op == op) & (ok.direction == direction) & (ok.dtype == dtype)]


def _worse_lines(ok, df, ops, memory=False):
    """Where a peer beats softlight: in median time, or (memory) in peak memory."""
    out = []
    for (op, direction, dtype), group in _groups(ok, ops):
        for peer in peers(df):
            s = _ratios(group, peer, "peak_mem_bytes" if memory else "ms_p50")
            worse = s[s.ratio < 1]
            if not len(worse):
                continue
            worst = worse.loc[worse.ratio.idxmin()]
            at = shape_label(worst.rows, worst.cols, worst.hidden)
            if memory:
                out.append(f"{op} {direction} {dtype}: softlight needs more peak memory than {peer} on {len(worse)} of "
                           f"{len(s)} shapes (worst at {at}, where {peer} needs {worst.ratio:.2f}x softlight's; "
                           f"geometric mean {_geomean(s.ratio):.2f}x)")
            else:
                out.append(f"{op} {direction} {dtype}: softlight is slower than {peer} on {len(worse)} of {len(s)} "
                           f"shapes (worst {worst.ratio:.2f}x at {at}; geometric mean {_geomean(s.ratio):.2f}x)")
    return out


def _failed_verb(status) -> str:
    """How a sentence says that a result has no time: 'was wrong', 'failed (error)'."""
    return {"wrong": "was wrong", "error": "failed (error)", "unavailable": "was unavailable"}.get(status, f"was {status}")


def _ours_not_ok(df, ops) -> list[str]:
    out = []
    ours_bad = df[(df.provider == OURS) & df.op.isin(ops) & ~df.status.isin(["ok", "unsupported"])]
    for (op, direction, dtype, status), group in ours_bad.groupby(GROUP + ["status"]):
        shapes = ", ".join(shape_label(r, c, h) for r, c, h in zip(group.rows, group.cols, group.hidden))
        note = group.note.iloc[0]
        out.append(f"{op} {direction} {dtype}: softlight {_failed_verb(status)} on {shapes}" + (f" ({note})" if note else ""))
    return out


def losses(df: pd.DataFrame) -> list[str]:
    """Plain sentences for every row op, direction, dtype and peer where softlight is slower on
    some shape, or where softlight itself was wrong, failed or was not timed."""
    return _worse_lines(timed(df), df, ROW_OPS) + _ours_not_ok(df, ROW_OPS)


def lean_losses(df: pd.DataFrame) -> list[str]:
    """The same for the memory-lean ops, in time and in peak memory."""
    ok = timed(df)
    return _worse_lines(ok, df, LEAN_OPS) + _worse_lines(ok, df, LEAN_OPS, memory=True) + _ours_not_ok(df, LEAN_OPS)


def peers_not_timed(df: pd.DataFrame, ops=LEAN_OPS) -> list[str]:
    """Sentences for the shapes where softlight was timed and a peer that ran elsewhere was wrong
    or failed (for the memory-lean ops, typically out of memory)."""
    ok = timed(df)
    ours = ok[(ok.provider == OURS) & ok.op.isin(ops)].set_index(GROUP + SHAPE).index
    out = []
    failed = df[df.provider.isin(peers(df)) & df.op.isin(ops) & df.status.isin(["wrong", "error"])]
    failed = failed[failed.set_index(GROUP + SHAPE).index.isin(ours)]
    for (op, direction, dtype, provider, status), group in failed.groupby(GROUP + ["provider", "status"]):
        shapes = ", ".join(shape_label(r, c, h) for r, c, h in zip(group.rows, group.cols, group.hidden))
        note = group.note.iloc[0]
        out.append(f"{op} {direction} {dtype}: {provider} {_failed_verb(status)} on {shapes}, where softlight was timed"
                   + (f" ({note})" if note else ""))
    return out


def best_label(best, wins, shapes, long=False) -> str:
    """'liger (6 of 6 shapes)', or 'softlight not timed' where it was timed on no shape."""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return "softlight not timed"
    return f"{best} ({wins} of {shapes} shapes)" if long else f"{best} ({wins}/{shapes})"


def pct_label(median, worst, worst_shape) -> str:
    """'80% (worst 33% at 4 x 262144)': the median over the shapes hides the worst one."""
    if not math.isfinite(median):
        return "-"
    return f"{median:.0f}%" + (f" (worst {worst:.0f}% at {worst_shape})" if math.isfinite(worst) else "")


def format_text(df: pd.DataFrame) -> str:
    """The headline as plain-text tables for the terminal."""
    h, lean = headline(df), lean_headline(df)
    if h.empty and lean.empty:
        return "nothing was timed"
    parts = []
    if not h.empty:
        shown = pd.DataFrame({
            "op": h.op, "direction": h.direction, "dtype": h.dtype,
            "softlight % ceiling (median, worst)": [pct_label(m, w, s) for m, w, s in
                                                    zip(h.softlight_pct, h.softlight_pct_worst, h.worst_shape)],
            "best": [best_label(b, w, n) for b, w, n in zip(h.best, h.best_wins, h.shapes)],
        })
        for col in [c for c in h.columns if c.startswith("vs ")]:
            shown[col] = h[col].map(lambda v: f"{v:.2f}x" if math.isfinite(v) else "-")
        parts.append(shown.to_string(index=False))
    if not lean.empty:
        shown = pd.DataFrame({
            "op": lean.op, "direction": lean.direction, "dtype": lean.dtype,
            "softlight": [f"{v:.1f} {u}" if math.isfinite(v) else "-" for v, u in zip(lean.softlight_rate, lean.rate_unit)],
            "best": [best_label(b, w, n) for b, w, n in zip(lean.best, lean.best_wins, lean.shapes)],
        })
        for col in [c for c in lean.columns if c.startswith("vs ") or c.startswith("memory vs ")]:
            shown[col.replace("memory vs ", "less memory than ")] = lean[col].map(
                lambda v: f"{v:.2f}x" if math.isfinite(v) else "-")
        parts.append("memory-lean losses (speedup, and peak memory of the peer / softlight's):\n"
                     + shown.to_string(index=False))
    return "\n\n".join(parts)
