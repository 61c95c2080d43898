"""Divergences between a student's and a teacher's softmax over the vocabulary: the Triton kernels.

Per row, with z = x / T, p_s = softmax(z_s), p_t = softmax(z_t) and, per class c, the log-ratio
r_c = log p_t,c - log p_s,c:

    KL(p_t || p_s) = sum_c p_t r              (divergence "kl")
    KL(p_s || p_t) = sum_c p_s (-r)           ("reverse_kl")
    beta KL(p_t || m) + (1 - beta) KL(p_s || m),  m = beta p_t + (1 - beta) p_s   ("jsd")

Every KL(p || q) here is summed as sum_c (p log(p/q) - p + q) = sum_c p f(log(p/q)) with
f(L) = e^-L - 1 + L >= 0: the added -p + q sum to 0 over a row, and each term is >= 0, so the sum
has no cancellation. The plain sum_c p (log p - log q) has: when the two distributions nearly
agree its terms are first order in their difference, of both signs, while the KL is second order,
so in fp32 a KL of 1e-6 would keep no correct digit. f is a Taylor series for |L| < 1/2 (where
e^-L - 1 + L cancels) and p (L - 1) + q beyond (q standing for p e^-L, so it never overflows). A
class with p = 0 adds q (p log p = 0 at p = 0); one with q = 0 < p adds +inf, the exact answer.

The form has a second virtue: as a function of a constant c added to every log-ratio its sum is
stationary, S(c) = S(0) - G c + c^2 / 2 with G = sum_c (p_s - p_t) ~ 0, and the one error every
log-ratio shares is that of the normalisers, log(d_t / d_s): fp32 sums carry a relative error near
1e-7, so S is off by about 1e-14, which is all of a KL of 1e-11 (two rows of logits 1e-5 apart).
Pass 2 therefore also sums G (per class p_t expm1(-r), exact where the rows agree) and takes one
Newton step: the loss is S - G^2/2 (times beta (1 - beta) for the JSD) and backward's log-ratio of
the normalisers is log(d_t / d_s) - G, the one under which the computed p_s and p_t agree in total
mass. With exact exps that step lands on the exact log-ratio, whatever the sums' rounding. The
remaining error per class is r's own rounding: both shifts x - max are kept exact as sums of two
floats, so r is exact to a rounding or two of itself when the distributions agree, whatever offset
either row of logits has. Measured on the interpreter: fp32 KL and JSD of rows 1e-5 apart within
6e-8 of the 40-digit answer (float64's textbook formula: 1e-5), and exactly 0 for equal rows.

These terms need both rows' normalisers before any class can be summed, so forward is two passes
over both rows: the online softmax state of each (kernels/online.py), then the sum. The JSD needs
the normalisers for log m anyway; for the KLs a one-pass form exists (sum p_t (z_t - z_s) with a
running sum rescaled as the max grows, then - LSE_t + LSE_s), but it is the difference of O(1)
numbers that cancels as above. Backward is one pass (kernels below), writing

    "kl":          d/dz_s = p_s - p_t,           d/dz_t = p_t (r - K)
    "reverse_kl":  d/dz_s = p_s (-r - K),        d/dz_t = p_t - p_s
    "jsd":         d/dz_s = (1 - beta) p_s (L_s - K_s),   d/dz_t = beta p_t (L_t - K_t)

with K the row's divergence, L_t = log(p_t/m), L_s = log(p_s/m), K_t = KL(p_t||m), K_s = KL(p_s||m),
each times the row's incoming gradient and 1/T. Where |r| < 1/2, p_s - p_t is p_t expm1(-r), without
the cancellation of two nearly equal probabilities.
"""

import triton
import triton.language as tl

from .online import block_state, exp_of_difference, guard, log1p, merge, normaliser
from .rows import row_offset

__all__ = ["KL", "REVERSE_KL", "JSD", "distillation_forward_kernel", "distillation_backward_kernel"]

KL = tl.constexpr(0)
REVERSE_KL = tl.constexpr(1)
JSD = tl.constexpr(2)
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A float argument given as an fp32 pair, in the accumulator's dtype (fp32: hi itself)."""
    return tl.full((), hi, ACC) + tl.full((), lo, ACC)


