"""Per-token log-probabilities and entropy: the Triton kernels.

Per row of logits x, with z = x / T, p = softmax(z), t the token and s the row max:

    log p_t = (x_t - s)/T - log d,     d = sum_c exp((x_c - s)/T)
    H = -sum_c p_c log p_c = log d - A/d,     A = sum_c exp((x_c - s)/T) (x_c - s)/T

Both are streamed over blocks of the row with the online softmax: when a block raises the max
from s to s', every term so far is rescaled by r = exp((s - s')/T) and its exponent shifted, so
d' = r d and A' = r (A + d (s - s')/T). Every term of A is <= 0, as is the correction, so A has
no cancellation; log d >= 0 and -A/d >= 0, so neither has H. A logit of -inf (a masked class)
has p_c = 0 and adds 0 to A (p log p = 0 at p = 0), not 0 * inf. A row that is all -inf, or that
holds +inf or NaN, gives NaN, as torch's log_softmax does.

Backward, from the saved s, log d and E = A/d (the mean of (x - s)/T under p), with incoming
gradients g (of log p_t) and h (of H):

    d/dz_c: g (onehot(t)_c - p_c) + h p_c (E - (x_c - s)/T),    and d/dx = d/dz / T

since dH/dz_c = p_c (E_p[z] - z_c). Backward may write over the logits themselves (the fused
form does, a chunk at a time).
"""

import triton
import triton.language as tl

from .online import block_state, exp_of_difference, guard, merge, normaliser
from .rows import row_offset

__all__ = ["token_logprobs_forward_kernel", "token_logprobs_backward_kernel"]


@triton.jit
def token_logprobs_forward_kernel(
    x_ptr, x_stride_outer, x_stride_inner, x_stride_col,
    ids_ptr, ids_stride_outer, ids_stride_inner,
    logp_ptr, entropy_ptr, row_max_ptr, norm_ptr, one_minus_pt_ptr, mean_ptr,
    n_cols, n_inner, inv_temperature,
    ENTROPY: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row_offset(row, n_inner, x_stride_outer, x_stride_inner)

    # The online softmax state of kernels/online.py (max m, count n at it, r the rest of d), and
    # A = sum_c exp((x_c - m)/T) (x_c - m)/T, whose terms at the max are 0.
    m = tl.full((), float("-inf"), ACC)
    n = tl.zeros((), ACC)
    r = tl.zeros((), ACC)
    A = tl.zeros((), ACC)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_row + cols.to(tl.int64) * x_stride_col, mask=mask, other=float("-inf")).to(ACC)
        m_b, n_b, r_b = block_state(x, mask, inv_temperature, 0)
        m_new, n_new, r_new = merge(m, n, r, m_b, n_b, r_b, inv_temperature)
        if ENTROPY:
            shift_old = guard(m)
            shift = guard(m_new)
            rescale = tl.exp((m - shift) * inv_temperature)  # 0 while nothing finite was seen
            z = (x - shift) * inv_temperature  # <= 0; -inf off the row and on masked classes
            e = tl.exp(z)
            # e * z is 0 where e is 0 (z = -inf included), never 0 * inf.
            A = rescale * (A + (n + r) * (shift_old - shift) * inv_temperature) + tl.sum(tl.where(e > 0.0, e * z, 0.0), 0)
        m, n, r = m_new, n_new, r_new

    d, log_d = normaliser(m, n, r)
    shift = guard(m)
    log_norm = (m - shift) * inv_temperature + log_d  # -inf for an all -inf row, whose outputs are then NaN
    t = tl.load(ids_ptr + row_offset(row, n_inner, ids_stride_outer, ids_stride_inner)).to(tl.int64)
    valid = (t >= 0) & (t < n_cols)
    x_t = tl.load(x_row + tl.where(valid, t, 0) * x_stride_col).to(ACC)
    # An id outside [0, V) (checked on the CPU; on a GPU that would need a sync) must never look
    # like a real log-probability. At the max, log p_t = -log1p(r) keeps a confident token's bits.
    logp = tl.where(valid, (x_t - shift) * inv_temperature - log_norm, float("nan"))
    # 1 - p_t for backward, without cancellation when the token holds the max.
    one_minus_pt = tl.where(x_t == m, ((n - 1.0) + r) / d, 1.0 - exp_of_difference(x_t, m, inv_temperature, PRECISE) / d)
    tl.store(logp_ptr + row, logp)
    tl.store(row_max_ptr + row, m)
    tl.store(norm_ptr + row, d)
    tl.store(one_minus_pt_ptr + row, one_minus_pt)
    if ENTROPY:
        mean = A / d
        tl.store(entropy_ptr + row, log_norm - mean)
        tl.store(mean_ptr + row, mean)


@triton.jit
def token_logprobs_backward_kernel(
    x_ptr, x_stride_outer, x_stride_inner, x_stride_col,
    ids_ptr, ids_stride_outer, ids_stride_inner,
    grad_logp_ptr, grad_logp_stride_outer, grad_logp_stride_inner,
    grad_entropy_ptr, grad_entropy_stride_outer, grad_entropy_stride_inner,
    dx_ptr, dx_stride_outer, dx_stride_inner, dx_stride_col,
    row_max_ptr, norm_ptr, one_minus_pt_ptr, mean_ptr,
    n_cols, n_inner, inv_temperature,
    LOGP_GRAD: tl.constexpr, ENTROPY_GRAD: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row_offset(row, n_inner, x_stride_outer, x_stride_inner)
    dx_row = dx_ptr + row_offset(row, n_inner, dx_stride_outer, dx_stride_inner)
    m = tl.load(row_max_ptr + row)
    inv_norm = 1.0 / tl.load(norm_ptr + row)
    shift = guard(m)
    if LOGP_GRAD:
        g = tl.load(grad_logp_ptr + row_offset(row, n_inner, grad_logp_stride_outer, grad_logp_stride_inner)).to(ACC)
        t = tl.load(ids_ptr + row_offset(row, n_inner, ids_stride_outer, ids_stride_inner)).to(tl.int64)
        g = tl.where((t >= 0) & (t < n_cols), g, float("nan"))  # as forward: an invalid id gives NaN
        target_term = g * tl.load(one_minus_pt_ptr + row)  # g (1 - p_t), computed without cancellation
    if ENTROPY_GRAD:
        h = tl.load(grad_entropy_ptr + row_offset(row, n_inner, grad_entropy_stride_outer, grad_entropy_stride_inner)).to(ACC)
        mean = tl.load(mean_ptr + row)

    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_row + cols.to(tl.int64) * x_stride_col, mask=mask, other=0.0).to(ACC)
        p = exp_of_difference(x, m, inv_temperature, PRECISE) * inv_norm
        grad = tl.zeros((BLOCK,), ACC)
        if LOGP_GRAD:
            grad += tl.where(cols == t, target_term, -g * p)
        if ENTROPY_GRAD:
            z = (x - shift) * inv_temperature
            grad += h * tl.where(p > 0.0, p * (mean - z), 0.0)  # 0, not 0 * inf, on masked classes
        tl.store(dx_row + cols.to(tl.int64) * dx_stride_col, (grad * inv_temperature).to(dx_ptr.dtype.element_ty),
                 mask=mask)
