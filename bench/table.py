"""The results table: one long-format row per op, direction, provider, dtype and shape.

It is the only thing reports are made from, so every fact a report states is a column here:

    op, direction, provider, dtype, rows, cols, hidden   what was run; hidden is the hidden size
                  H of a linear op (hidden states rows x H, weight cols x H), 0 for the others
    status        ok (checked, then timed), wrong (over tolerance: not timed), error (raised:
                  see note), unsupported (the provider lacks this op or direction),
                  unavailable (the provider could not be imported: see note)
    ms_p50, ms_p20, ms_p80   milliseconds per call: median, 20th and 80th percentiles
    bytes         a row op's minimum bytes (spec.bytes_moved); gbps = bytes / median time;
                  empty for a linear op, whose work is matmuls
    pct_of_ceiling, ceiling_gbps   gbps as a percent of the device-to-device copy measured in
                  the same run (the ceiling is there for every row, the percent only with gbps)
    flops, tflops  a linear op's matmul flops (spec.matmul_flops) and flops / median time in
                  TFLOP/s; empty for the row ops
    peak_mem_bytes   peak memory allocated by one call, above its inputs
    max_error, tolerance   relative norm error against the float64 reference, and the bound
    note          why a row is not ok
    device, torch, triton, git_rev, date   where and when (date: UTC, ISO 8601)

Tables written before the linear ops existed lack hidden, flops and tflops: `read` fills them in
(0 and empty), since every row of such a table is a row op.
"""

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .spec import DIRECTIONS, DTYPES, LINEAR_OPS, OPS, UsageError

__all__ = ["COLUMNS", "KEY", "STATUSES", "LATER_COLUMNS", "environment", "finish", "read", "write", "merge", "runs"]

KEY = ["op", "direction", "provider", "dtype", "rows", "cols", "hidden"]
ENVIRONMENT = ["device", "torch", "triton", "git_rev", "date"]
COLUMNS = KEY + ["status", "ms_p50", "ms_p20", "ms_p80", "bytes", "gbps", "pct_of_ceiling", "ceiling_gbps",
                 "flops", "tflops", "peak_mem_bytes", "max_error", "tolerance", "note"] + ENVIRONMENT
# Columns added with the linear ops, and their value in a table written before them.
LATER_COLUMNS = {"hidden": 0, "flops": pd.NA, "tflops": float("nan")}
STATUSES = ("ok", "wrong", "error", "unsupported", "unavailable")
_INTS = ["rows", "cols", "hidden"]
_NULLABLE_INTS = ["bytes", "flops", "peak_mem_bytes"]
_FLOATS = ["ms_p50", "ms_p20", "ms_p80", "gbps", "pct_of_ceiling", "ceiling_gbps", "tflops", "max_error", "tolerance"]
_TEXT = ["op", "direction", "provider", "dtype", "status", "note"] + ENVIRONMENT


def _git_revision() -> str:
    """The softlight checkout's commit, '+dirty' when tracked files differ from it."""
    import softlight

    root = Path(softlight.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def environment(device_name: str) -> dict:
    import torch
    import triton

    return dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                git_rev=_git_revision(), date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[COLUMNS].copy()
    for c in _INTS:
        df[c] = df[c].astype("int64")
    for c in _FLOATS:
        df[c] = df[c].astype("float64")
    for c in _NULLABLE_INTS:
        df[c] = df[c].astype("Int64")
    for c in _TEXT:
        df[c] = df[c].astype(object).fillna("").astype(str)
    return df


def finish(records: list[dict], env: dict) -> pd.DataFrame:
    """The table of a run's records, each stamped with the run's environment."""
    df = pd.DataFrame.from_records(records, columns=[c for c in COLUMNS if c not in ENVIRONMENT])
    df["hidden"] = df["hidden"].fillna(LATER_COLUMNS["hidden"])  # a row op's record may leave it out
    for k, v in env.items():
        df[k] = v
    return _typed(df)


def _validate(df: pd.DataFrame, source: str) -> pd.DataFrame:
    df = df.assign(**{c: v for c, v in LATER_COLUMNS.items() if c not in df.columns})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(f"{source}: not a softlight results table; missing columns: {', '.join(missing)}")
    for column, allowed in (("op", OPS), ("direction", DIRECTIONS), ("dtype", DTYPES), ("status", STATUSES)):
        bad = sorted(set(df[column].astype(str)) - set(allowed))
        if bad:
            raise UsageError(f"{source}: column {column!r} has values {bad}; allowed: {', '.join(allowed)}")
    try:
        df = _typed(df)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{source}: a column has values of the wrong type: {exc}") from exc
    if (df.rows < 1).any() or (df.cols < 1).any():
        raise UsageError(f"{source}: rows and cols must be positive")
    linear = df.op.isin(LINEAR_OPS)
    if (df.hidden[linear] < 1).any() or (df.hidden[~linear] != 0).any():
        raise UsageError(f"{source}: hidden must be positive for {', '.join(LINEAR_OPS)} and 0 for the other ops")
    if (df.bytes[linear].notna().any() or df.flops[linear].isna().any() or df.flops[~linear].notna().any()
            or df.bytes[~linear].isna().any()):
        raise UsageError(f"{source}: {', '.join(LINEAR_OPS)} rows have flops and no bytes, the other ops bytes "
                         "and no flops")
    timed = df[df.status == "ok"]
    timed_linear = timed.op.isin(LINEAR_OPS)
    no_rate = (timed.gbps.isna() & ~timed_linear) | (timed.tflops.isna() & timed_linear)
    if (timed.ms_p50.isna() | no_rate).any():
        raise UsageError(f"{source}: a row with status ok has no timing")
    if df.duplicated(KEY).any():
        raise UsageError(f"{source}: the same op, direction, provider, dtype and shape appears twice")
    return df


def read(path) -> pd.DataFrame:
    """A results table from CSV, checked against the schema (ValueError naming what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results table {str(path)!r} does not exist")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UsageError(f"{path}: not a CSV results table: {exc}") from exc
    return _validate(df, str(path))


def write(df: pd.DataFrame, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _validate(df, str(path)).to_csv(path, index=False, float_format="%.6g")


def merge(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """old with every row that new measures again replaced: a sweep split over several runs
    builds one table. Both must come from the same device."""
    devices = set(old.device) | set(new.device)
    if len(devices) > 1:
        raise UsageError(f"cannot merge results of different devices: {', '.join(sorted(devices))}")
    remeasured = old.set_index(KEY).index.isin(new.set_index(KEY).index)
    merged = pd.concat([old[~remeasured], new], ignore_index=True)
    return _typed(merged.sort_values(KEY, kind="stable", ignore_index=True))


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (date, git revision): its copy ceiling in GB/s and how many rows it gave."""
    per_run = df.groupby(["date", "git_rev", "torch", "triton"], as_index=False).agg(
        ceiling_gbps=("ceiling_gbps", "first"), results=("op", "size"))
    return per_run.sort_values("date", ignore_index=True)