@triton.jit
def _reciprocal(k: tl.constexpr, dtype: tl.constexpr):
    """1/k rounded once in `dtype` (a Python 1.0 / k would be an fp32 constant, 3e-8 off in fp64)."""
    return 1.0 / tl.full((), k, dtype)


@triton.jit
def _expm1(u, TERMS: tl.constexpr):
    """exp(u) - 1, with TERMS terms of its Taylor series for |u| < 1/2, where exp(u) - 1 would lose
    a small result's last bits to cancellation."""
    p = 1.0 + u * _reciprocal(TERMS, u.dtype)
    for k in tl.static_range(TERMS - 1, 1, -1):
        p = 1.0 + u * p * _reciprocal(k, u.dtype)
    return tl.where(tl.abs(u) < 0.5, u * p, tl.exp(u) - 1.0)


@triton.jit
def _kl_term(p, q, log_ratio, TERMS: tl.constexpr):
    """p log(p/q) - p + q = p f(L) >= 0 with f(L) = e^-L - 1 + L, L = log(p/q) given (exactly, not
    from p and q). Series of f up to TERMS terms for |L| < 1/2; p (L - 1) + q beyond."""
    u = -log_ratio
    s = 1.0 + u * _reciprocal(TERMS, u.dtype)
    for k in tl.static_range(TERMS - 1, 2, -1):
        s = 1.0 + u * s * _reciprocal(k, u.dtype)
    small = p * (0.5 * u * u * s)
    large = p * (log_ratio - 1.0) + q
    return tl.where(p == 0.0, q, tl.where(tl.abs(u) < 0.5, small, large))


@triton.jit
def _two_sum(a, b):
    """s + err == a + b exactly (Knuth), for finite a and b."""
    s = a + b
    bb = s - a
    # An overflowed sum (|x - max| past the dtype's range) has no rounding error to keep.
    return s, tl.where(tl.abs(s) < float("inf"), (a - (s - bb)) + (b - bb), 0.0)


@triton.jit
def _log_ratio(x_t, shift_t, x_s, shift_s, log_norm_ratio, inv_temperature):
    """r = log p_t - log p_s = ((x_t - shift_t) - (x_s - shift_s)) / T - (log d_t - log d_s) per
    class, with both shifts exact (two floats each), so that where a and b nearly agree their
    difference is exact too. -inf where only the teacher's logit is -inf, +inf where only the
    student's is (-inf where both are: p_t = p_s = 0 there, and no term reads it)."""
    a, a_err = _two_sum(x_t, -shift_t)
    b, b_err = _two_sum(x_s, -shift_s)
    r = ((a - b) + (a_err - b_err)) * inv_temperature - log_norm_ratio
    return tl.where(x_t == NEG_INF, NEG_INF, tl.where(x_s == NEG_INF, float("inf"), r))


@triton.jit
def _jsd_log_ratios(r, beta, TERMS: tl.constexpr):
    """(L_t, L_s) = (log(p_t/m), log(p_s/m)), m = beta p_t + (1 - beta) p_s, from r = log(p_t/p_s):
    L_t = -log(beta + (1 - beta) e^-r) and L_s = L_t - r. The side whose probability is the larger
    (the teacher's for r >= 0) comes first, as -log(1 + c e) with e = expm1(-|r|) in (-1, 0] and c
    the other side's weight (log1p keeps a small r's bits; near 1 + c e = 0, (1 - c) + c e^-|r|, a
    sum of two positive terms, keeps them); the other side is that plus or minus r."""
    ahead = r >= 0.0
    c = tl.where(ahead, 1.0 - beta, beta)
    y = c * _expm1(-tl.abs(r), TERMS)
    first = -tl.where(y > -0.5, log1p(y), tl.log((1.0 - c) + c * tl.exp(-tl.abs(r))))
    return tl.where(ahead, first, first + r), tl.where(ahead, first - r, first)


