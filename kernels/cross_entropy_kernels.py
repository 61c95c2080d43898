"""Cross-entropy, forward and backward: the Triton kernels.

Per row of logits x (classes on dim 1, torch's layout), with y = cap(x) = softcap*tanh(x/softcap)
(y = x without softcap) and z = y / T:

    loss = (1 - eps) w_t (LSE - z_t) + eps/C sum_c w_c (LSE - z_c) + z_loss LSE^2     class index t
    loss = sum_c u_c (LSE - z_c) + z_loss LSE^2,   u_c = w_c ((1 - eps) q_c + eps/C)   probabilities q

Forward is one pass over the row. It reduces the row to the online softmax state of
kernels/online.py (max m, count n at the max, r = sum of the other exp((y - m)/T)), so that
LSE - m/T = log(n + r) is exact to the last ulp even for a confident row. When smoothing or
soft targets need them it also keeps U = sum_c u_c and S = sum_c u_c (m - y_c). Measuring S
from the running max makes every term >= 0, so sum_c u_c (LSE - z_c) = U (LSE - m/T) + S/T has
no cancellation even when the logits share a large offset; when the max grows by D, S grows by
D * U. The target's own term is likewise (m - y_t)/T + (LSE - m/T), two terms >= 0.

Backward is one pass writing dx = (g (softmax(z) k - u) + h softmax(z)) dz/dx, with u_c the
target weights (eps w_c/C + (1 - eps) w_t [c == t] for a class index), k = sum_c u_c +
2 z_loss LSE, g the incoming gradient of the row's loss, h that of its LSE (return_lse) and
dz/dx = (1 - (y/softcap)^2) / T. At the target class of a confident row p_t - 1 would cancel,
so forward saves it computed without cancellation, p_t - 1 = -(n - 1 + r) / (n + r) when the
target holds the max.

When rows are too few to fill the GPU, each row's columns are split over several programs:
forward writes each range's (m, n, r, S, U) and a combine kernel merges them before finishing
the row; backward needs no combine.
"""

import triton
import triton.language as tl

from .online import block_state, exp_of_difference, guard, merge, normaliser
from .rows import row_offset

__all__ = ["cross_entropy_forward_kernel", "cross_entropy_combine_kernel", "cross_entropy_backward_kernel"]


@triton.jit
def _tanh(v):
    # tanh from exp (the interpreter has no libdevice): (1 - e) / (1 + e) with e = exp(-2|v|) <= 1.
    e = tl.exp(-2.0 * tl.abs(v))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(v < 0, -t, t)


@triton.jit
def _capped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        return softcap * _tanh(x / softcap)
    else:
        return x


