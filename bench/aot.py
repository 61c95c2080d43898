"""Ahead-of-time compile of every kernel variant for a GPU target, with no GPU needed.

The interpreter runs kernels as Python and never meets the compiler, so compile-only errors
(type mismatches in lowering, unsupported ops for a dtype, register spills) would first show on
a GPU. This module asks each op module's `kernel_launches` hook for the launches of a shape
(the real launch code, run on torch's "meta" device, recording instead of launching), rebuilds
the signature Triton's runtime would specialize it with (pointer
dtypes, 16-byte alignment, integers equal to 1 or divisible by 16), and compiles it with
`triton.compile` for sm_90 / sm_80. `cuobjdump --dump-resource-usage` then reads registers,
spill (local) memory and shared memory off each cubin.

    python -m softlight.bench.aot --arch 90 80 --out reports/compile.md

Run it without TRITON_INTERPRET: interpreted kernels cannot be compiled.
"""

import argparse
import functools
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from softlight import cross_entropy_op, distillation_op, launch, softmax_op, token_logprobs_op

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}
DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


@dataclass
class Launch:
    """One kernel launch as the runtime would specialize it."""

    name: str
    kernel: triton.runtime.JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int


def _specialize(made: launch.KernelLaunch, label: str) -> Launch:
    kernel, args, constexprs, num_warps = made.kernel, made.args, made.constexprs, made.num_warps
    names = kernel.arg_names
    signature, consts, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_DTYPE[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # fresh allocations are 16-byte aligned
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:  # the runtime turns an int equal to 1 into a constant
                signature[name], consts[name] = "constexpr", 1
                continue
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"cannot specialize argument {name}={value!r}")
    for name in names[len(args):]:
        signature[name], consts[name] = "constexpr", constexprs[name]
    flags = [f"{k}={v}" for k, v in constexprs.items() if k != "ACC" and not isinstance(v, bool)]
    flags += [k for k, v in constexprs.items() if v is True]
    name = f"{kernel.__name__}[{label}, {', '.join(flags)}]"
    return Launch(name, kernel, signature, consts, attrs, num_warps)


def _labelled(launches, label):
    return [(made, label) for made in launches]


def _softmax_launches():
    row_limit = launch.policy().row_block_limit
    found = []
    for dtype in DTYPE_NAME:
        # A short row, rows at the on-chip limits of backward and forward, a streamed row, and an
        # odd vocabulary (50257) whose rows are not 16-byte aligned, which rules out vector loads.
        for n_cols in (1024, row_limit // 2, row_limit, 4 * row_limit, 50257):
            for log in (False, True):
                found += _labelled(softmax_op.kernel_launches((64, n_cols), dtype, log=log),
                                   f"{DTYPE_NAME[dtype]}, {n_cols} cols")
    return found


CROSS_ENTROPY_OPTIONS = {
    # name: keyword options of cross_entropy_op.kernel_launches
    "index": dict(),
    "index+weight+smoothing+softcap": dict(class_weight=True, label_smoothing=0.1, softcap=30.0),
    "probabilities+weight+softcap": dict(probabilities=True, class_weight=True, softcap=30.0),
}


def _cross_entropy_launches():
    found = []
    for dtype in DTYPE_NAME:
        for n_cols in (32768, 50257, 262144):
            for name, options in CROSS_ENTROPY_OPTIONS.items():
                for rows, split in ((4096, False), (4, True)):
                    # A gradient flowing into the returned LSE (return_lse) is a variant of its own.
                    for lse_grad in (False, True) if name == "index" else (False,):
                        with launch.use_policy(target_programs=528 if split else 1):  # 4 per SM on an H100
                            made = cross_entropy_op.kernel_launches((rows, n_cols), dtype, z_loss=1e-4,
                                                                    lse_grad=lse_grad, **options)
                        found += _labelled(made, f"{DTYPE_NAME[dtype]}, {n_cols} cols, {name}")
    return found


def _token_logprobs_launches():
    found = []
    for dtype in DTYPE_NAME:
        # A row of whole blocks, and an odd vocabulary (50257) whose rows are not 16-byte aligned.
        for n_cols in (32768, 50257):
            label = f"{DTYPE_NAME[dtype]}, {n_cols} cols"
            found += _labelled(token_logprobs_op.kernel_launches((64, n_cols), dtype), label)
            # The gradient of log p alone, of the entropy alone, and of both.
            for grads in (("logp",), ("entropy",), ("logp", "entropy")):
                found += _labelled(token_logprobs_op.kernel_launches((64, n_cols), dtype, return_entropy=True,
                                                                     grads=grads), label)
    return found


def _distillation_launches():
    found = []
    for dtype in DTYPE_NAME:
        # The KL (with the teacher's gradient too) and the JSD on an odd vocabulary (50257, rows not
        # 16-byte aligned) with rows skipped by a target; in bf16 also the KL on whole blocks without
        # a target (vector loads). The reverse KL is the KL's code with the roles swapped.
        for divergence in ("kl", "jsd"):
            found += _labelled(distillation_op.kernel_launches((64, 50257), dtype, divergence=divergence, target=True,
                                                               teacher_grad=divergence == "kl"),
                               f"{DTYPE_NAME[dtype]}, 50257 cols, {divergence}")
        if dtype == torch.bfloat16:
            found += _labelled(distillation_op.kernel_launches((64, 32768), dtype), "bf16, 32768 cols, kl")
    return found


def variants():
    """Every kernel variant the launch code produces: each dtype, each strategy, each option set."""
    launches = [_specialize(made, label) for made, label in
                _softmax_launches() + _cross_entropy_launches() + _token_logprobs_launches()
                + _distillation_launches()]
    # The same kernel variant reached from several row lengths is compiled once.
    unique = {}
    for variant in launches:
        key = (variant.kernel.__name__, repr(variant.signature), repr(variant.constexprs), repr(variant.attrs),
               variant.num_warps)
        unique.setdefault(key, variant)
    return list(unique.values())


def compile_one(launch: Launch, arch: int):
    src = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})


def resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in fields.items()}


# Spill bytes a variant may have before it counts as failed: ptxas sometimes parks a 64-bit
# pointer or two in the stack frame across the main loop (one store before, one load after),
# which costs nothing measurable; more than that means registers are short in the hot loop.
SPILL_ALLOWANCE = 16


@functools.cache
def _variants():
    return variants()


def _compile_row(job):
    """Compile variant `index` for `arch`: its table row, and whether it failed."""
    arch, index = job
    launch = _variants()[index]
    try:
        compiled = compile_one(launch, arch)
        use = resource_usage(compiled.asm["cubin"])
        loads = sorted(set(re.findall(r"ld\.global(?:\.\w+)*?\.(v[248])\.", compiled.asm["ptx"])))
        spills = use.get("local", 0) + use.get("stack", 0)
        status = "ok" if spills == 0 else f"spills {spills} B" + (" (too many)" if spills > SPILL_ALLOWANCE else "")
        row = (f"sm_{arch}", launch.name, launch.num_warps, use.get("reg"), use.get("local"), use.get("stack"),
               use.get("shared"), ",".join(loads) or "scalar", status)
        return row, spills > SPILL_ALLOWANCE
    except Exception as e:  # a compile error is the finding: record it and go on
        msg = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        return (f"sm_{arch}", launch.name, launch.num_warps, "-", "-", "-", "-", "-", f"FAILED: {msg}"), True


def report(archs, out=None, stream=sys.stdout) -> int:
    """Compile every variant for every arch; print a Markdown table; return how many failed to
    compile or spilled more than SPILL_ALLOWANCE bytes (stack frame or local memory)."""
    jobs = [(arch, i) for arch in archs for i in range(len(_variants()))]
    # Compiles are independent: one process per core (forked, so each already has the kernels).
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_compile_row, jobs, chunksize=4))
    rows = [row for row, _ in results]
    failures = sum(failed for _, failed in results)
    header = ("target", "kernel variant", "warps", "registers", "local bytes", "stack bytes", "shared bytes", "vector loads", "status")
    lines = [
        "# Ahead-of-time compile report",
        "",
        f"triton {triton.__version__}, torch {torch.__version__}. Every variant compiled with `triton.compile` for the "
        "targets below; registers, spill (local) bytes, stack and shared memory from `cuobjdump --dump-resource-usage`; "
        "vector loads are the widths of the `ld.global` vector instructions in the PTX. "
        f"A variant fails if it does not compile or spills more than {SPILL_ALLOWANCE} bytes.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    stream.write(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    if launch.INTERPRETED:
        parser.error("TRITON_INTERPRET is set: interpreted kernels cannot be compiled; unset it")
    failures = report(args.arch, args.out)
    if failures:
        print(f"{failures} variant(s) failed to compile", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