@triton.jit
def _probabilities(x_s, x_t, shift_s, shift_t, inv_norm_s, inv_norm_t, log_norm_ratio, inv_temperature,
                   PRECISE: tl.constexpr):
    """(p_s, p_t, r) of a tile: softmax of each row (0 on -inf logits) and the log-ratio."""
    p_s = exp_of_difference(x_s, shift_s, inv_temperature, PRECISE) * inv_norm_s
    p_t = exp_of_difference(x_t, shift_t, inv_temperature, PRECISE) * inv_norm_t
    return p_s, p_t, _log_ratio(x_t, shift_t, x_s, shift_s, log_norm_ratio, inv_temperature)


@triton.jit
def _student_minus_teacher(p_s, p_t, r, TERMS: tl.constexpr):
    """p_s - p_t, as p_t expm1(-r) where the two nearly agree (|r| < 1/2), so that it keeps its
    digits instead of being the difference of two nearly equal probabilities."""
    return tl.where(tl.abs(r) < 0.5, p_t * _expm1(-r, TERMS), p_s - p_t)


@triton.jit
def _at_least_zero(v):
    """max(v, 0), NaN kept NaN (tl.maximum may drop it)."""
    return tl.where(v < 0.0, 0.0, v)


@triton.jit
def _kept_rows(rows, live, target_ptr, target_stride_outer, target_stride_inner, n_inner, ignore_index,
               HAS_TARGET: tl.constexpr):
    if HAS_TARGET:
        t = tl.load(target_ptr + row_offset(rows, n_inner, target_stride_outer, target_stride_inner), mask=live,
                    other=ignore_index)
        return live & (t != ignore_index)
    else:
        return live


