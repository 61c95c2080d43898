"""Softmax and log-softmax, forward and backward, as Triton kernels and a torch autograd Function.

With z = x / T (T the temperature) and m = max_j x_j, one program per row computes

    d = sum_j exp((x_j - m) / T)
    softmax_i = exp((x_i - m) / T) / d          log_softmax_i = (x_i - m) / T - log d

Subtracting m before dividing by T keeps every exponent <= 0, and x_i - m never overflows
where x / T would (a logit near the dtype's largest value with T < 1). The row is reduced to the
online state of kernels/online.py (max, how many logits equal it, sum over the others), whose
log d is exact to the last ulp for confident rows.

Two strategies, chosen by `launch_config`:
- single block: the row fits one block, so it is read once and written once;
- streamed: a longer row is read in chunks twice. The first pass is the online softmax: each
  chunk's state is merged into the running one, rescaling by exp((m - m') / T) when the max
  grows from m to m'. The second pass writes.

Backward, from the saved output y and the incoming gradient dy (s = softmax, 1/T from the chain rule):
    softmax:      dx = s * (dy - sum_j dy_j s_j) / T
    log_softmax:  dx = (dy - exp(y) * sum_j dy_j) / T
"""

import warnings

import torch
import triton
import triton.language as tl

from .online import block_state, exp_of_difference, merge, normaliser
from .launch import (
    accumulator,
    as_rows,
    check_device,
    check_dim,
    check_float_tensor,
    check_temperature,
    launch_config,
    launchable,
    register_op,
    row_offset,
    FLOAT_DTYPES,
)

__all__ = ["softmax", "log_softmax", "Softmax", "LogSoftmax"]


@triton.jit
def softmax_forward_kernel(
    x_ptr,
    y_ptr,
    n_rows,
    n_cols,
    n_inner,
    x_stride_outer,
    x_stride_inner,
    x_stride_col,
    y_stride_outer,
    y_stride_inner,
    y_stride_col,
    inv_temperature,
    LOG: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    MASKED_ZERO: tl.constexpr,
    PRECISE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    # A tile of ROWS rows x BLOCK columns; per-row values are vectors of ROWS.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = (rows < n_rows)[:, None]
    x_rows = x_ptr + row_offset(rows, n_inner, x_stride_outer, x_stride_inner)[:, None]
    y_rows = y_ptr + row_offset(rows, n_inner, y_stride_outer, y_stride_inner)[:, None]
    out_ty = y_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)[None, :]

    if SINGLE_BLOCK:
        mask = live & (cols < n_cols)
        x = tl.load(x_rows + cols.to(tl.int64) * x_stride_col, mask=mask, other=-float("inf"))
        # Rounding to the output dtype first is torch's meaning of `dtype=` (a no-op otherwise).
        x = x.to(out_ty).to(ACC)
        m, n, r = block_state(x, mask, inv_temperature, 1)
        d, log_d = normaliser(m, n, r)
        if LOG:
            out = (x - m[:, None]) * inv_temperature - log_d[:, None]
        else:
            out = exp_of_difference(x, m[:, None], inv_temperature, PRECISE) / d[:, None]
        if MASKED_ZERO:
            # Entirely -inf: the max is -inf and every entry equals it (a NaN would not).
            masked = ((m == -float("inf")) & (n == n_cols))[:, None]
            out = tl.where(masked, -float("inf") if LOG else 0.0, out)
        tl.store(y_rows + cols.to(tl.int64) * y_stride_col, out.to(out_ty), mask=mask)
    else:
        m = tl.full((ROWS,), -float("inf"), ACC)
        n = tl.zeros((ROWS,), ACC)
        r = tl.zeros((ROWS,), ACC)
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = live & (offs < n_cols)
            x = tl.load(x_rows + offs.to(tl.int64) * x_stride_col, mask=mask, other=-float("inf"))
            m_b, n_b, r_b = block_state(x.to(out_ty).to(ACC), mask, inv_temperature, 1)
            m, n, r = merge(m, n, r, m_b, n_b, r_b, inv_temperature)
        d, log_d = normaliser(m, n, r)
        masked = ((m == -float("inf")) & (n == n_cols))[:, None]
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = live & (offs < n_cols)
            x = tl.load(x_rows + offs.to(tl.int64) * x_stride_col, mask=mask, other=-float("inf"))
            x = x.to(out_ty).to(ACC)
            if LOG:
                out = (x - m[:, None]) * inv_temperature - log_d[:, None]
            else:
                out = exp_of_difference(x, m[:, None], inv_temperature, PRECISE) / d[:, None]
            if MASKED_ZERO:
                out = tl.where(masked, -float("inf") if LOG else 0.0, out)
            tl.store(y_rows + offs.to(tl.int64) * y_stride_col, out.to(out_ty), mask=mask)


