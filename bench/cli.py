"""The `softlight` command.

    softlight bench                 check, then time, every op against every provider; writes
                                    reports/<device>/ (results.csv, README.md, plots/)
    softlight report RESULTS.csv    render a report from a results table alone (no GPU needed)
    softlight compare OLD NEW       what got faster or slower between two results tables
    softlight check                 every op against the float64 reference, as a table
    softlight stability             the adversarial catalogue, in ulps against exact answers; writes
                                    reports/<device>/stability.md (.csv, .png)
    softlight compile               ahead-of-time compile of every kernel variant (registers, spills)
    softlight train-step            a Hugging Face causal LM's training step with a real-size head: its own
                                    loss, softlight.hf.patch and Liger's patch; writes reports/<device>/train_step.md

Without a GPU the kernels run through Triton's interpreter: `check`, `stability` and `bench`
restart themselves with TRITON_INTERPRET=1 (which must be set before triton is imported) and say
so. There `bench` takes no timing at all: it checks every op, re-renders the committed reports
and writes the stability study to reports/interpreter/ (correctness does not depend on the device).

Every command but `compile` needs the `bench` extra (pandas, matplotlib, tqdm, mpmath), which the
lean install (`pip install softlight`) leaves out; without it the command names what is missing
and how to install it, and exits with status 2.
"""

import argparse
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

from softlight.bench.spec import DIRECTIONS, LINEAR_OPS, OPS, UsageError, dtype_name, is_linear, parse_shape


# What the lean install (pip install softlight: torch, triton, numpy) leaves out and a command
# needs: the modules of the `bench` extra.
BENCH_EXTRA = "softlight[bench]"
BENCH_MODULES = ("pandas", "matplotlib", "tqdm", "mpmath")


def _missing(modules) -> list[str]:
    """The modules of `modules` that cannot be imported here (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses it, or a broken entry in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def _needs_extra_message(command, modules) -> str:
    return (f"softlight {command}: needs {', '.join(modules)}, which the lean install (torch, triton and numpy "
            f"only) leaves out; install the benchmark's extra: pip install '{BENCH_EXTRA}'\n")


def _ensure_runnable_kernels(argv):
    """Re-exec under the interpreter when there is no GPU and it is not already on."""
    import torch

    from softlight.launch import INTERPRETED

    if INTERPRETED or torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    print("softlight: no CUDA GPU; running the kernels through Triton's interpreter (TRITON_INTERPRET=1)",
          file=sys.stderr, flush=True)
    env = dict(os.environ, TRITON_INTERPRET="1")
    os.execve(sys.executable, [sys.executable, "-P", "-m", "softlight.bench.cli", *argv], env)


def _argument(parse):
    """An argparse type that shows our error message (argparse hides a plain ValueError's)."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    convert.__name__ = parse.__name__
    return convert


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text}")
    return value


def _threshold(text):
    value = float(text)
    if not 0 <= value < 100:
        raise ValueError(f"--threshold must be a fraction >= 0 (0.05 is 5%), got {text}")
    return value


def _selection(p, directions=True):
    p.add_argument("--op", nargs="+", choices=OPS, help="ops (default: all)")
    if directions:
        p.add_argument("--direction", nargs="+", choices=DIRECTIONS, help="directions (default: all)")
    p.add_argument("--dtype", nargs="+", type=_argument(dtype_name), metavar="DTYPE",
                   help="bfloat16, float16, float32 (or bf16, fp16, fp32)")
    p.add_argument("--shape", nargs="+", type=_argument(parse_shape), metavar="ROWSxCOLS[xHIDDEN]",
                   help="shapes, e.g. 4096x32000; the linear ops (linear_cross_entropy, linear_distillation_jsd) take "
                        "tokens x vocabulary x hidden size, e.g. 8192x128256x4096 (without the hidden size: their grid's)")
    p.add_argument("--provider", nargs="+", metavar="PROVIDER",
                   help="registered names (softlight, torch, torch.compile, liger, quack, plugins), "
                        "MODULE:ATTR or NAME=MODULE:ATTR")


