"""softlight.softmax and softlight.log_softmax against the float64 reference and against torch."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import softlight
from softlight import launch, rows
from softlight import reference as ref
from softlight.reference import TOLERANCE, relative_error
from support import DTYPES, assert_close, dtype_name, to_numpy

OPS = {
    "softmax": (softlight.softmax, ref.softmax, ref.softmax_backward, torch.softmax),
    "log_softmax": (softlight.log_softmax, ref.log_softmax, ref.log_softmax_backward, torch.log_softmax),
}
INF, NAN = float("inf"), float("nan")


def check_forward_backward(op, x, dim=-1, temperature=1.0, **kwargs):
    """Forward and backward of `op` on x against the reference; returns the output."""
    fn, ref_fwd, ref_bwd, _ = OPS[op]
    x = x.detach().requires_grad_()
    y = fn(x, dim, temperature=temperature, **kwargs)
    assert y.shape == x.shape and y.dtype == kwargs.get("dtype", x.dtype)
    # torch's dtype= rounds the input to it first; the reference sees the same rounded values.
    xr = to_numpy(x.to(y.dtype))
    y_ref = ref_fwd(xr, dim, temperature)
    assert_close(y, y_ref, what=f"{op} forward")
    # Backward is a function of the saved output and the incoming gradient: the reference gets
    # the same y the kernel saved (its rounding to the output dtype is forward's error, and
    # amplified by the cancellation in dy - sum(dy * y) it would swamp the backward's own).
    dy = torch.randn_like(y)
    y.backward(dy)
    assert x.grad.dtype == x.dtype
    coarser = max(x.dtype, y.dtype, key=lambda t: TOLERANCE[dtype_name(t)])
    dx_ref = ref_bwd(to_numpy(y), to_numpy(dy), dim, temperature)
    assert_close(x.grad, dx_ref, dtype=coarser, what=f"{op} backward")
    return y


@pytest.mark.parametrize("n_cols", [1, 3, 17, 1000, 4097, 33000, 131072])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_against_reference(op, dtype, n_cols, device):
    rows = 5 if n_cols < 10000 else 2
    x = torch.randn(rows, n_cols, device=device).mul(4).to(dtype)
    check_forward_backward(op, x)


@pytest.mark.parametrize("op", OPS)
def test_very_long_rows(op, device):
    x = torch.randn(1, 262144 + 7, device=device).mul(4).to(torch.bfloat16)
    check_forward_backward(op, x)


@pytest.mark.parametrize("temperature", [0.25, 0.7, 3.0])
@pytest.mark.parametrize("op", OPS)
def test_temperature(op, temperature, device):
    x = torch.randn(4, 300, device=device).mul(3)
    check_forward_backward(op, x, temperature=temperature)
    check_forward_backward(op, torch.randn(2, 40000, device=device), temperature=temperature)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
@pytest.mark.parametrize("op", OPS)
def test_any_dim(op, dim, device):
    x = torch.randn(4, 6, 33, device=device).mul(3)
    check_forward_backward(op, x, dim=dim)


def strided_views(device):
    base = torch.randn(5, 12, 20, device=device).mul(3)
    return {
        "transposed": base.transpose(1, 2),
        "sliced": base[:, ::3, 1:],
        "expanded": torch.randn(1, 12, 1, device=device).expand(5, 12, 20),
        "permuted": base.permute(2, 0, 1),
        # Reduced over dim 1, the other dims keep three strides that do not merge.
        "three row groups": torch.randn(4, 6, 10, 7, device=device)[:, ::2, :, ::2],
    }


@pytest.mark.parametrize("view", ["transposed", "sliced", "expanded", "permuted", "three row groups"])
@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("op", OPS)
def test_strided_inputs(op, view, dim, device):
    check_forward_backward(op, strided_views(device)[view], dim=dim)


def test_strided_views_need_no_copy(device):
    views = strided_views(device)
    for name in ("transposed", "sliced", "expanded", "permuted"):
        for dim in range(3):
            assert rows.row_layout(dim, views[name]) is not None, (name, dim)
    assert rows.row_layout(-1, views["three row groups"]) is not None
    assert rows.row_layout(1, views["three row groups"]) is None


def test_row_layout_of_contiguous_tensor(device):
    x = torch.empty(2, 3, 4, 5, device=device)
    lay = rows.row_layout(1, x)
    assert (lay.n_outer, lay.n_inner, lay.n_cols, lay.strides) == (2, 20, 3, ((60, 1, 20),))
    lay = rows.row_layout(3, x)
    assert (lay.n_outer, lay.n_inner, lay.n_cols, lay.strides) == (1, 24, 5, ((0, 5, 1),))


ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("out_dtype", ALL_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("in_dtype", ALL_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("op", OPS)
def test_dtype_argument_matches_torch(op, in_dtype, out_dtype, device):
    """Every (input dtype, dtype=) pair, forward, backward and double backward, against torch run
    in float64 on the input as dtype= rounds it. (bf16 next to float64 once gave zero or NaN
    gradients: the interpreter's float64 -> bf16 cast, see launch._fix_interpreter_bf16_casts.)"""
    fn, _, _, torch_fn = OPS[op]
    x = torch.randn(3, 37, device=device).mul(3).to(in_dtype).requires_grad_()
    y = check_forward_backward(op, x, dim=0, dtype=out_dtype)
    y = check_forward_backward(op, x, dtype=out_dtype)
    coarser = max(in_dtype, out_dtype, key=lambda t: TOLERANCE[dtype_name(t)])

    x64 = x.detach().to(out_dtype).double().requires_grad_()
    y64 = torch_fn(x64, -1)
    assert_close(y, to_numpy(y64), what="forward against torch")
    dy, v = torch.randn_like(y), torch.randn_like(x)

    def grads(f, x, dy, v, **kwargs):
        """The gradient of f at x along dy, and the gradient of that along v (double backward)."""
        x = x.detach().requires_grad_()
        (dx,) = torch.autograd.grad(f(x, -1, **kwargs), x, dy, create_graph=True)
        (ddx,) = torch.autograd.grad(dx, x, v)
        return dx, ddx

    ours = grads(fn, x, dy, v, dtype=out_dtype)
    theirs = grads(torch_fn, x, dy, v, dtype=out_dtype)
    exact = grads(torch_fn, x64, dy.double(), v.double())
    assert ours[0].dtype == ours[1].dtype == in_dtype
    # Backward starts from y rounded to its dtype, and double backward also rounds the gradient
    # flowing into y, in torch as here (bf16: up to 1e-1 relative, whoever computes it). Each is
    # no worse than torch's own in these dtypes by more than a factor of 2 plus the tolerance.
    for what, got, torch_got, want in zip(("backward", "double backward"), ours, theirs, exact):
        err, torch_err = (relative_error(to_numpy(t), to_numpy(want)) for t in (got, torch_got))
        assert err <= 2 * torch_err + TOLERANCE[dtype_name(coarser)], f"{what}: {err:.3e}, torch {torch_err:.3e}"


def test_casts_to_bf16_round_once_to_nearest_even(device):
    """float32 and float64 -> bf16 inside a kernel round once to nearest even, as sm_90's
    cvt.rn.bf16.f64 does (and never return the garbage Triton 3.6's interpreter did)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, y_ptr, N: tl.constexpr):
        tl.store(y_ptr + tl.arange(0, N), tl.load(x_ptr + tl.arange(0, N)).to(tl.bfloat16))

    # 1 + 2^-8 + 2^-30 rounds up from float64 directly, but to 1 through float32 (a tie there).
    values = [1 + 2**-8 + 2**-30, 1 + 2**-8, 1 + 3 * 2**-8, -2.5e-3, 3.3e38, 3.4e38, 1e-45, 0.0, INF, -INF, NAN]
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(values + [0.0] * (16 - len(values)), dtype=dtype, device=device)
        y = torch.empty(16, dtype=torch.bfloat16, device=device)
        cast[(1,)](x, y, N=16)
        want = [float(np.float64(v).astype(np.float32)) if dtype == torch.float32 else v for v in values]
        expected = torch.tensor([_bf16_nearest(v) for v in want] + [0.0] * (16 - len(values)), dtype=torch.float64)
        torch.testing.assert_close(y.double().cpu(), expected, equal_nan=True, rtol=0, atol=0)


def _bf16_nearest(v: float) -> float:
    """v rounded once to bfloat16, to nearest even, by exact rational arithmetic."""
    from fractions import Fraction

    if v != v or v in (INF, -INF) or v == 0:
        return v
    exact, sign = Fraction(abs(v)), 1 if v > 0 else -1
    exponent = math.floor(math.log2(abs(v)))
    while Fraction(2) ** exponent > exact:  # the float log2 may be off by one
        exponent -= 1
    ulp = Fraction(2) ** (max(exponent, -126) - 7)  # subnormals below 2^-126
    q, rest = divmod(exact, ulp)
    if rest * 2 > ulp or (rest * 2 == ulp and q % 2):
        q += 1
    rounded = q * ulp
    return sign * (INF if rounded >= Fraction(2) ** 128 else float(rounded))


@pytest.mark.parametrize("op", OPS)
def test_streamed_path_when_block_is_small(op, launch_policy, device):
    """Forcing a tiny row limit sends short rows down the online (streamed) path."""
    x = torch.randn(3, 1000, device=device).mul(5)
    single = OPS[op][0](x)
    launch_policy(row_block_limit=16)
    assert not launch.launch_config(1000).single_block
    streamed = check_forward_backward(op, x)
    assert_close(streamed, to_numpy(single), what="streamed vs single block")
    check_forward_backward(op, torch.randn(2, 3, 77, device=device), dim=1)


def edge_rows(device, n_cols=40):
    rows = torch.randn(8, n_cols, device=device)
    rows[0] = -INF  # every class masked
    rows[1, ::2] = -INF  # half masked
    rows[2, 5] = INF
    rows[3, 7] = NAN
    rows[4, :] = 3.0  # constant row
    rows[5, n_cols - 1] = -INF
    rows[6, : n_cols - 1] = -INF  # a single live class, last
    rows[7, 0] = 1e30
    return rows


@pytest.mark.parametrize("row_limit", [None, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_non_finite_rows_match_torch(op, dtype, row_limit, launch_policy, device):
    if row_limit:
        launch_policy(row_block_limit=row_limit)
    fn, _, _, torch_fn = OPS[op]
    x = edge_rows(device).to(dtype)
    xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yt = fn(xs), torch_fn(xt.float(), -1).to(dtype)
    # Exactly torch's NaN and infinity pattern, and its finite values within the dtype's tolerance.
    assert_close(ys, to_numpy(yt), what="forward vs torch")
    dy = torch.randn_like(ys)
    ys.backward(dy)
    yt.backward(dy)
    assert_close(xs.grad, to_numpy(xt.grad), what="backward vs torch")


@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((0,), 0), ((2, 0, 4), 2)])
@pytest.mark.parametrize("op", OPS)
def test_empty_tensors(op, shape, dim, device):
    fn, _, _, torch_fn = OPS[op]
    x = torch.randn(shape, device=device, requires_grad=True)
    y = fn(x, dim)
    assert y.shape == torch_fn(x, dim).shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("op", OPS)
def test_zero_dim_tensor(op, device):
    fn, _, _, torch_fn = OPS[op]
    x = torch.tensor(2.5, device=device, requires_grad=True)
    for dim in (0, -1):
        y = fn(x, dim)
        assert y.shape == () and y.item() == torch_fn(x, dim).item()
    y.backward()
    assert x.grad.item() == 0.0


@pytest.mark.parametrize("row_limit", [None, 4])
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op, row_limit, launch_policy, device):
    if row_limit:
        launch_policy(row_block_limit=row_limit)
    fn = OPS[op][0]
    x = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, -1, temperature=0.8), (x,))
    assert torch.autograd.gradcheck(lambda t: fn(t, 0), (x,))
    if row_limit is None:
        assert torch.autograd.gradgradcheck(lambda t: fn(t, -1, temperature=1.3), (x,))


@pytest.mark.parametrize("op", OPS)
def test_modules(op, device):
    module = {"softmax": softlight.Softmax, "log_softmax": softlight.LogSoftmax}[op]
    torch_module = {"softmax": torch.nn.Softmax, "log_softmax": torch.nn.LogSoftmax}[op]
    x = torch.randn(2, 3, 10, device=device)
    torch.testing.assert_close(module(dim=1)(x), torch_module(dim=1)(x))
    torch.testing.assert_close(module(-1, temperature=2.0)(x), torch_module(-1)(x / 2))
    # Recorded by hand rather than with pytest.warns, which would re-emit the interpreter's
    # NumPy warnings about masked-off lanes that the suite's filters otherwise hide.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        implicit = module()(x)
        expected = torch_module()(x)
    assert any("Implicit dimension" in str(w.message) for w in caught), [str(w.message) for w in caught]
    torch.testing.assert_close(implicit, expected)


def test_cpu_tensor_without_interpreter_says_how_to_enable_it():
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch, softlight\n"
        "try:\n"
        "    softlight.softmax(torch.randn(2, 3))\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "input is on the CPU" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
def test_offsets_past_2_31(op):
    """Rows whose element offsets pass 2**31: many rows, and a huge stride between columns."""
    fn, _, _, torch_fn = OPS[op]
    x = torch.randn(2**21 + 3, 1024, device="cuda", dtype=torch.float16)
    y = fn(x)
    torch.testing.assert_close(y[-4:], torch_fn(x[-4:].float(), -1).half(), atol=1e-3, rtol=1e-3)
    del y
    x = torch.randn(3, 2**30 + 1, device="cuda", dtype=torch.float16)
    y = fn(x, 0)
    torch.testing.assert_close(y[:, -8:], torch_fn(x[:, -8:].float(), 0).half(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("row_limit", [None, 16])
@pytest.mark.parametrize("op", OPS)
def test_masked_rows_zero(op, row_limit, launch_policy, device):
    """masked_rows="zero": a row of -inf gives probability 0 (log 0 = -inf) with zero gradient;
    every other row is exactly what the default gives."""
    if row_limit:
        launch_policy(row_block_limit=row_limit)
    fn = OPS[op][0]
    x = edge_rows(device)
    x[3, 7] = 0.0  # no NaN here: NaN rows stay NaN in both modes
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    safe, default = fn(xs, masked_rows="zero"), fn(xd)
    empty = torch.full_like(safe[0], float("-inf") if op == "log_softmax" else 0.0)
    assert torch.equal(safe[0], empty) and torch.isnan(default[0]).all()
    torch.testing.assert_close(safe[1:], default[1:], equal_nan=True, rtol=0, atol=0)  # the +inf row: NaN in both
    dy = torch.randn_like(safe)
    safe.backward(dy)
    default.backward(dy)
    assert torch.equal(xs.grad[0], torch.zeros_like(xs.grad[0]))
    torch.testing.assert_close(xs.grad[1:], xd.grad[1:], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_masked_rows_zero_double_backward(op, device):
    """create_graph=True takes backward's torch-op path; it must zero masked rows as well."""
    fn = OPS[op][0]
    x = torch.randn(3, 5, dtype=torch.float64, device=device)
    x[1] = float("-inf")
    x.requires_grad_()
    y = fn(x, -1, masked_rows="zero")
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))
    finite = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: fn(t, -1, masked_rows="zero"), (finite,))


@pytest.mark.parametrize("op", OPS)
def test_a_streamed_chunk_of_only_masked_entries(op, launch_policy, device):
    """A chunk whose real entries are all -inf (and whose tail is padding) must add nothing:
    exp(-inf - (-inf)) on the padding would be NaN."""
    launch_policy(row_block_limit=16)
    x = torch.randn(3, 40, device=device)
    x[0, 32:] = float("-inf")  # the last chunk: 8 masked entries, 8 of padding
    x[1, :16] = float("-inf")  # the first chunk entirely masked
    x[2, 16:32] = float("-inf")
    check_forward_backward(op, x)