@triton.jit
def softmax_backward_kernel(
    y_ptr,
    dy_ptr,
    dx_ptr,
    n_rows,
    n_cols,
    n_inner,
    y_stride_outer,
    y_stride_inner,
    y_stride_col,
    dy_stride_outer,
    dy_stride_inner,
    dy_stride_col,
    dx_stride_outer,
    dx_stride_inner,
    dx_stride_col,
    inv_temperature,
    LOG: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    MASKED_ZERO: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = (rows < n_rows)[:, None]
    y_rows = y_ptr + row_offset(rows, n_inner, y_stride_outer, y_stride_inner)[:, None]
    dy_rows = dy_ptr + row_offset(rows, n_inner, dy_stride_outer, dy_stride_inner)[:, None]
    dx_rows = dx_ptr + row_offset(rows, n_inner, dx_stride_outer, dx_stride_inner)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    # With MASKED_ZERO a row that was entirely -inf has a constant output, hence zero gradient;
    # log-softmax marks such a row by y = -inf everywhere (softmax's y = 0 zeroes it by itself).
    # Counted, not found with a max, which would skip NaN.
    ZERO_MASKED_LOG: tl.constexpr = MASKED_ZERO and LOG

    if SINGLE_BLOCK:
        mask = live & (cols < n_cols)
        y = tl.load(y_rows + cols.to(tl.int64) * y_stride_col, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_rows + cols.to(tl.int64) * dy_stride_col, mask=mask, other=0.0).to(ACC)
        if LOG:
            dx = dy - tl.exp(y) * tl.sum(dy, 1)[:, None]
        else:
            dx = y * (dy - tl.sum(dy * y, 1)[:, None])
        if ZERO_MASKED_LOG:
            n_masked = tl.sum(tl.where(mask & (y == -float("inf")), 1, 0), 1)
            dx = tl.where((n_masked == n_cols)[:, None], 0.0, dx)
        tl.store(dx_rows + cols.to(tl.int64) * dx_stride_col, (dx * inv_temperature).to(dx_ptr.dtype.element_ty),
                 mask=mask)
    else:
        # sum_j dy_j (log-softmax) or sum_j dy_j y_j (softmax), then a second pass writes.
        total = tl.zeros((ROWS,), ACC)
        n_masked = tl.zeros((ROWS,), tl.int32)
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = live & (offs < n_cols)
            dy = tl.load(dy_rows + offs.to(tl.int64) * dy_stride_col, mask=mask, other=0.0).to(ACC)
            if LOG:
                total += tl.sum(dy, 1)
                if ZERO_MASKED_LOG:
                    y = tl.load(y_rows + offs.to(tl.int64) * y_stride_col, mask=mask, other=0.0).to(ACC)
                    n_masked += tl.sum(tl.where(mask & (y == -float("inf")), 1, 0), 1)
            else:
                y = tl.load(y_rows + offs.to(tl.int64) * y_stride_col, mask=mask, other=0.0).to(ACC)
                total += tl.sum(dy * y, 1)
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = live & (offs < n_cols)
            y = tl.load(y_rows + offs.to(tl.int64) * y_stride_col, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_rows + offs.to(tl.int64) * dy_stride_col, mask=mask, other=0.0).to(ACC)
            if LOG:
                dx = dy - tl.exp(y) * total[:, None]
            else:
                dx = y * (dy - total[:, None])
            if ZERO_MASKED_LOG:
                dx = tl.where((n_masked == n_cols)[:, None], 0.0, dx)
            tl.store(dx_rows + offs.to(tl.int64) * dx_stride_col, (dx * inv_temperature).to(dx_ptr.dtype.element_ty),
                     mask=mask)


def _forward(x, dim, out_dtype, inv_temperature, log, masked_zero, launch=True):
    layout, (x,), (y,) = as_rows(dim, [x], [out_dtype])
    if y.numel() == 0 or not launch:
        return y
    cfg = launch_config(layout.n_cols, out_dtype)
    launchable(softmax_forward_kernel)[(triton.cdiv(layout.n_rows, cfg.rows),)](
        x, y, layout.n_rows, layout.n_cols, layout.n_inner, *layout.strides[0], *layout.strides[1], inv_temperature,
        LOG=log, SINGLE_BLOCK=cfg.single_block, MASKED_ZERO=masked_zero, PRECISE=out_dtype == torch.float32,
        ROWS=cfg.rows, BLOCK=cfg.block, ACC=accumulator(out_dtype), num_warps=cfg.num_warps,
    )
    return y


def _backward(y, dy, dim, in_dtype, inv_temperature, log, masked_zero, launch=True):
    layout, (y, dy), (dx,) = as_rows(dim, [y, dy], [in_dtype])
    if dx.numel() == 0 or not launch:
        return dx
    cfg = launch_config(layout.n_cols, y.dtype, rows_held=2)
    launchable(softmax_backward_kernel)[(triton.cdiv(layout.n_rows, cfg.rows),)](
        y, dy, dx, layout.n_rows, layout.n_cols, layout.n_inner, *layout.strides[0], *layout.strides[1],
        *layout.strides[2], inv_temperature, LOG=log, SINGLE_BLOCK=cfg.single_block, MASKED_ZERO=masked_zero,
        ROWS=cfg.rows, BLOCK=cfg.block, ACC=accumulator(y.dtype), num_warps=cfg.num_warps,
    )
    return dx


# The custom ops: softlight::softmax and softlight::log_softmax, and their backward ops. The fake
# implementations allocate exactly what the real ones do (same strides) and launch nothing.


def _fake_forward(log):
    return lambda input, dim, dtype, inv_temperature, masked_zero: _forward(
        input, dim, dtype, inv_temperature, log, masked_zero, launch=False)


def _fake_backward(log):
    return lambda output, grad, dim, input_dtype, inv_temperature, masked_zero: _backward(
        output, grad, dim, input_dtype, inv_temperature, log, masked_zero, launch=False)


@register_op("softmax", fake=_fake_forward(False))
def softmax_op(input: torch.Tensor, dim: int, dtype: torch.dtype, inv_temperature: float,
               masked_zero: bool) -> torch.Tensor:
    return _forward(input, dim, dtype, inv_temperature, False, masked_zero)


@register_op("log_softmax", fake=_fake_forward(True))
def log_softmax_op(input: torch.Tensor, dim: int, dtype: torch.dtype, inv_temperature: float,
                   masked_zero: bool) -> torch.Tensor:
    return _forward(input, dim, dtype, inv_temperature, True, masked_zero)


@register_op("softmax_backward", fake=_fake_backward(False))
def softmax_backward_op(output: torch.Tensor, grad: torch.Tensor, dim: int, input_dtype: torch.dtype,
                        inv_temperature: float, masked_zero: bool) -> torch.Tensor:
    return _backward(output, grad, dim, input_dtype, inv_temperature, False, masked_zero)


@register_op("log_softmax_backward", fake=_fake_backward(True))
def log_softmax_backward_op(output: torch.Tensor, grad: torch.Tensor, dim: int, input_dtype: torch.dtype,
                            inv_temperature: float, masked_zero: bool) -> torch.Tensor:
    return _backward(output, grad, dim, input_dtype, inv_temperature, True, masked_zero)


def _setup_context(ctx, inputs, output):
    input, dim, _, inv_temperature, masked_zero = inputs
    ctx.save_for_backward(output)
    ctx.dim, ctx.input_dtype, ctx.inv_temperature, ctx.masked_zero = dim, input.dtype, inv_temperature, masked_zero


def _differentiable_backward(y, dy, ctx, log):
    """The backward formula in torch ops, for create_graph=True: differentiating it again goes
    through y, whose own backward is the op's."""
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    yy, gg = y.to(acc), dy.to(acc)
    if log:
        dx = gg - yy.exp() * gg.sum(ctx.dim, keepdim=True)
        if ctx.masked_zero:
            dx = dx.masked_fill((yy == float("-inf")).all(ctx.dim, keepdim=True), 0.0)
    else:
        dx = yy * (gg - (gg * yy).sum(ctx.dim, keepdim=True))
    return (dx * ctx.inv_temperature).to(ctx.input_dtype)


def _autograd_backward(log):
    backward_op = log_softmax_backward_op if log else softmax_backward_op

    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            dx = _differentiable_backward(y, dy, ctx, log)
        else:
            dx = backward_op(y, dy, ctx.dim, ctx.input_dtype, ctx.inv_temperature, ctx.masked_zero)
        return dx, None, None, None, None

    return backward


softmax_op.register_autograd(_autograd_backward(False), setup_context=_setup_context)
log_softmax_op.register_autograd(_autograd_backward(True), setup_context=_setup_context)


MASKED_ROWS = ("nan", "zero")


def _apply(fn, input, dim, dtype, temperature, masked_rows, log):
    check_float_tensor(fn, "input", input)
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: dtype must be None or one of float16, bfloat16, float32, float64, got {dtype}")
    dim = check_dim(dim, input.dim())
    temperature = check_temperature(fn, temperature)
    if masked_rows not in MASKED_ROWS:
        raise ValueError(f"{fn}: masked_rows must be one of {MASKED_ROWS}, got {masked_rows!r}")
    check_device(fn, "input", input)
    op = log_softmax_op if log else softmax_op
    return op(input, dim, input.dtype if dtype is None else dtype, 1.0 / temperature, masked_rows == "zero")


def softmax(input: torch.Tensor, dim: int = -1, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
            masked_rows: str = "nan"):
    """softmax(input / temperature) over `dim`, like torch.softmax.

    dtype: if given, the input is cast to it first and the output has it (torch's meaning).
    masked_rows: what a row whose entries are all -inf gives: "nan" (torch's answer, the
    default) or "zero" (probability 0 everywhere, with zero gradient: the "safe softmax" of
    attention and masked-vocabulary code).
    Accumulates in fp32 (fp64 for float64); differentiable.
    """
    return _apply("softlight.softmax", input, dim, dtype, temperature, masked_rows, log=False)


def log_softmax(input: torch.Tensor, dim: int = -1, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
                masked_rows: str = "nan"):
    """log_softmax(input / temperature) over `dim`, like torch.log_softmax, computed as
    z - LSE(z), never as log(softmax(z)). Same arguments as `softmax`; with masked_rows="zero"
    an all -inf row gives -inf (log 0) everywhere, with zero gradient."""
    return _apply("softlight.log_softmax", input, dim, dtype, temperature, masked_rows, log=True)


def _module_dim(dim, ndim, name):
    if dim is not None:
        return dim
    # torch.nn.Softmax(dim=None)'s legacy choice, with its warning.
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(torch.nn.Module):
    """Drop-in for torch.nn.Softmax, with softlight's `dtype`, `temperature` and `masked_rows` options."""

    def __init__(self, dim: int | None = None, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
                 masked_rows: str = "nan"):
        super().__init__()
        self.dim, self.dtype, self.temperature, self.masked_rows = dim, dtype, temperature, masked_rows

    def forward(self, input):
        dim = _module_dim(self.dim, input.dim(), "softmax")
        return softmax(input, dim, dtype=self.dtype, temperature=self.temperature, masked_rows=self.masked_rows)

    def extra_repr(self):
        return f"dim={self.dim}" + (f", temperature={self.temperature}" if self.temperature != 1.0 else "")


class LogSoftmax(Softmax):
    """Drop-in for torch.nn.LogSoftmax, with softlight's `dtype`, `temperature` and `masked_rows` options."""

    def forward(self, input):
        dim = _module_dim(self.dim, input.dim(), "log_softmax")
        return log_softmax(input, dim, dtype=self.dtype, temperature=self.temperature, masked_rows=self.masked_rows)
