"""Every kernel variant compiles ahead of time for sm_90 and sm_80, without spilling registers.

The interpreter never runs Triton's compiler, so this is where compile-only errors show without
a GPU. The compile runs in a fresh process without TRITON_INTERPRET (interpreted kernels cannot
be compiled) and an empty Triton cache (so nothing is skipped); its table of registers and
spills is printed (pytest -s shows it) and kept as a test artifact.
"""

import os
import re
import subprocess
import sys


def test_every_variant_compiles_for_sm90_and_sm80(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    table = tmp_path / "compile.md"
    run = subprocess.run(
        [sys.executable, "-m", "softlight.bench.aot", "--arch", "90", "80", "--out", str(table)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| sm_")]
    assert not [r for r in rows if "FAILED" in r or "too many" in r]
    for arch in ("sm_90", "sm_80"):
        for dtype in ("fp16", "bf16", "fp32", "fp64"):
            def variants(kernel):
                return [r for r in rows if r.startswith(f"| {arch} | {kernel}[{dtype},")]

            for kernel in ("softmax_forward_kernel", "softmax_backward_kernel"):
                assert any("SINGLE_BLOCK" in r for r in variants(kernel)), (arch, kernel, dtype, "single block")
                assert any("SINGLE_BLOCK" not in r for r in variants(kernel)), (arch, kernel, dtype, "streamed")
            forward = variants("cross_entropy_forward_kernel")
            assert any("SOFT_TARGET" in r for r in forward) and any("SOFT_TARGET" not in r for r in forward)
            assert any("SPLIT" in r for r in forward) and variants("cross_entropy_combine_kernel")
            assert any("HAS_WEIGHT, HAS_SOFTCAP, SMOOTH" in r for r in variants("cross_entropy_backward_kernel"))
            forward = variants("token_logprobs_forward_kernel")
            assert any("ENTROPY" in r for r in forward) and any("ENTROPY" not in r for r in forward)
            backward = variants("token_logprobs_backward_kernel")
            for flags in ("LOGP_GRAD", "ENTROPY_GRAD", "LOGP_GRAD, ENTROPY_GRAD"):  # each gradient alone, both
                assert any(re.search(rf"BLOCK=\d+, {flags}(, PRECISE)?\]", r) for r in backward), (arch, dtype, flags)
            for divergence in ("DIVERGENCE=0", "DIVERGENCE=2"):  # the KL and the JSD, forward and backward
                for kernel in ("distillation_forward_kernel", "distillation_backward_kernel"):
                    assert any(divergence in r for r in variants(kernel)), (arch, dtype, kernel, divergence)