def _check_shapes(args):
    """A shape with a hidden size only when every op chosen takes one."""
    with_hidden = ["x".join(map(str, s)) for s in args.shape or [] if len(s) == 3]
    row_ops = [op for op in args.op or OPS if not is_linear(op)]
    if with_hidden and row_ops:
        raise UsageError(f"--shape {with_hidden[0]}: a hidden size applies only to {', '.join(LINEAR_OPS)}, not to "
                         f"{', '.join(row_ops)}; give those ops ROWSxCOLS in a run of their own (--op)")


def _providers(args, default=None):
    from softlight.bench import providers

    return providers.resolve(args.provider or default)


def cmd_check(args) -> int:
    from softlight.bench.check import format_table, run_check

    _check_shapes(args)
    df = run_check(ops=args.op, dtypes=args.dtype, shapes=args.shape, providers=_providers(args, ["softlight"]))
    print(format_table(df))
    failed = df[~df.status.isin(["ok", "unsupported", "unavailable"])]
    unsupported = (df.status == "unsupported").sum()
    unavailable = df[df.status == "unavailable"]
    print(f"\n{(df.status == 'ok').sum()} passed, {len(failed)} failed"
          + (f", {unsupported} not implemented by the provider" if unsupported else "")
          + (f", {len(unavailable)} not run: {', '.join(sorted(set(unavailable.provider)))} could not be imported"
             if len(unavailable) else ""))
    return 1 if len(failed) or len(unavailable) else 0


def _rerender(out) -> int:
    from softlight.bench import report, table

    tables = sorted(Path(out).glob(f"*/{report.RESULTS_NAME}"))
    for path in tables:
        folder = report.render(table.read(path), out, source=path)
        print(f"re-rendered {folder}/ from {path}")
    if not tables:
        report.write_index(out)
        print(f"no results tables under {out}/ yet: nothing to re-render (index {out}/README.md written)")
    return len(tables)


def _bench_without_gpu(args, reason) -> int:
    print(f"softlight bench: {reason}, so NO TIMING IS TAKEN: timings of Triton's interpreter are not "
          "performance and are never recorded.\n"
          "Checking every op against the float64 reference on small shapes instead.\n", flush=True)
    status = cmd_check(args)
    print()
    _rerender(args.out)
    if not args.no_stability:
        print()
        status |= _stability(args.out, dtypes=args.dtype)
    print("\nNo timing was taken (no GPU). Run `make bench` on a machine with an NVIDIA GPU to benchmark.")
    return status


def _stability(out, dtypes=None, cases=None) -> int:
    """Run the stability study into <out>/<device>/ and refresh the index; 1 if softlight gave a
    non-finite output where the exact answer is finite."""
    from softlight.bench import report, stability
    from softlight.bench.spec import slugify

    label = stability.device_label()
    folder = Path(out) / slugify(label)
    print(f"softlight stability on {label}: {len(cases or stability.NAMES)} cases of the catalogue", flush=True)
    df = stability.run_study(dtypes=dtypes, cases=cases)
    title = f"Numerical stability: {label}" + (" (Triton's interpreter on the CPU)" if label == "interpreter" else "")
    stability.write_report(df, str(folder), title)
    report.write_index(out)
    print(stability.summary(df[df.provider.isin(["softlight", "torch"])]).to_string(index=False))
    bad = int(df[df.provider == "softlight"].nonfinite_where_finite.sum())
    print(f"\nwrote {folder}/{stability.PAGE} (.csv, .png); softlight outputs non-finite where the exact answer "
          f"is finite: {bad}")
    return 1 if bad else 0


def cmd_stability(args) -> int:
    from softlight.bench import stability

    names = stability.NAMES
    unknown = [c for c in args.case or [] if c not in names]
    if unknown:
        raise UsageError(f"--case: unknown case(s) {', '.join(map(repr, unknown))}; the catalogue has: {', '.join(names)}")
    cases = args.case or (sorted(stability.QUICK) if args.quick else None)
    return _stability(args.out, dtypes=args.dtype, cases=cases)


def _progress(work):
    from tqdm import tqdm

    bar = tqdm(work, unit="run", dynamic_ncols=True, file=sys.stderr)
    for case, provider in bar:
        bar.set_description(f"{case.op} {case.dtype} {case.label} {provider.name}")
        yield case, provider


