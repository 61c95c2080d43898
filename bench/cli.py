"""The `softlight` command.

    softlight check      every kernel against the float64 reference, as a table
    softlight compile    ahead-of-time compile of every kernel variant (registers, spills)

Without a GPU the kernels run through Triton's interpreter: the command restarts itself with
TRITON_INTERPRET=1 (which must be set before triton is imported) and says so.
"""

import argparse
import os
import sys


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


def cmd_check(args) -> int:
    from softlight.bench.check import format_table, run_check

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shape] if args.shape else None
    df = run_check(ops=args.op, dtypes=args.dtype, shapes=shapes)
    print(format_table(df))
    failed = df[df.status != "ok"]
    print(f"\n{len(df) - len(failed)} passed, {len(failed)} failed")
    return 1 if len(failed) else 0


def cmd_compile(args) -> int:
    from softlight.bench import aot

    return aot.main(["--arch", *map(str, args.arch)] + (["--out", args.out] if args.out else []))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="softlight", description="softlight kernels: check, compile")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="verify every kernel against the float64 reference")
    p.add_argument("--op", nargs="+", choices=["softmax", "log_softmax"], help="ops (default: all)")
    p.add_argument("--dtype", nargs="+", choices=["float32", "float16", "bfloat16"], help="dtypes (default: all)")
    p.add_argument("--shape", nargs="+", metavar="ROWSxCOLS", help="shapes, e.g. 4x1000 (default: a small grid)")
    p.set_defaults(run=cmd_check, needs_kernels=True)

    p = sub.add_parser("compile", help="compile every kernel variant ahead of time; report registers and spills")
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities (default: 90 80)")
    p.add_argument("--out", help="also write the Markdown table here")
    p.set_defaults(run=cmd_compile, needs_kernels=False)

    args = parser.parse_args(argv)
    if args.needs_kernels:
        _ensure_runnable_kernels(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
