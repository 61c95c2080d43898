"""Compare two results tables shape by shape: what got faster, slower, or stopped passing.

A change counts only when the two runs' p20-p80 spreads do not overlap: the new p20 above the
old p80 is slower, the new p80 below the old p20 is faster; anything else is within noise. A
regression is a slowdown of the median by more than the threshold beyond that, or a result
that was ok and no longer is (wrong, error, unavailable).
"""

import math

import pandas as pd

from .spec import UsageError
from .summary import shape_label
from .table import KEY
from .units import format_time_spread

__all__ = ["compare", "format_text"]

_VERDICT_ORDER = ["regression", "now failing", "slower", "faster", "now ok", "within noise", "only in old",
                  "only in new", "not timed in either"]


def _verdict(r, threshold):
    if r.presence == "left_only":
        return "only in old"
    if r.presence == "right_only":
        return "only in new"
    old_ok, new_ok = r.status_old == "ok", r.status_new == "ok"
    if old_ok and not new_ok:
        return "now failing"
    if new_ok and not old_ok:
        return "now ok"
    if not old_ok:
        return "not timed in either"
    if r.ms_p20_new > r.ms_p80_old:
        return "regression" if r.change > threshold else "slower"
    if r.ms_p80_new < r.ms_p20_old:
        return "faster"
    return "within noise"


def compare(old: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.05) -> pd.DataFrame:
    """One row per op, direction, provider, dtype and shape in either table, with the change
    of the median time (new / old - 1) and a verdict."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise UsageError(f"threshold must be a finite number >= 0, got {threshold!r}")
    devices_old, devices_new = set(old.device), set(new.device)
    if devices_old != devices_new:
        raise UsageError(f"the tables come from different devices ({', '.join(sorted(devices_old))} vs "
                         f"{', '.join(sorted(devices_new))}): their times cannot be compared")
    cols = KEY + ["status", "ms_p50", "ms_p20", "ms_p80"]
    both = old[cols].merge(new[cols], on=KEY, how="outer", suffixes=("_old", "_new"), indicator="presence")
    both["change"] = both.ms_p50_new / both.ms_p50_old - 1
    both["verdict"] = [_verdict(r, threshold) for r in both.itertuples()]
    both["verdict"] = pd.Categorical(both.verdict, categories=_VERDICT_ORDER, ordered=True)
    return both.drop(columns="presence").sort_values(["verdict"] + KEY, ignore_index=True)


def format_text(result: pd.DataFrame, show_all: bool = False) -> str:
    """The changes as a table (every compared row with show_all), then counts per verdict."""
    shown = result if show_all else result[~result.verdict.isin(["within noise", "not timed in either"])]
    lines = []
    if len(shown):
        view = pd.DataFrame({
            "verdict": shown.verdict.astype(str), "op": shown.op, "direction": shown.direction,
            "provider": shown.provider, "dtype": shown.dtype,
            "shape": [shape_label(r, c, h) for r, c, h in zip(shown.rows, shown.cols, shown.hidden)],
            "old median [p20-p80]": [format_time_spread(*v) for v in zip(shown.ms_p50_old, shown.ms_p20_old,
                                                                         shown.ms_p80_old)],
            "new median [p20-p80]": [format_time_spread(*v) for v in zip(shown.ms_p50_new, shown.ms_p20_new,
                                                                         shown.ms_p80_new)],
            "change": shown.change.map(lambda v: f"{v:+.1%}" if math.isfinite(v) else "-"),
            "old": shown.status_old.fillna("-"), "new": shown.status_new.fillna("-"),
        })
        lines += [view.to_string(index=False), ""]
    counts = result.verdict.value_counts()
    lines.append(", ".join(f"{counts[v]} {v}" for v in _VERDICT_ORDER if counts.get(v, 0)))
    return "\n".join(lines)