def _cases(args, grid):
    """The sweep's cases: each op on its grid (or on --shape), in its grid's dtypes (or --dtype)."""
    from softlight.bench.measure import Case

    row_shapes, row_dtypes = grid.quick_grid() if args.quick else grid.default_grid()
    linear_shapes, linear_dtypes = grid.quick_linear_grid() if args.quick else grid.linear_grid()
    cases = []
    for op in args.op or OPS:
        if is_linear(op):
            given = [s if len(s) == 3 else (*s, grid.LINEAR_HIDDEN) for s in args.shape or []]
            shapes, dtypes = given or linear_shapes, args.dtype or linear_dtypes
        else:
            shapes, dtypes = args.shape or row_shapes, args.dtype or row_dtypes
        cases += [Case(op, dtype, *shape) for dtype in dtypes for shape in shapes]
    return cases


def cmd_bench(args) -> int:
    import torch

    import softlight
    from softlight.bench import grid, report, summary, table
    from softlight.bench.measure import CudaDevice, run_sweep
    from softlight.bench.spec import slugify

    _check_shapes(args)
    if not torch.cuda.is_available():
        return _bench_without_gpu(args, "no CUDA GPU here")
    if softlight.INTERPRETED:
        return _bench_without_gpu(args, "the kernels run on Triton's interpreter (TRITON_INTERPRET=1)")
    chosen = _providers(args)
    cases = _cases(args, grid)
    directions = args.direction or DIRECTIONS
    device = CudaDevice()
    print(f"softlight bench on {device.name}: {len(cases)} op/dtype/shape cases x {len(chosen)} providers "
          f"({', '.join(p.name for p in chosen)}) x {len(directions)} directions", flush=True)
    df = run_sweep(cases, chosen, device, directions, progress=_progress)

    path = Path(args.out) / slugify(device.name) / report.RESULTS_NAME
    if path.exists() and not args.fresh:
        whole = table.merge(table.read(path), df)
        print(f"\nmerged into {path}: {len(df)} results of this run, {len(whole) - len(df)} kept from earlier runs")
    else:
        whole = df
    folder = report.render(whole, args.out)
    print(f"\nreport: {folder}/README.md, table: {path}\n")
    print(summary.format_text(df))
    # A line can be in both lists (token_logprobs is a row op and a memory-lean loss): print it once.
    for line in dict.fromkeys(summary.losses(df) + summary.lean_losses(df) + summary.peers_not_timed(df)):
        print(f"- {line}")
    for provider, group in df[df.status == "unavailable"].groupby("provider"):
        print(f"not timed: {provider} ({group.note.iloc[0]})")
    ours_bad = df[(df.provider == summary.OURS) & df.status.isin(["wrong", "error"])]
    unstable = 0
    if not args.no_stability:
        print()
        unstable = _stability(args.out, dtypes=args.dtype)
    return 1 if len(ours_bad) or unstable else 0


def cmd_report(args) -> int:
    from softlight.bench import report, summary, table

    df = table.read(args.results)
    folder = report.render(df, args.out, source=args.results)
    print(f"report: {folder}/README.md (index: {Path(args.out) / 'README.md'})\n")
    print(summary.format_text(df))
    return 0


def cmd_compare(args) -> int:
    from softlight.bench import compare, table

    result = compare.compare(table.read(args.old), table.read(args.new), args.threshold)
    print(compare.format_text(result, show_all=args.all))
    regressions = result[result.verdict.isin(["regression", "now failing"])]
    if len(regressions):
        print(f"\n{len(regressions)} regression(s): slower by more than {args.threshold:.0%} beyond the p20-p80 "
              "spread, or no longer passing")
        return 1
    return 0


