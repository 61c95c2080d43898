"""Reports, made from a results table alone: reports/<device>/ holds the table (results.csv), a
Markdown page (README.md) and PNG plots (plots/); reports/README.md indexes the devices.
"""

import math
from pathlib import Path

import pandas as pd

from . import plots, table
from .spec import DIRECTIONS, DTYPES, LEAN_OPS, LINEAR_OPS, ROW_OPS, UsageError, slugify
from .summary import (OURS, best_label, headline, lean_headline, lean_losses, losses, peers, peers_not_timed, rate,
                      shape_label, timed)
from .units import format_bytes, format_time

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
  moves 3 N V there, so it cannot pass about 67% of the ceiling. distillation_kl and
  distillation_jsd (a student's logits against a teacher's): forward 2 N V (both read), backward
  and forward+backward 3 N V (the student's gradient written); softlight's exact forward reads both
  rows twice, so its forward+backward moves 7 N V and cannot pass about 43% of the ceiling.
- Percent of ceiling: GB/s over a large device-to-device copy (bytes read + written) timed the
  same way in the same run.
- Speedup over a peer: the peer's median time / softlight's, on the shapes where both ran;
  the summary gives the geometric mean. Above 1, softlight is faster.
- Peak memory: the most memory one call allocates above its inputs.
- Plots: one line per provider, each with its own colour, marker and line style, softlight's
  drawn last so that no peer hides it. GB/s plots carry the percent of the copy ceiling on their
  right-hand axis and each line's p20-p80 band; memory plots have a logarithmic axis. A result
  that was wrong or failed (out of memory, say) is marked with a cross at the foot of its panel
  at its shape, in its provider's colour and named, and its line breaks there; on a speedup plot
  a triangle at the top marks a shape where the provider ran and torch failed, so there is no
  ratio to draw. The overview
  plot puts every op, direction and dtype side by side: softlight's percent of the ceiling
  (median, and its worst and best shapes) and its speedup over torch eager.
"""


def _summary(df, plot_names=frozenset()) -> list[str]:
    h = headline(df)
    lines = ["## Summary", ""]
    if plots.OVERVIEW in plot_names:
        lines += [f"![every op at a glance: softlight's percent of the ceiling and speedup over torch]"
                  f"(plots/{plots.OVERVIEW})", ""]
    if timed(df).empty:
        return lines + ["Nothing in this table was timed."]
    if h.empty:
        return lines + [f"No row op ({', '.join(ROW_OPS)}) was timed in this table; the memory-lean losses are "
                        "summarised in their own section."]
    vs = [c for c in h.columns if c.startswith("vs ")]
    header = ["op", "direction", "dtype", "best provider (fastest on)", "softlight GB/s", "softlight % of ceiling",
              "softlight's worst shape"]
    header += [f"speedup {c}" for c in vs]
    rows = [[r["op"], r["direction"], r["dtype"], best_label(r["best"], r["best_wins"], r["shapes"], long=True),
             _fmt(r["softlight_gbps"], ".0f"), _fmt(r["softlight_pct"], ".0f", "%"),
             f"{r['softlight_pct_worst']:.0f}% at {r['worst_shape']}" if math.isfinite(r["softlight_pct_worst"]) else "-"]
            + [_fmt(r[c], ".2f", "x") for c in vs]
            for _, r in h.iterrows()]
    lines += ["softlight's GB/s and percent of ceiling are medians over the shapes of the row; its worst shape is "
              "the one with the lowest percent of the ceiling.", ""]
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
    for op in [o for o in ROW_OPS if o in set(df.op)]:
        lines += ["", f"## {op}"]
        if op in LEAN_OPS:
            lines += ["", "Its peak memory, time and speedup plots are in the section on memory-lean losses."]
        else:
            for dtype in [d for d in DTYPES if d in set(df.dtype[df.op == op])]:
                for name, what in ((f"speedup-{op}-{dtype}.png", "speedup over torch"),
                                   (f"memory-{op}-{dtype}.png", "peak memory")):
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
                    rows.append([shape_label(r, c), pct] + [_cell(by[p]) if p in by else "-" for p in providers])
                lines += ["GB/s by provider (median time; `-`: not run or not supported).", ""]
                lines += _md_table(["rows x cols", "softlight % of ceiling"] + providers, rows)
    return lines


LEAN_HOW_TO_READ = """What these ops are for is memory. `linear_cross_entropy` computes the loss of logits =
hidden @ weight.T without ever holding the (N, V) logits, which torch's unfused path
(`F.cross_entropy(F.linear(hidden, weight).float(), target)`) holds several times over: in the
hidden dtype, in float32, as log-softmax and as their gradient. `token_logprobs` gives each row's
log-probability of one token without writing an (N, V) log-softmax. `distillation_kl` and
`distillation_jsd` give the exact divergence of a student's distribution from a teacher's with no
(N, V) temporary beyond the gradient, where torch's composition holds both log-softmaxes and its
elementwise terms; `linear_distillation_jsd` does it from both models' hidden states without
holding either model's logits (matmul-bound like `linear_cross_entropy`: forward two matmuls, the
two models' logits, backward two, the student's gradients, forward+backward four).

