"""The headline of a results table, per op, direction and dtype: the best provider, softlight's
percent of the copy ceiling, its speedup over each peer, and where it loses.

Speedup over a peer = the peer's median time / softlight's, on the shapes where both were
checked and timed; summarised by the geometric mean over those shapes (ratios average
multiplicatively). Above 1 softlight is faster.
"""

import math

import numpy as np
import pandas as pd

from .spec import DIRECTIONS, DTYPES, OPS

__all__ = ["OURS", "peers", "timed", "headline", "losses", "format_text"]

OURS = "softlight"
_PEER_ORDER = ["torch", "torch.compile", "liger", "quack"]
GROUP = ["op", "direction", "dtype"]


def timed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.status == "ok"]


def peers(df: pd.DataFrame) -> list[str]:
    """The providers other than softlight that were timed somewhere, built-ins first."""
    names = set(timed(df).provider) - {OURS}
    return [p for p in _PEER_ORDER if p in names] + sorted(names - set(_PEER_ORDER))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    order = {"op": OPS, "direction": DIRECTIONS, "dtype": DTYPES}
    key = {c: (lambda s, c=c: s.map({v: i for i, v in enumerate(order[c])})) for c in order}
    return df.sort_values(GROUP, key=lambda s: key[s.name](s), ignore_index=True)


def _speedups(group: pd.DataFrame, peer: str) -> pd.DataFrame:
    """Per shape where both ran: peer ms / softlight ms."""
    ms = group.pivot_table(index=["rows", "cols"], columns="provider", values="ms_p50", aggfunc="first")
    if OURS not in ms or peer not in ms:
        return pd.DataFrame(columns=["rows", "cols", "speedup"])
    both = ms[[OURS, peer]].dropna()
    return pd.DataFrame({"speedup": both[peer] / both[OURS]}).reset_index()


def _best(group: pd.DataFrame) -> tuple[str, int, int]:
    """The provider fastest on the most shapes (ties: higher median GB/s): name, wins, shapes."""
    fastest = group.loc[group.groupby(["rows", "cols"]).ms_p50.idxmin()]
    wins = fastest.provider.value_counts()
    median_gbps = group.groupby("provider").gbps.median()
    best = max(wins.index, key=lambda p: (wins[p], median_gbps[p]))
    return best, int(wins[best]), len(fastest)


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per op, direction and dtype with anything timed."""
    ok = timed(df)
    rows = []
    for (op, direction, dtype), group in ok.groupby(GROUP):
        best, wins, shapes = _best(group)
        ours = group[group.provider == OURS]
        row = dict(op=op, direction=direction, dtype=dtype, best=best, best_wins=wins, shapes=shapes,
                   softlight_pct=ours.pct_of_ceiling.median() if len(ours) else math.nan,
                   softlight_gbps=ours.gbps.median() if len(ours) else math.nan)
        for peer in peers(df):
            s = _speedups(group, peer).speedup
            row[f"vs {peer}"] = float(np.exp(np.log(s).mean())) if len(s) else math.nan
        rows.append(row)
    return _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=GROUP)


def losses(df: pd.DataFrame) -> list[str]:
    """Plain sentences for every op, direction, dtype and peer where softlight is slower on
    some shape, or where softlight itself was wrong, failed or was not timed."""
    ok = timed(df)
    out = []
    for op, direction, dtype in _ordered(ok[GROUP].drop_duplicates()).itertuples(index=False):
        group = ok[(ok.op == op) & (ok.direction == direction) & (ok.dtype == dtype)]
        for peer in peers(df):
            s = _speedups(group, peer)
            slower = s[s.speedup < 1]
            if len(slower):
                worst = slower.loc[slower.speedup.idxmin()]
                mean = float(np.exp(np.log(s.speedup).mean()))
                out.append(f"{op} {direction} {dtype}: softlight is slower than {peer} on {len(slower)} of {len(s)} "
                           f"shapes (worst {worst.speedup:.2f}x at {int(worst.rows)}x{int(worst.cols)}; "
                           f"geometric mean {mean:.2f}x)")
    ours_bad = df[(df.provider == OURS) & ~df.status.isin(["ok", "unsupported"])]
    for (op, direction, dtype, status), group in ours_bad.groupby(GROUP + ["status"]):
        shapes = ", ".join(f"{r}x{c}" for r, c in zip(group.rows, group.cols))
        note = group.note.iloc[0]
        out.append(f"{op} {direction} {dtype}: softlight is {status} on {shapes}" + (f" ({note})" if note else ""))
    return out


def format_text(df: pd.DataFrame) -> str:
    """The headline as a plain-text table for the terminal."""
    h = headline(df)
    if h.empty:
        return "nothing was timed"
    shown = pd.DataFrame({
        "op": h.op, "direction": h.direction, "dtype": h.dtype,
        "softlight % ceiling": h.softlight_pct.map(lambda v: f"{v:.0f}%" if math.isfinite(v) else "-"),
        "best": [f"{b} ({w}/{n})" for b, w, n in zip(h.best, h.best_wins, h.shapes)],
    })
    for col in [c for c in h.columns if c.startswith("vs ")]:
        shown[col] = h[col].map(lambda v: f"{v:.2f}x" if math.isfinite(v) else "-")
    return shown.to_string(index=False)
