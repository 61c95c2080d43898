"""Softmax and log-softmax, forward and backward: the Triton kernels.

With z = x / T (T the temperature) and m = max_j x_j, a program computes for each of its rows

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

import triton
import triton.language as tl

from .online import block_state, exp_of_difference, merge, normaliser
from .rows import row_offset

__all__ = ["softmax_forward_kernel", "softmax_backward_kernel"]


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