- Peak memory: what one call allocates above its inputs (for backward and forward+backward the
  gradients it returns included), from torch's CUDA memory statistics. Less memory than a peer:
  the peer's peak / softlight's, geometric mean over the shapes where both were timed; above 1
  softlight needs less.
- `linear_cross_entropy` is matmul-bound, so its rate is TFLOP/s: 2 N H V flops per matmul of N
  tokens, hidden size H and vocabulary V; forward one matmul (the logits), backward two (the
  gradients of hidden and weight), forward+backward three, the fewest any implementation needs.
  No bytes model and no percent of the copy ceiling apply to it. Shapes read tokens x vocabulary
  x hidden size; the loss is the mean over tokens, checked (with the gradients of hidden and
  weight) against the float64 reference on the logits as `F.linear` rounds them.
- softlight and Liger compute a mean loss's gradients during forward and only rescale them in
  backward, so their backward is not timed alone; compare their forward+backward.
- `token_logprobs` is a row op like the others (GB/s, percent of the ceiling): forward N V
  elements + 12 N bytes (int64 ids read, float32 log-probabilities written), backward 2 N V + 12 N
  (the incoming gradient is one float32 per row), forward+backward 3 N V + 24 N (that gradient
  arrives only after forward, so the logits are read twice).
- No matmul ceiling is measured: the run times no GEMM of the same shapes alone, so the TFLOP/s
  of `linear_cross_entropy` have no roofline or GEMM baseline to be read against here. Its
  plots show time and peak memory; softlight's TFLOP/s are in the tables below, every
  provider's in `results.csv`.
