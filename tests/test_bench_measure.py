"""The measurement loop on the CPU with an injected fake timer: every provider is checked
against the reference, then timed, and the table's arithmetic follows from the timings.

The fake device's numbers are never performance and never reach reports/: the tables here stay
in memory or under tmp_path.
"""

import math
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from bench_fakes import FakeDevice

import softlight
from softlight import reference as ref
from softlight.bench import measure, ops, providers, table
from softlight.bench.measure import Case
from softlight.bench.spec import bytes_moved, matmul_flops

MODULE = "softlight_test_measure_providers"


def importable_module(folder, name, source):
    """Write `source` as module `name` in `folder`, yield it imported, then forget it."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        yield __import__(name)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def user_providers(tmp_path_factory):
    yield from importable_module(tmp_path_factory.mktemp("providers"), MODULE, """
        import torch
        from softlight.bench.providers import Impl

        CALLS = {"wrong": 0}

        def wrong(op):
            def off_by_one_percent(x, *rest):
                CALLS["wrong"] += 1
                return (torch.softmax(x, -1) * 1.01) if op != "cross_entropy" else (
                    torch.nn.functional.cross_entropy(x, *rest) * 1.01)
            return off_by_one_percent

        def missing_library(op):
            raise ImportError("no module named fastsoftmax")

        def raises(op):
            def fn(x, *rest):
                if not x.requires_grad:
                    raise RuntimeError("kernel launch failed")
                return torch.softmax(x, -1)
            return fn if op == "softmax" else None

        def forward_only(op):
            if op == "softmax":
                return Impl(lambda x: torch.softmax(x, -1), directions=("forward",), note="no backward of its own")
            return None
    """)


@pytest.fixture(scope="module")
def run(user_providers):
    device = FakeDevice()
    chosen = providers.resolve(["softlight", "torch"] + [f"{MODULE}:{n}" for n in
                                                         ("wrong", "missing_library", "raises", "forward_only")])
    cases = [Case("softmax", "float32", 3, 64), Case("cross_entropy", "float32", 3, 64)]
    df = measure.run_sweep(cases, chosen, device, seed=1)
    return df.set_index(["op", "direction", "provider"]), device, user_providers


def test_correct_providers_are_checked_then_timed(run):
    df, _, _ = run
    for op in ("softmax", "cross_entropy"):
        for provider in ("softlight", "torch"):
            rows = df.loc[(op, slice(None), provider), :]
            assert list(rows.status) == ["ok"] * 3
            assert (rows.max_error <= rows.tolerance).all() and rows.max_error.notna().all()


def test_table_arithmetic_follows_from_the_timer(run):
    df, device, _ = run
    ceiling = 2 * device.ceiling_bytes / (device.ms * 1e-3) / 1e9
    for (op, direction, provider), row in df[df.status == "ok"].iterrows():
        n_bytes = bytes_moved(op, direction, 3, 64, "float32")
        assert row.bytes == n_bytes
        assert (row.ms_p50, row.ms_p20, row.ms_p80) == (2.0, 1.8, 2.4)
        assert row.gbps == pytest.approx(n_bytes / 2e-3 / 1e9)
        assert row.ceiling_gbps == pytest.approx(ceiling)
        assert row.pct_of_ceiling == pytest.approx(100 * n_bytes / (2 * device.ceiling_bytes))
        assert row.peak_mem_bytes == 4096
    # Each timed row was timed once, and the ceiling once.
    assert device.timed == (df.status == "ok").sum() + 1


def test_a_wrong_provider_is_reported_wrong_and_never_timed(run):
    df, _, module = run
    for op in ("softmax", "cross_entropy"):
        rows = df.loc[(op, slice(None), "wrong"), :]
        assert list(rows.status) == ["wrong"] * 3
        assert rows.ms_p50.isna().all() and rows.gbps.isna().all()
        assert (rows.max_error > rows.tolerance).all()
        assert rows.note.str.contains("tolerance").all()
    # Two calls per op, both in the check (without and with grad); none was timed.
    assert module.CALLS["wrong"] == 4


def test_unavailable_failing_and_partial_providers(run):
    df, _, _ = run
    missing = df.loc[("softmax", slice(None), "missing_library"), :]
    assert set(missing.status) == {"unavailable"}
    assert set(missing.note) == {"ImportError: no module named fastsoftmax"}
    raising = df.loc[("softmax", slice(None), "raises"), :]
    assert set(raising.status) == {"error"} and raising.note.str.contains("kernel launch failed").all()
    assert set(df.loc[("cross_entropy", slice(None), "raises"), "status"]) == {"unsupported"}
    partial = df.loc[("softmax", slice(None), "forward_only"), :]
    assert list(partial.status) == ["ok", "unsupported", "unsupported"]
    assert partial.note.iloc[1] == "no backward of its own"


def test_run_table_passes_the_schema(run, tmp_path):
    df, _, _ = run
    flat = df.reset_index()
    table.write(flat[table.COLUMNS], tmp_path / "results.csv")
    again = table.read(tmp_path / "results.csv")
    assert set(again.device) == {"fake timer (not measured)"}
    assert again.date.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    assert set(again.torch) == {torch.__version__}


def test_directions_can_be_chosen():
    df = measure.run_sweep([Case("log_softmax", "bfloat16", 2, 32)], providers.resolve(["softlight"]),
                           FakeDevice(), directions=["backward"], seed=2)
    assert list(df.direction) == ["backward"] and list(df.status) == ["ok"]


def test_cuda_device_refuses_the_interpreter():
    if not softlight.INTERPRETED:
        pytest.skip("compiled kernels: CudaDevice is the real thing here")
    with pytest.raises(RuntimeError, match="not performance|no CUDA GPU"):
        measure.CudaDevice()


def test_outputs_are_checked_on_a_sample_of_rows_including_the_last():
    g = torch.Generator().manual_seed(0)
    rows = ops._sample_rows(100_000, 8192, g)
    assert rows[0] == 0 and rows[-1] == 100_000 - 1
    assert len(rows) == ops.SAMPLE_ELEMENTS // 8192 and len(set(rows)) == len(rows)
    assert list(ops._sample_rows(5, 8192, g)) == [0, 1, 2, 3, 4]


def test_mean_loss_reference_in_chunks_equals_the_whole(monkeypatch):
    x = torch.randn(37, 50) * 4
    target = torch.randint(0, 50, (37,))
    monkeypatch.setattr(ops, "SAMPLE_ELEMENTS", 200)  # four rows per chunk
    chunked = float(ops._mean_cross_entropy(x, target))
    whole = ref.cross_entropy(x.double().numpy(), target.numpy())
    assert chunked == pytest.approx(float(whole), rel=1e-12)


def test_verify_names_shape_and_differentiability_problems():
    g = torch.Generator().manual_seed(0)
    inputs = ops.make_inputs("softmax", 2, 16, "float32", "cpu", g)
    reference = ops.Reference(inputs, g)
    transposed = ops.verify(inputs, reference, lambda x: torch.softmax(x, -1).t())
    assert not transposed["forward"].ok and "shape" in transposed["forward"].note
    detached = ops.verify(inputs, reference, lambda x: torch.softmax(x, -1).detach())
    assert detached["forward"].ok and not detached["backward"].ok
    assert "not differentiable" in detached["backward"].note
    good = ops.verify(inputs, reference, lambda x: torch.softmax(x, -1))
    assert all(v.ok for v in good.values())
    assert math.isfinite(good["forward+backward"].error)


def test_timed_calls_return_gradients_without_accumulating():
    g = torch.Generator().manual_seed(0)
    inputs = ops.make_inputs("softmax", 2, 16, "float32", "cpu", g)
    backward = ops.timed_call(inputs, lambda x: torch.softmax(x, -1), "backward")
    first, second = backward()[0], backward()[0]
    torch.testing.assert_close(first, second)
    y = np.asarray(torch.softmax(inputs.x, -1))
    np.testing.assert_allclose(first.numpy(), ref.softmax_backward(y, inputs.dy.numpy()), rtol=1e-4, atol=1e-7)


def test_a_shape_that_cannot_be_set_up_is_an_error_and_the_sweep_goes_on(monkeypatch):
    real = measure.make_inputs

    def make_inputs(op, rows, cols, *args):
        if rows == 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 64 GiB")
        return real(op, rows, cols, *args)

    monkeypatch.setattr(measure, "make_inputs", make_inputs)
    cases = [Case("softmax", "float32", 5, 16), Case("softmax", "float32", 2, 16)]
    df = measure.run_sweep(cases, providers.resolve(["torch"]), FakeDevice(), directions=["forward"], seed=3)
    assert list(df.status) == ["error", "ok"]
    assert df.note.iloc[0] == "inputs or reference: RuntimeError: CUDA out of memory. Tried to allocate 64 GiB"


def test_a_provider_that_overwrites_its_input_does_not_spoil_the_next():
    def clobbers(op):
        def fn(x):
            y = torch.softmax(x, -1)
            x.detach().zero_()  # as a kernel writing its gradient into the logits would
            return y
        return fn

    chosen = [providers.Provider("clobbers", clobbers, "test"), *providers.resolve(["torch"])]
    df = measure.run_sweep([Case("softmax", "float32", 3, 16)], chosen, FakeDevice(), seed=4)
    assert set(df.status) == {"ok"}


def test_sweep_inputs_are_checked():
    with pytest.raises(ValueError, match="Case.op"):
        Case("gelu", "float32", 1, 8)
    with pytest.raises(ValueError, match="Case.rows"):
        Case("softmax", "float32", 0, 8)
    with pytest.raises(ValueError, match="dtype"):
        Case("softmax", "int8", 1, 8)
    assert Case("softmax", "bf16", 1, 8).dtype == "bfloat16"
    torch_only = providers.resolve(["torch"])
    with pytest.raises(ValueError, match="directions"):
        measure.run_sweep([Case("softmax", "float32", 1, 8)], torch_only, FakeDevice(), directions=["up"])
    with pytest.raises(ValueError, match="providers"):
        measure.run_sweep([Case("softmax", "float32", 1, 8)], [], FakeDevice())


# The memory-lean losses: token_logprobs (a row op) and linear_cross_entropy (hidden states and a
# weight, measured in flops), with user providers that are wrong in one place each.

LEAN_MODULE = "softlight_test_measure_lean_providers"


@pytest.fixture(scope="module")
def lean_providers(tmp_path_factory):
    yield from importable_module(tmp_path_factory.mktemp("lean_providers"), LEAN_MODULE, """
        import torch
        import torch.nn.functional as F


        def off(op):
            # One percent off in the output, and so in every gradient.
            if op == "token_logprobs":
                return lambda x, ids: torch.log_softmax(x.float(), -1).gather(-1, ids[:, None])[:, 0] * 1.01
            if op == "linear_cross_entropy":
                return lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t) * 1.01
            return None


        class Nudged(torch.autograd.Function):
            # The identity forward; backward makes the gradient one percent too large.
            @staticmethod
            def forward(ctx, t):
                return t.clone()

            @staticmethod
            def backward(ctx, grad):
                return grad * 1.01


        def weight_gradient_off(op):
            if op == "linear_cross_entropy":
                return lambda h, w, t: F.cross_entropy(F.linear(h, Nudged.apply(w)).float(), t)
            return None


        def hidden_gradient_off(op):
            if op == "linear_cross_entropy":
                return lambda h, w, t: F.cross_entropy(F.linear(Nudged.apply(h), w).float(), t)
            return None
    """)


LEAN_CASES = [Case("token_logprobs", "float32", 3, 64), Case("linear_cross_entropy", "float32", 5, 40, 8),
              Case("linear_cross_entropy", "bfloat16", 6, 50, 8)]


@pytest.fixture(scope="module")
def lean_run(lean_providers):
    device = FakeDevice()
    chosen = providers.resolve(["softlight", "torch"] + [f"{LEAN_MODULE}:{n}" for n in
                                                         ("off", "weight_gradient_off", "hidden_gradient_off")])
    df = measure.run_sweep(LEAN_CASES, chosen, device, seed=5)
    return df.set_index(["op", "dtype", "direction", "provider"]), device


def test_lean_ops_are_checked_then_timed(lean_run):
    df, _ = lean_run
    for case in LEAN_CASES:
        for provider in ("softlight", "torch"):
            rows = df.loc[(case.op, case.dtype, slice(None), provider), :]
            assert (rows.max_error <= rows.tolerance).all() and rows.max_error.notna().all()
            expected = ["ok"] * 3
            if case.op == "linear_cross_entropy" and provider == "softlight":
                expected[1] = "unsupported"  # its backward only rescales the gradients made in forward
                assert "not timed alone" in rows.note.iloc[1]
            assert list(rows.status) == expected, (case, provider)


def test_lean_table_arithmetic_follows_from_the_timer(lean_run, tmp_path):
    df, _ = lean_run
    by_op = {case.op + case.dtype: case for case in LEAN_CASES}
    ok = df[df.status == "ok"].reset_index()
    for row in ok.itertuples():
        case = by_op[row.op + row.dtype]
        assert (row.rows, row.cols, row.hidden) == (case.rows, case.cols, case.hidden)
        if row.op == "linear_cross_entropy":
            flops = matmul_flops(row.op, row.direction, case.rows, case.cols, case.hidden)
            assert row.flops == flops and row.tflops == pytest.approx(flops / 2e-3 / 1e12)
            assert pd.isna(row.bytes) and math.isnan(row.gbps) and math.isnan(row.pct_of_ceiling)
        else:
            n_bytes = bytes_moved(row.op, row.direction, case.rows, case.cols, case.dtype)
            assert row.bytes == n_bytes and row.gbps == pytest.approx(n_bytes / 2e-3 / 1e9)
            assert pd.isna(row.flops) and math.isnan(row.tflops)
    table.write(df.reset_index()[table.COLUMNS], tmp_path / "results.csv")
    assert len(table.read(tmp_path / "results.csv")) == len(df)


def test_a_wrong_lean_provider_is_reported_wrong_and_never_timed(lean_run):
    df, _ = lean_run
    for op, dtype in (("token_logprobs", "float32"), ("linear_cross_entropy", "float32")):
        rows = df.loc[(op, dtype, slice(None), "off"), :]
        assert list(rows.status) == ["wrong"] * 3 and rows.ms_p50.isna().all()
        assert (rows.max_error > rows.tolerance).all()


@pytest.mark.parametrize("provider, name", [("weight_gradient_off", "weight"), ("hidden_gradient_off", "hidden")])
def test_each_gradient_of_linear_cross_entropy_is_checked(lean_run, provider, name):
    df, _ = lean_run
    rows = df.loc[("linear_cross_entropy", "float32", slice(None), provider), :]
    # The loss is right, so forward is timed; the gradient is not.
    assert list(rows.status) == ["ok", "wrong", "wrong"]
    assert rows.ms_p50.iloc[1:].isna().all()
    assert rows.note.iloc[1:].str.startswith(f"gradient of {name}: error").all()
    assert list(rows.max_error.iloc[1:]) == pytest.approx([0.01, 0.01], rel=0.01)


def test_linear_reference_is_the_reference_on_the_logits_the_matmul_rounds():
    g = torch.Generator().manual_seed(0)
    inputs = ops.make_inputs("linear_cross_entropy", 7, 30, "bfloat16", "cpu", g, hidden=8)
    reference = ops.Reference(inputs, g)
    h, w, t = (inputs.x.double().numpy(), inputs.weight.double().numpy(), inputs.target.numpy())
    logits = torch.nn.functional.linear(inputs.x, inputs.weight).double().numpy()
    assert list(reference.rows) == list(range(7)) and list(reference.vocab) == list(range(30))
    assert float(reference.loss) == pytest.approx(float(ref.linear_cross_entropy(h, w, t, logits=logits)), rel=1e-12)
    grad_hidden, grad_weight, _ = ref.linear_cross_entropy_backward(h, w, t, logits=logits)
    np.testing.assert_allclose(reference.grads[0], grad_hidden, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(reference.grads[1], grad_weight, rtol=1e-10, atol=1e-14)


def test_linear_reference_samples_rows_and_classes_in_blocks(monkeypatch):
    g = torch.Generator().manual_seed(1)
    inputs = ops.make_inputs("linear_cross_entropy", 40, 60, "float32", "cpu", g, hidden=8)
    full = ops.Reference(inputs)
    monkeypatch.setattr(ops, "SAMPLE_ELEMENTS", 240)  # 4 of 40 rows, 6 of 60 classes
    monkeypatch.setattr(ops, "MIN_LINEAR_BLOCK_ROWS", 3)  # ten blocks of 4 rows, on the thread pool
    sampled = ops.Reference(inputs, g)
    rows, vocab = sampled.rows, sampled.vocab
    assert len(rows) == 4 and rows[0] == 0 and rows[-1] == 39
    targets = inputs.target.numpy()
    assert {0, 59} | {int(targets[r]) for r in rows[:3]} <= set(vocab) and len(vocab) == 6
    # Every row's log-sum-exp still enters the loss and the sampled weight gradient.
    assert float(sampled.loss) == pytest.approx(float(full.loss), rel=1e-12)
    np.testing.assert_allclose(sampled.grads[0], full.grads[0][rows], rtol=1e-12)
    np.testing.assert_allclose(sampled.grads[1], full.grads[1][vocab], rtol=1e-12)


def test_a_linear_provider_without_a_weight_gradient_is_wrong_not_an_error():
    g = torch.Generator().manual_seed(3)
    inputs = ops.make_inputs("linear_cross_entropy", 4, 20, "float32", "cpu", g, hidden=8)
    reference = ops.Reference(inputs, g)
    frozen = ops.verify(inputs, reference, lambda h, w, t: torch.nn.functional.cross_entropy(h @ w.detach().T, t))
    assert frozen["forward"].ok and not frozen["backward"].ok
    assert frozen["backward"].note.startswith("no gradient of weight")


def test_token_logprobs_reference_checks_output_and_gradient():
    g = torch.Generator().manual_seed(2)
    inputs = ops.make_inputs("token_logprobs", 4, 50, "float32", "cpu", g)
    assert inputs.dy.shape == (4,) and inputs.target.shape == (4,)
    reference = ops.Reference(inputs, g)
    torch_fn = providers.BUILTIN["torch"].implementation("token_logprobs").fn
    assert all(v.ok for v in ops.verify(inputs, reference, torch_fn).values())
    shifted = ops.verify(inputs, reference, lambda x, ids: torch_fn(x, ids) + 1e-3)
    assert not shifted["forward"].ok and shifted["backward"].ok  # a constant shift has the right gradient
    rows = ops.verify(inputs, reference, lambda x, ids: torch.log_softmax(x.float(), -1))
    assert not rows["forward"].ok and "expected (4,)" in rows["forward"].note


def test_linear_case_needs_a_hidden_size_and_row_ops_take_none():
    with pytest.raises(ValueError, match="Case.hidden must be a positive int for linear_cross_entropy"):
        Case("linear_cross_entropy", "bf16", 4, 64)
    with pytest.raises(ValueError, match="Case.hidden applies only to linear_cross_entropy"):
        Case("token_logprobs", "bf16", 4, 64, 8)
    assert Case("linear_cross_entropy", "bf16", 4, 64, 8).label == "4x64x8"
    with pytest.raises(ValueError, match="hidden size"):
        ops.make_inputs("linear_cross_entropy", 2, 8, "float32", "cpu", torch.Generator())
