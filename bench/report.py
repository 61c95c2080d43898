"""Reports, made from a results table alone: reports/<device>/ holds the table (results.csv), a
Markdown page (README.md) and PNG plots (plots/); reports/README.md indexes the devices.
"""

import math
from pathlib import Path

import pandas as pd

from . import plots, table
from .spec import DIRECTIONS, DTYPES, OPS, UsageError, slugify
from .summary import OURS, headline, losses, peers, timed

__all__ = ["RESULTS_NAME", "render", "write_index"]

RESULTS_NAME = "results.csv"
COMPILE_REPORT = "compile.md"
STABILITY_PAGE = "stability.md"  # written by softlight.bench.stability


def _device(df: pd.DataFrame) -> str:
    devices = sorted(set(df.device))
    if len(devices) != 1:
        raise UsageError(f"a report covers one device; this table has {len(devices)}: {', '.join(devices) or 'none'}")
    return devices[0]


def _fmt(v, spec, suffix=""):
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _environment(df) -> list[str]:
    runs = table.runs(df)
    lines = ["## Environment", "", f"Device: **{_device(df)}**.", ""]
    lines += _md_table(["run (UTC)", "git revision", "torch", "triton", "copy ceiling", "results"],
                       [[r.date, f"`{r.git_rev}`", r.torch, r.triton, _fmt(r.ceiling_gbps, ".0f", " GB/s"), r.results]
                        for r in runs.itertuples()])
    timed_providers = [OURS] * (OURS in set(timed(df).provider)) + peers(df)
    lines += ["", "Providers timed: " + (", ".join(f"`{p}`" for p in timed_providers) or "none") + "."]
    never = df[~df.provider.isin(timed_providers)].groupby("provider")
    for provider, group in never:
        notes = "; ".join(sorted(set(group.note) - {""})) or ", ".join(sorted(set(group.status)))
        lines.append(f"Not timed at all: `{provider}` ({notes}).")
    return lines


HOW_TO_READ = """## How to read this

- Every provider's output (and gradient) is compared with the float64 NumPy reference before it
  is timed; one over the tolerance of its dtype is reported as wrong and not timed.
- Time: `triton.testing.do_bench`, median of many calls with the L2 cache flushed between them
  (p20 and p80 are in the table). Compile and autotuning time is excluded (a warm-up call first).
- GB/s = the fewest bytes the op must move / median time. softmax and log-softmax: forward
  2 N V elements, backward 3 N V, forward+backward 5 N V. cross-entropy: forward N V + the N
  targets; backward and forward+backward 2 N V + the targets, what a kernel that writes the
  gradient during its forward pass needs; an implementation with a separate backward pass
  moves 3 N V there, so it cannot pass about 67% of the ceiling.
- Percent of ceiling: GB/s over a large device-to-device copy (bytes read + written) timed the
  same way in the same run.
- Speedup over a peer: the peer's median time / softlight's, on the shapes where both ran;
  the summary gives the geometric mean. Above 1, softlight is faster.
- Peak memory: the most memory one call allocates above its inputs.
"""


def _summary(df) -> list[str]:
    h = headline(df)
    lines = ["## Summary", ""]
    if h.empty:
        return lines + ["Nothing in this table was timed."]
    vs = [c for c in h.columns if c.startswith("vs ")]
    header = ["op", "direction", "dtype", "best provider (fastest on)", "softlight GB/s", "softlight % of ceiling"]
    header += [f"speedup {c}" for c in vs]
    rows = [[r["op"], r["direction"], r["dtype"], f"{r['best']} ({r['best_wins']} of {r['shapes']} shapes)",
             _fmt(r["softlight_gbps"], ".0f"), _fmt(r["softlight_pct"], ".0f", "%")] + [_fmt(r[c], ".2f", "x") for c in vs]
            for _, r in h.iterrows()]
    lines += ["softlight's GB/s and percent of ceiling are medians over the shapes of the row.", ""]
    lines += _md_table(header, rows)
    lines += ["", "## Where softlight loses", ""]
    lost = losses(df)
    lines += [f"- {s}" for s in lost] if lost else ["softlight is the fastest provider on every shape timed here."]
    return lines


def _not_timed(df) -> list[str]:
    bad = df[df.status.isin(["wrong", "error", "unsupported"])]
    if bad.empty:
        return []
    lines = ["## Not timed", ""]
    rows = []
    for (provider, op, direction, status, note), group in bad.groupby(["provider", "op", "direction", "status", "note"]):
        dtypes = ", ".join(d for d in DTYPES if d in set(group.dtype))
        errors = group.max_error.dropna()
        rows.append([f"`{provider}`", op, direction, dtypes, status, len(group),
                     _fmt(errors.max(), ".2e") if len(errors) else "-", note])
    return lines + _md_table(["provider", "op", "direction", "dtypes", "status", "results", "max error", "note"], rows)


def _cell(r):
    if r.status == "ok":
        return f"{r.gbps:.0f}"
    return r.status if r.status != "unsupported" else "-"