"""


def _lean_cell(r) -> str:
    if r.status != "ok":
        return r.status if r.status != "unsupported" else "-"
    peak = r.peak_mem_bytes
    return f"{format_time(r.ms_p50)}, " + (format_bytes(float(peak)) if pd.notna(peak) else "peak -")


def _lean(df, plot_names) -> list[str]:
    """The section on the memory-lean ops: headline, losses, plots and per-shape tables."""
    present = [op for op in LEAN_OPS if op in set(df.op)]
    if not present:
        return []
    lines = ["", "## Memory-lean losses", "", LEAN_HOW_TO_READ]
    h = lean_headline(df)
    if h.empty:
        lines += ["Nothing of these ops was timed."]
    else:
        speed = [c for c in h.columns if c.startswith("vs ")]
        memory = [c for c in h.columns if c.startswith("memory vs ")]
        header = ["op", "direction", "dtype", "best provider (fastest on)", "softlight rate (median)",
                  "softlight's largest peak"]
        header += [f"speedup {c}" for c in speed] + [f"less memory than {c.removeprefix('memory vs ')}" for c in memory]
        rows = [[r["op"], r["direction"], r["dtype"], best_label(r["best"], r["best_wins"], r["shapes"], long=True),
                 _fmt(r["softlight_rate"], ".1f", f" {r['rate_unit']}") if math.isfinite(r["softlight_rate"])
                 else "not timed", format_bytes(r["softlight_peak_max"])]
                + [_fmt(r[c], ".2f", "x") for c in speed + memory] for _, r in h.iterrows()]
        lines += _md_table(header, rows)
    lines += ["", "### Where softlight loses (memory-lean losses)", ""]
    lost = lean_losses(df)
    lines += [f"- {s}" for s in lost] if lost else ["softlight is the fastest and needs the least peak memory on "
                                                   "every shape timed here."]
    failed = peers_not_timed(df)
    if failed:
        lines += ["", "Peers that were not timed on shapes where softlight was:", ""] + [f"- {s}" for s in failed]
    for op in present:
        sub = df[df.op == op]
        ran = set(sub.provider[~sub.status.isin(["unsupported", "unavailable"])])
        providers = [p for p in [OURS] + peers(df) if p in ran]
        for hidden in sorted(set(sub.hidden)):
            for dtype in [d for d in DTYPES if d in set(sub.dtype)]:
                group = sub[(sub.hidden == hidden) & (sub.dtype == dtype)]
                if group.empty:
                    continue
                title = f"{op}" + (f", hidden size {hidden}" if hidden else "") + f", {dtype}"
                lines += ["", f"### {title}", ""]
                name = plots.stem(op, dtype, hidden)
                for kind, what in (("memory", "peak memory"), ("time", "time"), ("speedup", "speedup over torch")):
                    if f"{kind}-{name}.png" in plot_names:
                        lines += [f"![{title}: {what}](plots/{kind}-{name}.png)", ""]
                column, unit = rate(op)
                for direction in [d for d in DIRECTIONS if d in set(group.direction)]:
                    rows = []
                    per = group[group.direction == direction]
                    for (c, r, hd), shape in per.groupby(["cols", "rows", "hidden"]):
                        by = {p.provider: p for p in shape.itertuples()}
                        ours = by.get(OURS)
                        ours_rate = _fmt(getattr(ours, column), ".1f") if ours is not None and ours.status == "ok" else "-"
                        rows.append([shape_label(r, c, hd), ours_rate] + [_lean_cell(by[p]) if p in by else "-"
                                                                         for p in providers])
                    what = "tokens x vocabulary x hidden" if op in LINEAR_OPS else "rows x cols"
                    lines += [f"#### {op} {direction}, {dtype}", "",
                              "Median time and peak memory above the inputs by provider (`-`: not run or not "
                              "supported).", ""]
                    lines += _md_table([what, f"softlight {unit}"] + providers, rows) + [""]
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
    lines += _environment(df) + ["", HOW_TO_READ] + _summary(df, plot_names)
    not_timed = _not_timed(df)
    lines += ([""] + not_timed) if not_timed else []
    if (folder / STABILITY_PAGE).exists():
        lines += ["", "## Numerical stability", "",
                  f"The adversarial catalogue on this device, in ulps against exact answers: [`{STABILITY_PAGE}`]({STABILITY_PAGE})."]
    lines += _lean(df, plot_names)
    lines += _details(df, plot_names)
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    write_index(out_root)
    return folder


def write_index(out_root) -> Path:
    """reports/README.md: the compile report (if present), the stability pages, the examples'
    figures and every device folder with a table."""
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
    for figure in sorted(root.glob("examples/*.png")):
        script = f"examples/{figure.stem}.py"
        rows.append([f"[`examples/{figure.name}`](examples/{figure.name})", f"the figure of `{script}`",
                     f"`python {script}`"])
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