@triton.jit
def _class_weights(cols, mask, q_rows, q_stride_col, weight_ptr, smoothing, n_cols,
                   SOFT_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """u_c of the smoothing or soft-target term for a tile of classes (0 off the rows). For class
    indices this is w_c alone: forward scales the sum by eps/C, backward the gradient term."""
    if HAS_WEIGHT:
        u = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(ACC)
    else:
        u = tl.where(mask, 1.0, 0.0).to(ACC)
    if SOFT_TARGET:
        q = tl.load(q_rows + cols.to(tl.int64) * q_stride_col, mask=mask, other=0.0).to(ACC)
        u = u * ((1.0 - smoothing) * q + smoothing / n_cols)
    return u


@triton.jit
def _finish_rows(rows, live, m, n, r, S, U, x_rows, x_stride_col, target_rows, weight_ptr,
                 loss_ptr, lse_ptr, row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr, denom_ptr,
                 n_cols, ignore_index, inv_temperature, softcap, z_loss, smoothing,
                 SOFT_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 SMOOTH: tl.constexpr, PRECISE: tl.constexpr, ACC: tl.constexpr):
    """Turn the rows' states (m, n, r, S, U; vectors over `rows`) into their losses and what
    backward needs. x_rows and target_rows point at each row's first logit and target."""
    shift = guard(m)
    d, log_d = normaliser(m, n, r)
    log_norm = (m - shift) * inv_temperature + log_d  # LSE - shift/T
    lse = shift * inv_temperature + log_norm
    if SOFT_TARGET:
        loss = U * log_norm + S * inv_temperature
        k_rest = U
        pt_minus_1 = tl.zeros_like(m)
        kept = live
        valid = live
        denom = tl.where(live, 1.0, 0.0)
    else:
        t = tl.load(target_rows, mask=live, other=0).to(tl.int64)
        kept = t != ignore_index
        valid = (t >= 0) & (t < n_cols)
        t_safe = tl.where(valid, t, 0)
        y_t = _capped(tl.load(x_rows + t_safe * x_stride_col, mask=live, other=0.0).to(ACC), softcap, HAS_SOFTCAP)
        if HAS_WEIGHT:
            w_t = tl.load(weight_ptr + t_safe, mask=live, other=0.0).to(ACC)
        else:
            w_t = tl.full(m.shape, 1.0, ACC)
        loss = ((1.0 - smoothing) * w_t * ((shift - y_t) * inv_temperature + log_norm)).to(ACC)
        k_rest = tl.zeros_like(m)
        if SMOOTH:
            loss += smoothing / n_cols * (U * log_norm + S * inv_temperature)
            k_rest += smoothing / n_cols * U
        # p_t - 1 without cancellation: when the target holds the max, p_t = 1 / (n + r).
        pt_minus_1 = tl.where(y_t == m, -((n - 1.0) + r) / d,
                              exp_of_difference(y_t, m, inv_temperature, PRECISE) / d - 1.0)
        denom = tl.where(kept, w_t, 0.0)
    if z_loss != 0.0:
        loss += z_loss * lse * lse
        k_rest += 2.0 * z_loss * lse
    # An ignored row adds nothing; a target outside [0, C) must never look like a real loss.
    loss = tl.where(kept, tl.where(valid, loss, float("nan")), 0.0)
    k_rest = tl.where(kept, tl.where(valid, k_rest, float("nan")), 0.0)
    tl.store(loss_ptr + rows, loss, mask=live)
    tl.store(lse_ptr + rows, lse, mask=live)
    tl.store(row_max_ptr + rows, m, mask=live)
    tl.store(norm_ptr + rows, d, mask=live)
    tl.store(k_rest_ptr + rows, k_rest, mask=live)
    tl.store(pt_minus_1_ptr + rows, tl.where(kept, pt_minus_1, 0.0), mask=live)
    tl.store(denom_ptr + rows, denom, mask=live)


@triton.jit
def cross_entropy_forward_kernel(
    x_ptr, x_stride_outer, x_stride_inner, x_stride_col,
    target_ptr, target_stride_outer, target_stride_inner, target_stride_col,
    weight_ptr, partial_ptr,
    loss_ptr, lse_ptr, row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr, denom_ptr,
    n_rows, n_cols, n_inner, cols_per_split,
    ignore_index, inv_temperature, softcap, z_loss, smoothing,
    SOFT_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    SMOOTH: tl.constexpr, PRECISE: tl.constexpr, SPLIT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    # A tile of ROWS rows x BLOCK classes, streamed over the columns of this program's split.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    split = tl.program_id(1)
    live = rows < n_rows
    x_rows = x_ptr + row_offset(rows, n_inner, x_stride_outer, x_stride_inner)
    target_rows = target_ptr + row_offset(rows, n_inner, target_stride_outer, target_stride_inner)
    col_start = split * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n_cols)

    m = tl.full((ROWS,), float("-inf"), ACC)
    n = tl.zeros((ROWS,), ACC)
    r = tl.zeros((ROWS,), ACC)
    S = tl.zeros((ROWS,), ACC)
    U = tl.zeros((ROWS,), ACC)
    for start in range(col_start, col_end, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        mask = live[:, None] & (cols < col_end)
        x = tl.load(x_rows[:, None] + cols.to(tl.int64) * x_stride_col, mask=mask, other=0.0).to(ACC)
        y = tl.where(mask, _capped(x, softcap, HAS_SOFTCAP), float("-inf"))
        m_b, n_b, r_b = block_state(y, mask, inv_temperature, 1)
        m_new, n, r = merge(m, n, r, m_b, n_b, r_b, inv_temperature)
        if SMOOTH:
            u = _class_weights(cols, mask, target_rows[:, None], target_stride_col, weight_ptr, smoothing, n_cols,
                               SOFT_TARGET, HAS_WEIGHT, ACC)
            # Re-measure what was summed from the new max, then add this block (u = 0 adds 0,
            # even against a -inf logit).
            shift_new = guard(m_new)
            S = S + (shift_new - guard(m)) * U + tl.sum(tl.where(u != 0.0, u * (shift_new[:, None] - y), 0.0), 1)
            U += tl.sum(u, 1)
        m = m_new
    # One use of each summed loop result: Triton 3.6's thread-locality pass asserts on a reduction
    # accumulated in a loop whose result is used more than once.
    S = tl.where(live, S, 0.0)
    U = tl.where(live, U, 0.0)

    if SPLIT:
        partial = partial_ptr + (rows.to(tl.int64) * tl.num_programs(1) + split) * 5
        tl.store(partial, m, mask=live)
        tl.store(partial + 1, n, mask=live)
        tl.store(partial + 2, r, mask=live)
        tl.store(partial + 3, S, mask=live)
        tl.store(partial + 4, U, mask=live)
    else:
        _finish_rows(rows, live, m, n, r, S, U, x_rows, x_stride_col, target_rows, weight_ptr,
                     loss_ptr, lse_ptr, row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr, denom_ptr,
                     n_cols, ignore_index, inv_temperature, softcap, z_loss, smoothing,
                     SOFT_TARGET, HAS_WEIGHT, HAS_SOFTCAP, SMOOTH, PRECISE, ACC)


@triton.jit
def cross_entropy_combine_kernel(
    x_ptr, x_stride_outer, x_stride_inner, x_stride_col,
    target_ptr, target_stride_outer, target_stride_inner,
    weight_ptr, partial_ptr,
    loss_ptr, lse_ptr, row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr, denom_ptr,
    n_rows, n_cols, n_inner, n_splits,
    ignore_index, inv_temperature, softcap, z_loss, smoothing,
    SOFT_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    SMOOTH: tl.constexpr, PRECISE: tl.constexpr, SPLITS_BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """Merge the states of a row's column ranges, then finish the row (one row a program)."""
    rows = tl.program_id(0) + tl.arange(0, 1)
    live = rows < n_rows
    i = tl.arange(0, SPLITS_BLOCK)[None, :]
    mask = live[:, None] & (i < n_splits)
    partial = partial_ptr + (rows.to(tl.int64)[:, None] * n_splits + i) * 5
    m_i = tl.load(partial, mask=mask, other=float("-inf"))
    n_i = tl.load(partial + 1, mask=mask, other=0.0)
    r_i = tl.load(partial + 2, mask=mask, other=0.0)
    S_i = tl.load(partial + 3, mask=mask, other=0.0)
    U_i = tl.load(partial + 4, mask=mask, other=0.0)
    m = tl.max(m_i, 1)
    # Each range's state merged into the row's: merge() applied to all ranges at once.
    at_max = m_i == m[:, None]
    scale_i = tl.where(at_max, 1.0, tl.exp((m_i - m[:, None]) * inv_temperature))
    r = tl.sum((r_i + tl.where(at_max, 0.0, n_i)) * scale_i, 1)
    n = tl.sum(tl.where(at_max, n_i, 0.0), 1)
    shift = guard(m)
    S = tl.sum(S_i + (shift[:, None] - guard(m_i)) * U_i, 1)
    U = tl.sum(U_i, 1)
    x_rows = x_ptr + row_offset(rows, n_inner, x_stride_outer, x_stride_inner)
    target_rows = target_ptr + row_offset(rows, n_inner, target_stride_outer, target_stride_inner)
    _finish_rows(rows, live, m, n, r, S, U, x_rows, x_stride_col, target_rows, weight_ptr,
                 loss_ptr, lse_ptr, row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr, denom_ptr,
                 n_cols, ignore_index, inv_temperature, softcap, z_loss, smoothing,
                 SOFT_TARGET, HAS_WEIGHT, HAS_SOFTCAP, SMOOTH, PRECISE, ACC)


@triton.jit
def cross_entropy_backward_kernel(
    x_ptr, x_stride_outer, x_stride_inner, x_stride_col,
    target_ptr, target_stride_outer, target_stride_inner, target_stride_col,
    weight_ptr,
    grad_ptr, grad_stride_outer, grad_stride_inner,
    lse_grad_ptr, lse_grad_stride_outer, lse_grad_stride_inner,
    dx_ptr, dx_stride_outer, dx_stride_inner, dx_stride_col,
    row_max_ptr, norm_ptr, k_rest_ptr, pt_minus_1_ptr,
    n_rows, n_cols, n_inner, cols_per_split,
    ignore_index, inv_temperature, softcap, smoothing,
    SOFT_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    SMOOTH: tl.constexpr, PRECISE: tl.constexpr, LSE_GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    split = tl.program_id(1)
    live = rows < n_rows
    x_rows = x_ptr + row_offset(rows, n_inner, x_stride_outer, x_stride_inner)[:, None]
    dx_rows = dx_ptr + row_offset(rows, n_inner, dx_stride_outer, dx_stride_inner)[:, None]
    target_rows = target_ptr + row_offset(rows, n_inner, target_stride_outer, target_stride_inner)
    g = tl.load(grad_ptr + row_offset(rows, n_inner, grad_stride_outer, grad_stride_inner), mask=live, other=0.0).to(ACC)
    m = tl.load(row_max_ptr + rows, mask=live, other=0.0)[:, None]
    inv_norm = (1.0 / tl.load(norm_ptr + rows, mask=live, other=1.0))[:, None]
    k_rest = tl.load(k_rest_ptr + rows, mask=live, other=0.0)[:, None]
    if not SOFT_TARGET:
        t = tl.load(target_rows, mask=live, other=0).to(tl.int64)
        # An ignored row's loss is the constant 0: its gradient is 0 whatever g is (torch's too).
        g = tl.where(t != ignore_index, g, 0.0)
        kept = (t != ignore_index) & (t >= 0) & (t < n_cols)
        if HAS_WEIGHT:
            w_t = tl.load(weight_ptr + tl.where(kept, t, 0), mask=live, other=0.0).to(ACC)
        else:
            w_t = tl.full((ROWS,), 1.0, ACC)
        target_weight = tl.where(kept, (1.0 - smoothing) * w_t, 0.0)[:, None]
        smooth_scale = tl.where(t != ignore_index, smoothing / n_cols, 0.0)[:, None]
        # The target's own term, (1 - eps) w_t (p_t - 1), as forward computed it.
        target_term = target_weight * tl.load(pt_minus_1_ptr + rows, mask=live, other=0.0)[:, None]
        t = t[:, None]
    scale = (g * inv_temperature)[:, None]
    if LSE_GRAD:
        # A gradient h flowing into the row's LSE adds h p_c (d LSE / d z_c = p_c), ignored or not.
        lse_grad_rows = lse_grad_ptr + row_offset(rows, n_inner, lse_grad_stride_outer, lse_grad_stride_inner)
        lse_scale = (tl.load(lse_grad_rows, mask=live, other=0.0).to(ACC) * inv_temperature)[:, None]

    col_start = split * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n_cols)
    for start in range(col_start, col_end, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        mask = live[:, None] & (cols < col_end)
        x = tl.load(x_rows + cols.to(tl.int64) * x_stride_col, mask=mask, other=0.0).to(ACC)
        y = _capped(x, softcap, HAS_SOFTCAP)
        p = exp_of_difference(y, m, inv_temperature, PRECISE) * inv_norm
        if SOFT_TARGET:
            u = _class_weights(cols, mask, target_rows[:, None], target_stride_col, weight_ptr, smoothing, n_cols,
                               SOFT_TARGET, HAS_WEIGHT, ACC)
            grad = p * k_rest - u
        else:
            grad = p * k_rest
            if SMOOTH:
                grad -= smooth_scale * _class_weights(cols, mask, target_rows[:, None], target_stride_col, weight_ptr,
                                                      smoothing, n_cols, SOFT_TARGET, HAS_WEIGHT, ACC)
            # p_c (1 - eps) w_t everywhere but at the target, which takes (1 - eps) w_t (p_t - 1).
            grad += tl.where(cols == t, target_term, p * target_weight)
        grad = grad * scale
        if LSE_GRAD:
            grad += p * lse_scale
        if HAS_SOFTCAP:
            grad = grad * (1.0 - (y / softcap) * (y / softcap))
        tl.store(dx_rows + cols.to(tl.int64) * dx_stride_col, grad.to(dx_ptr.dtype.element_ty), mask=mask)
