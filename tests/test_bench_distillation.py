"""The benchmark's distillation ops: their work models, providers, reference checks, the check
command and the measurement loop (with the fake timer)."""

import math

import pytest
import torch

from bench_fakes import FakeDevice
from softlight.bench import measure, ops, providers
from softlight.bench.cli import main
from softlight.bench.measure import Case
from softlight.bench.spec import DISTILLATION_OPS, LEAN_OPS, LINEAR_OPS, ROW_OPS, bytes_moved, matmul_flops

ALL = DISTILLATION_OPS + ("linear_distillation_jsd",)


def test_work_models():
    n, v, h = 6, 50257, 4096
    for op in DISTILLATION_OPS:
        assert op in ROW_OPS and op in LEAN_OPS
        assert bytes_moved(op, "forward", n, v, "bfloat16") == 2 * n * v * 2  # both logits read once
        assert bytes_moved(op, "backward", n, v, "float32") == 3 * n * v * 4  # and the student's gradient written
        assert bytes_moved(op, "forward+backward", n, v, "bfloat16") == 3 * n * v * 2
    op = "linear_distillation_jsd"
    assert op in LINEAR_OPS and op in LEAN_OPS
    matmul = 2 * n * h * v
    assert [matmul_flops(op, d, n, v, h) for d in ("forward", "backward", "forward+backward")] == [
        2 * matmul, 2 * matmul, 4 * matmul]  # both models' logits; the student's two gradients


def test_providers_agree_with_the_reference():
    """softlight and torch on each op, every direction within tolerance; Liger only where installed."""
    g = torch.Generator().manual_seed(3)
    for op in ALL:
        inputs = ops.make_inputs(op, 5, 70, "float32", "cpu", g, hidden=8 if op in LINEAR_OPS else 0)
        assert inputs.teacher is not None and not inputs.teacher.requires_grad
        reference = ops.Reference(inputs, g)
        for name in ("softlight", "torch"):
            impl = providers.BUILTIN[name].implementation(op)
            verdicts = ops.verify(inputs, reference, impl.fn)
            assert all(v.ok for v in verdicts.values()), (op, name, verdicts)
        # A wrong JSD (beta 0.3 for 0.5) is caught, forward and backward.
        if op == "distillation_jsd":
            import softlight

            wrong = ops.verify(inputs, reference, lambda s, t: softlight.distillation_loss(s, t, divergence="jsd",
                                                                                           beta=0.3))
            assert not wrong["forward"].ok and not wrong["backward"].ok
    assert "not timed alone" in providers.BUILTIN["softlight"].implementation("linear_distillation_jsd").note


def test_check_covers_the_distillation_ops(capsys):
    status = main(["check", "--op", *ALL, "--dtype", "fp32", "bf16", "--shape", "3x64"])
    out = capsys.readouterr().out
    assert status == 0
    assert "12 passed, 0 failed" in out  # 3 ops x 2 dtypes x forward and backward


def test_measurement_loop_times_them():
    cases = [Case("distillation_kl", "float32", 3, 64), Case("distillation_jsd", "bfloat16", 4, 50),
             Case("linear_distillation_jsd", "float32", 5, 40, 8)]
    df = measure.run_sweep(cases, providers.resolve(["softlight", "torch"]), FakeDevice(), seed=2)
    for case in cases:
        for provider in ("softlight", "torch"):
            rows = df[(df.op == case.op) & (df.provider == provider)].set_index("direction")
            expected = ["ok"] * 3
            if case.op in LINEAR_OPS and provider == "softlight":
                expected[1] = "unsupported"  # its backward only rescales the gradients made in forward
            assert list(rows.status) == expected, (case, provider, list(rows.note))
            timed = rows[rows.status == "ok"]
            if case.op in LINEAR_OPS:
                assert timed.tflops.notna().all() and timed.bytes.isna().all()
            else:
                assert list(timed.bytes) == [bytes_moved(case.op, d, case.rows, case.cols, case.dtype)
                                             for d in timed.index]
                assert all(math.isfinite(v) for v in timed.gbps)


@pytest.mark.parametrize("op", ALL)
def test_liger_is_unavailable_or_runs(op):
    """Without Liger installed the provider says so (ImportError); with it, it returns a function."""
    try:
        impl = providers.BUILTIN["liger"].implementation(op)
    except ImportError:
        return
    assert impl is None or callable(impl.fn)