@triton.jit
def distillation_forward_kernel(
    s_ptr, s_stride_outer, s_stride_inner, s_stride_col,
    t_ptr, t_stride_outer, t_stride_inner, t_stride_col,
    target_ptr, target_stride_outer, target_stride_inner,
    loss_ptr, s_max_ptr, s_norm_ptr, t_max_ptr, t_norm_ptr, log_norm_ratio_ptr, k_t_ptr, k_s_ptr,
    n_rows, n_cols, n_inner, ignore_index, inv_temperature_hi, inv_temperature_lo, beta_hi, beta_lo,
    DIVERGENCE: tl.constexpr, HAS_TARGET: tl.constexpr, PRECISE: tl.constexpr, TERMS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    inv_temperature = _scalar(inv_temperature_hi, inv_temperature_lo, ACC)
    beta = _scalar(beta_hi, beta_lo, ACC)
    # A tile of ROWS rows x BLOCK classes; an ignored row's logits are never read.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < n_rows
    kept = _kept_rows(rows, live, target_ptr, target_stride_outer, target_stride_inner, n_inner, ignore_index,
                      HAS_TARGET)
    s_rows = (s_ptr + row_offset(rows, n_inner, s_stride_outer, s_stride_inner))[:, None]
    t_rows = (t_ptr + row_offset(rows, n_inner, t_stride_outer, t_stride_inner))[:, None]

    # Pass 1: the online softmax state (max, count at the max, the rest of the normaliser) of each row.
    m_s = tl.full((ROWS,), NEG_INF, ACC)
    n_s = tl.zeros((ROWS,), ACC)
    r_s = tl.zeros((ROWS,), ACC)
    m_t = tl.full((ROWS,), NEG_INF, ACC)
    n_t = tl.zeros((ROWS,), ACC)
    r_t = tl.zeros((ROWS,), ACC)
    for start in range(0, n_cols, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        mask = kept[:, None] & (cols < n_cols)
        x_s = tl.load(s_rows + cols.to(tl.int64) * s_stride_col, mask=mask, other=NEG_INF).to(ACC)
        x_t = tl.load(t_rows + cols.to(tl.int64) * t_stride_col, mask=mask, other=NEG_INF).to(ACC)
        mb, nb, rb = block_state(x_s, mask, inv_temperature, 1)
        m_s, n_s, r_s = merge(m_s, n_s, r_s, mb, nb, rb, inv_temperature)
        mb, nb, rb = block_state(x_t, mask, inv_temperature, 1)
        m_t, n_t, r_t = merge(m_t, n_t, r_t, mb, nb, rb, inv_temperature)
    d_s, log_d_s = normaliser(m_s, n_s, r_s)
    d_t, log_d_t = normaliser(m_t, n_t, r_t)
    shift_s = guard(m_s)[:, None]
    shift_t = guard(m_t)[:, None]
    inv_norm_s = (1.0 / d_s)[:, None]
    inv_norm_t = (1.0 / d_t)[:, None]
    log_norm_ratio = log_d_t - log_d_s

    # Pass 2: each class's terms, all >= 0, and G = sum_c (p_s - p_t) for the Newton step (module docstring).
    k_t = tl.zeros((ROWS,), ACC)
    k_s = tl.zeros((ROWS,), ACC)
    G = tl.zeros((ROWS,), ACC)
    for start in range(0, n_cols, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        mask = kept[:, None] & (cols < n_cols)
        x_s = tl.load(s_rows + cols.to(tl.int64) * s_stride_col, mask=mask, other=NEG_INF).to(ACC)
        x_t = tl.load(t_rows + cols.to(tl.int64) * t_stride_col, mask=mask, other=NEG_INF).to(ACC)
        p_s, p_t, r = _probabilities(x_s, x_t, shift_s, shift_t, inv_norm_s, inv_norm_t, log_norm_ratio[:, None],
                                     inv_temperature, PRECISE)
        G += tl.sum(_student_minus_teacher(p_s, p_t, r, TERMS), 1)
        if DIVERGENCE == KL:
            k_t += tl.sum(_kl_term(p_t, p_s, r, TERMS), 1)
        elif DIVERGENCE == REVERSE_KL:
            k_s += tl.sum(_kl_term(p_s, p_t, -r, TERMS), 1)
        else:
            l_t, l_s = _jsd_log_ratios(r, beta, TERMS)
            m = beta * p_t + (1.0 - beta) * p_s
            k_t += tl.sum(_kl_term(p_t, m, l_t, TERMS), 1)
            k_s += tl.sum(_kl_term(p_s, m, l_s, TERMS), 1)
    # One use of each summed loop result (Triton 3.6's thread-locality pass asserts otherwise).
    k_t = tl.where(kept, k_t, 0.0)
    k_s = tl.where(kept, k_s, 0.0)
    G = tl.where(kept, G, 0.0)

    # The Newton step (module docstring): the loss at the consistent log-ratio, and that log-ratio
    # for backward. The KLs' own sums are their losses (backward reads K), the JSD's two are not
    # corrected (backward reads each beside a log-ratio of order r, where O(G^2) is far below an ulp).
    # (A divergence is >= 0; where() keeps a NaN row NaN, which tl.maximum need not.)
    if DIVERGENCE == KL:
        k_t = _at_least_zero(k_t - 0.5 * G * G)
        loss = k_t
    elif DIVERGENCE == REVERSE_KL:
        k_s = _at_least_zero(k_s - 0.5 * G * G)
        loss = k_s
    else:
        loss = _at_least_zero(beta * k_t + (1.0 - beta) * k_s - 0.5 * beta * (1.0 - beta) * G * G)
    tl.store(loss_ptr + rows, loss, mask=live)
    tl.store(k_t_ptr + rows, k_t, mask=live)
    tl.store(k_s_ptr + rows, k_s, mask=live)
    # A skipped row's statistics are those of a row of zeros, never read: defined values, not NaN.
    tl.store(s_max_ptr + rows, tl.where(kept, m_s, 0.0), mask=live)
    tl.store(s_norm_ptr + rows, tl.where(kept, d_s, 1.0), mask=live)
    tl.store(t_max_ptr + rows, tl.where(kept, m_t, 0.0), mask=live)
    tl.store(t_norm_ptr + rows, tl.where(kept, d_t, 1.0), mask=live)
    tl.store(log_norm_ratio_ptr + rows, tl.where(kept, log_norm_ratio - G, 0.0), mask=live)


@triton.jit
def distillation_backward_kernel(
    s_ptr, s_stride_outer, s_stride_inner, s_stride_col,
    t_ptr, t_stride_outer, t_stride_inner, t_stride_col,
    target_ptr, target_stride_outer, target_stride_inner,
    grad_ptr, grad_stride_outer, grad_stride_inner,
    ds_ptr, ds_stride_outer, ds_stride_inner, ds_stride_col,
    dt_ptr, dt_stride_outer, dt_stride_inner, dt_stride_col,
    s_max_ptr, s_norm_ptr, t_max_ptr, t_norm_ptr, log_norm_ratio_ptr, k_t_ptr, k_s_ptr,
    n_rows, n_cols, n_inner, ignore_index, inv_temperature_hi, inv_temperature_lo, beta_hi, beta_lo,
    DIVERGENCE: tl.constexpr, HAS_TARGET: tl.constexpr, STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
    PRECISE: tl.constexpr, TERMS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    inv_temperature = _scalar(inv_temperature_hi, inv_temperature_lo, ACC)
    beta = _scalar(beta_hi, beta_lo, ACC)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < n_rows
    kept = _kept_rows(rows, live, target_ptr, target_stride_outer, target_stride_inner, n_inner, ignore_index,
                      HAS_TARGET)
    s_rows = (s_ptr + row_offset(rows, n_inner, s_stride_outer, s_stride_inner))[:, None]
    t_rows = (t_ptr + row_offset(rows, n_inner, t_stride_outer, t_stride_inner))[:, None]
    ds_rows = (ds_ptr + row_offset(rows, n_inner, ds_stride_outer, ds_stride_inner))[:, None]
    dt_rows = (dt_ptr + row_offset(rows, n_inner, dt_stride_outer, dt_stride_inner))[:, None]
    g = tl.load(grad_ptr + row_offset(rows, n_inner, grad_stride_outer, grad_stride_inner), mask=live,
                other=0.0).to(ACC)
    scale = (g * inv_temperature)[:, None]
    shift_s = guard(tl.load(s_max_ptr + rows, mask=live, other=0.0))[:, None]
    shift_t = guard(tl.load(t_max_ptr + rows, mask=live, other=0.0))[:, None]
    inv_norm_s = (1.0 / tl.load(s_norm_ptr + rows, mask=live, other=1.0))[:, None]
    inv_norm_t = (1.0 / tl.load(t_norm_ptr + rows, mask=live, other=1.0))[:, None]
    log_norm_ratio = tl.load(log_norm_ratio_ptr + rows, mask=live, other=0.0)[:, None]
    k_t = tl.load(k_t_ptr + rows, mask=live, other=0.0)[:, None]
    k_s = tl.load(k_s_ptr + rows, mask=live, other=0.0)[:, None]

    for start in range(0, n_cols, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        in_rows = live[:, None] & (cols < n_cols)
        mask = kept[:, None] & (cols < n_cols)
        x_s = tl.load(s_rows + cols.to(tl.int64) * s_stride_col, mask=mask, other=NEG_INF).to(ACC)
        x_t = tl.load(t_rows + cols.to(tl.int64) * t_stride_col, mask=mask, other=NEG_INF).to(ACC)
        p_s, p_t, r = _probabilities(x_s, x_t, shift_s, shift_t, inv_norm_s, inv_norm_t, log_norm_ratio,
                                     inv_temperature, PRECISE)
        if DIVERGENCE == JSD:
            l_t, l_s = _jsd_log_ratios(r, beta, TERMS)
            grad_s = (1.0 - beta) * tl.where(p_s == 0.0, 0.0, p_s * (l_s - k_s))
            grad_t = beta * tl.where(p_t == 0.0, 0.0, p_t * (l_t - k_t))
        else:
            s_minus_t = _student_minus_teacher(p_s, p_t, r, TERMS)
            if DIVERGENCE == KL:
                grad_s = s_minus_t
                grad_t = tl.where(p_t == 0.0, 0.0, p_t * (r - k_t))
            else:
                grad_s = tl.where(p_s == 0.0, 0.0, p_s * (-r - k_s))
                grad_t = -s_minus_t
        # An ignored row's loss is the constant 0: its gradient is 0 whatever the incoming one is.
        if STUDENT_GRAD:
            tl.store(ds_rows + cols.to(tl.int64) * ds_stride_col,
                     tl.where(mask, scale * grad_s, 0.0).to(ds_ptr.dtype.element_ty), mask=in_rows)
        if TEACHER_GRAD:
            tl.store(dt_rows + cols.to(tl.int64) * dt_stride_col,
                     tl.where(mask, scale * grad_t, 0.0).to(dt_ptr.dtype.element_ty), mask=in_rows)