def _details(df, plot_names) -> list[str]:
    lines = []
    providers = [OURS] * (OURS in set(df.provider)) + peers(df)
    for op in [o for o in OPS if o in set(df.op)]:
        lines += ["", f"## {op}"]
        for dtype in [d for d in DTYPES if d in set(df.dtype[df.op == op])]:
            for name, what in ((f"speedup-{op}-{dtype}.png", "speedup over torch"), (f"memory-{op}-{dtype}.png", "peak memory")):
                if name in plot_names:
                    lines += ["", f"![{op} {dtype} {what}](plots/{name})"]
        for direction in [d for d in DIRECTIONS if d in set(df.direction[df.op == op])]:
            for dtype in [d for d in DTYPES if d in set(df.dtype[df.op == op])]:
                group = df[(df.op == op) & (df.direction == direction) & (df.dtype == dtype)]
                lines += ["", f"### {op} {direction}, {dtype}", ""]
                name = f"gbps-{op}-{direction.replace('+', '-')}-{dtype}.png"
                if name in plot_names:
                    lines += [f"![{op} {direction} {dtype} GB/s](plots/{name})", ""]
                rows = []
                for (c, r), shape in group.groupby(["cols", "rows"]):
                    by = {p.provider: p for p in shape.itertuples()}
                    ours = by.get(OURS)
                    pct = _fmt(ours.pct_of_ceiling, ".0f", "%") if ours is not None and ours.status == "ok" else "-"
                    rows.append([f"{r} x {c}", pct] + [_cell(by[p]) if p in by else "-" for p in providers])
                lines += ["GB/s by provider (median time; `-`: not run or not supported).", ""]
                lines += _md_table(["rows x cols", "softlight % of ceiling"] + providers, rows)
    return lines


def render(df: pd.DataFrame, out_root, source=None) -> Path:
    """Write reports/<device>/ (table, page, plots) for `df` under `out_root`, then the index.

    `source` is the CSV the table was read from; it is copied into the folder unless it is
    already the folder's results.csv.
    """
    device = _device(df)
    folder = Path(out_root) / slugify(device)
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / RESULTS_NAME
    if source is None or Path(source).resolve() != results.resolve():
        table.write(df, results)
    plot_dir = folder / "plots"
    for old in plot_dir.glob("*.png"):
        old.unlink()  # plots of a previous rendering that this table no longer has
    plot_names = {p.name for p in plots.draw_all(df, plot_dir)}
    lines = [f"# softlight benchmark: {device}", "",
             f"Generated by `softlight report` from the results table in this folder, [`{RESULTS_NAME}`]({RESULTS_NAME}), "
             "alone; do not edit by hand.", ""]
    lines += _environment(df) + ["", HOW_TO_READ] + _summary(df)
    not_timed = _not_timed(df)
    lines += ([""] + not_timed) if not_timed else []
    if (folder / STABILITY_PAGE).exists():
        lines += ["", "## Numerical stability", "",
                  f"The adversarial catalogue on this device, in ulps against exact answers: [`{STABILITY_PAGE}`]({STABILITY_PAGE})."]
    lines += _details(df, plot_names)
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    write_index(out_root)
    return folder


def write_index(out_root) -> Path:
    """reports/README.md: the compile report (if present) and every device folder with a table."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    if (root / COMPILE_REPORT).exists():
        rows.append([f"[`{COMPILE_REPORT}`]({COMPILE_REPORT})", "every kernel variant compiled ahead of time for sm_90 "
                     "and sm_80: registers, spills, vector loads", "`make compile`"])
    devices = sorted(p.parent for p in root.glob(f"*/{RESULTS_NAME}"))
    for folder in sorted(p.parent for p in root.glob(f"*/{STABILITY_PAGE}")):
        rows.append([f"[`{folder.name}/{STABILITY_PAGE}`]({folder.name}/{STABILITY_PAGE})",
                     "numerical stability: the adversarial catalogue in ulps against exact answers, softlight beside "
                     "torch and the naive and stable formulas", "`softlight stability` (part of `make bench`)"])
    for folder in devices:
        df = table.read(folder / RESULTS_NAME)
        runs = table.runs(df)
        ceilings = ", ".join(_fmt(v, ".0f") for v in runs.ceiling_gbps)
        what = (f"benchmark on {_device(df)}: {len(df)} results from {len(runs)} run(s), "
                f"{runs.date.min()[:10]} to {runs.date.max()[:10]}; copy ceiling {ceilings} GB/s")
        rows.append([f"[`{folder.name}/`]({folder.name}/README.md)", what,
                     "`make bench` (`softlight bench`) on that GPU; `softlight report` re-renders it"])
    lines = ["# Reports", "", "Generated files only; each is rewritten by the command named beside it.", ""]
    lines += _md_table(["file or folder", "what", "made by"], rows)
    if not devices:
        lines += ["", "No benchmark has been run on a GPU yet: `make bench` on a machine with an NVIDIA GPU writes "
                  "`reports/<device>/` (results table, report page, plots)."]
    index = root / "README.md"
    index.write_text("\n".join(lines) + "\n")
    return index