def cmd_train_step(args) -> int:
    import torch

    import softlight
    from softlight.bench import train_step
    from softlight.bench.spec import slugify

    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"needs transformers ({exc}): pip install 'softlight[hf]'") from exc
    unknown = [name for name in args.provider or [] if name not in train_step.PROVIDERS]
    if unknown:
        raise UsageError(f"--provider: {', '.join(unknown)} unknown; train-step has {', '.join(train_step.PROVIDERS)}")
    if args.tokens and args.tokens % 2:
        raise UsageError(f"--tokens must be even (2 sequences of tokens / 2), got {args.tokens}")
    timed = torch.cuda.is_available() and not softlight.INTERPRETED
    defaults = train_step.GPU_SHAPES if timed else train_step.CPU_SHAPES
    changes = {name: value for name, value in (("tokens", args.tokens), ("layers", args.layers)) if value}
    shapes = [dataclasses.replace(defaults[0], vocab=vocab, **changes)
              for vocab in args.vocab or [s.vocab for s in defaults]]
    if not timed:
        print("softlight train-step: no CUDA GPU (or TRITON_INTERPRET=1), so NO TIMING IS TAKEN; checking each "
              "provider's loss and head gradient against the model's own on a small model instead.\n", flush=True)
    df = train_step.run(shapes, args.provider, train_step.StepTimer() if timed else None)
    shown = ["provider", "vocab", "tokens", "hidden", "layers", "status", "ms_p50", "peak_mem_bytes", "loss_error",
             "grad_error", "note"]
    print(df[shown].to_string(index=False))
    if timed:
        folder = Path(args.out) / slugify(df.device.iloc[0])
        folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / "train_step.csv", index=False)
        (folder / "train_step.md").write_text(train_step.to_markdown(df))
        print(f"\nwrote {folder}/train_step.md (.csv)")
    ours = df[df.provider == "softlight"]
    return 1 if (~ours.status.isin(["ok"])).any() else 0


def cmd_compile(args) -> int:
    from softlight.bench import aot

    return aot.main(["--arch", *map(str, args.arch)] + (["--out", args.out] if args.out else []))


def _command(sub, name, summary, description, needs=()):
    """A subcommand: `summary` is its line in `softlight --help`, `description` heads its own
    --help; `needs` are the modules of the bench extra it imports."""
    p = sub.add_parser(name, help=summary, description=description)
    p.set_defaults(needs=needs)
    return p


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="softlight",
        description="softlight's kernels checked against the float64 reference, benchmarked against their peers, "
                    "and reported. Every command but compile needs the benchmark's extra "
                    f"(pip install '{BENCH_EXTRA}').")
    sub = top.add_subparsers(dest="command", required=True)

    p = _command(sub, "bench", "check, then time, every op against every provider; write reports/<device>/",
                 "Check every op against the float64 reference, then time it against every provider, and write the "
                 "results table, report page and plots to OUT/<device>/, then the stability study. Without a GPU "
                 "nothing is timed: every op is checked on small shapes and the committed reports are re-rendered.",
                 needs=("pandas", "matplotlib", "tqdm", "mpmath"))
    _selection(p)
    p.add_argument("--quick", action="store_true", help="a small grid: 4 column counts and one rows point, bf16 only "
                                                        "(the linear ops: 8192 tokens, vocabulary 32000 and 262144)")
    p.add_argument("--out", default="reports", help="reports folder (default: reports)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new results table instead of merging into the device's existing one")
    p.add_argument("--no-stability", action="store_true",
                   help="skip the stability study that bench runs last (see softlight stability)")
    p.set_defaults(run=cmd_bench, needs_kernels=True)

    p = _command(sub, "report", "render a report from a results table alone (no GPU needed)",
                 "Render the report page and plots of a results table written by softlight bench, from the table "
                 "alone: no GPU and no kernels are needed.", needs=("pandas", "matplotlib"))
    p.add_argument("results", help="a results table (CSV) written by softlight bench")
    p.add_argument("--out", default="reports", help="reports folder; the report goes to OUT/<device>/ (default: reports)")
    p.set_defaults(run=cmd_report, needs_kernels=False)

    p = _command(sub, "compare", "what got faster or slower between two results tables; exit 1 on a regression",
                 "Compare two results tables of one device shape by shape. A result counts as faster or slower only "
                 "when the two runs' p20-p80 spreads do not overlap; a slowdown beyond the threshold, or a result "
                 "that no longer passes, is a regression and makes the command exit with status 1.",
                 needs=("pandas",))
    p.add_argument("old", help="the baseline results table (CSV)")
    p.add_argument("new", help="the results table to judge (CSV)")
    p.add_argument("--threshold", type=_argument(_threshold), default=0.05,
                   help="a slowdown beyond the spread counts as a regression past this fraction (default: 0.05)")
    p.add_argument("--all", action="store_true", help="also list the results that did not change beyond the noise")
    p.set_defaults(run=cmd_compare, needs_kernels=False)

    p = _command(sub, "check", "verify every op against the float64 reference",
                 "Check every op's output and gradient against the float64 reference on fresh random inputs, for "
                 "softlight or the providers given, beside torch's error for scale. Nothing is timed, so it runs on "
                 "Triton's interpreter too.", needs=("pandas",))
    _selection(p, directions=False)
    p.set_defaults(run=cmd_check, needs_kernels=True)

    p = _command(sub, "stability", "the adversarial catalogue through softlight, torch and the references, "
                                   "in ulps against exact answers; write reports/<device>/stability.md",
                 "Run the adversarial catalogue (huge and tiny logits, ties, masked rows, infinities, NaN, long rows) "
                 "through softlight, torch and the naive and stable float64 formulas, measure each output in ulps "
                 "against the exact answer, and write a table, a page and a plot to OUT/<device>/.",
                 needs=("pandas", "matplotlib", "mpmath"))
    p.add_argument("--dtype", nargs="+", type=_argument(dtype_name), metavar="DTYPE",
                   help="bfloat16, float16, float32 (or bf16, fp16, fp32; default: all)")
    p.add_argument("--case", nargs="+", metavar="CASE", help="cases of the catalogue, by name (default: all)")
    p.add_argument("--quick", action="store_true", help="only a few representative cases")
    p.add_argument("--out", default="reports", help="reports folder; the page goes to OUT/<device>/ (default: reports)")
    p.set_defaults(run=cmd_stability, needs_kernels=True)

    p = _command(sub, "train-step", "a Hugging Face causal LM's training step: its own loss against softlight.hf.patch "
                 "and Liger's patch, time and peak memory",
                 "Time one training step of a Hugging Face causal LM with a real-size head (on a GPU), with the "
                 "model's own loss, with softlight.hf.patch and with Liger's patch, after checking each against the "
                 "model's own loss and head gradient; without a GPU, only the check on a tiny model.",
                 needs=("pandas",))  # transformers: its own message names the hf extra
    p.add_argument("--vocab", type=_argument(_positive_int), nargs="+",
                   help="vocabularies (default: 128256 262144 on a GPU)")
    p.add_argument("--tokens", type=_argument(_positive_int), help="tokens a step (default: 8192 on a GPU)")
    p.add_argument("--layers", type=_argument(_positive_int), help="decoder layers (default: 2 on a GPU)")
    p.add_argument("--provider", nargs="+", metavar="PROVIDER",
                   help="transformers, softlight, liger (default: all; the model's own loss, transformers, always "
                        "runs: the baseline)")
    p.add_argument("--out", default="reports",
                   help="reports folder; the page goes to OUT/<device>/ (default: reports)")
    p.set_defaults(run=cmd_train_step, needs_kernels=True)

    p = _command(sub, "compile", "compile every kernel variant ahead of time; report registers and spills",
                 "Compile every kernel variant ahead of time for the GPU architectures given, with Triton's own "
                 "compiler and no GPU, and report each variant's registers, spills and vector loads; a compile "
                 "error makes the command fail.")
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities (default: 90 80)")
    p.add_argument("--out", help="also write the Markdown table here")
    p.set_defaults(run=cmd_compile, needs_kernels=False)
    return top


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = parser()
    args = top.parse_args(argv)
    missing = _missing(args.needs)
    if missing:
        top.exit(2, _needs_extra_message(args.command, missing))
    if args.needs_kernels:
        _ensure_runnable_kernels(argv)
    try:
        return args.run(args)
    except (UsageError, FileNotFoundError) as exc:
        # Bad input (a table that is not one, a provider that cannot be loaded): say what, no traceback.
        top.exit(2, f"softlight {args.command}: error: {exc}\n")
    except ModuleNotFoundError as exc:
        # A module of the bench extra that the command imports without having declared it.
        if (exc.name or "").partition(".")[0] not in BENCH_MODULES:
            raise
        top.exit(2, _needs_extra_message(args.command, [exc.name.partition(".")[0]]))


if __name__ == "__main__":
    sys.exit(main())
