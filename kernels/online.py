"""The online softmax state, shared by every kernel that reduces a row to its log-sum-exp.

A row (or any part of it) is summarised by three numbers, with T the temperature:

    m  the largest logit,
    n  how many logits equal m,
    r  the sum of exp((x - m) / T) over the others,

so that the normaliser is d = sum_j exp((x_j - m) / T) = n + r and LSE = m / T + log(n + r).
Keeping the max's own terms (each exactly 1) out of r is what makes the log exact: a confident
row has n = 1 and a tiny r, and log(1 + r) rounded as log of (1 + r) in fp32 would lose all of r
below 6e-8; log1p(r) keeps it, so log-softmax of the top logit and the cross-entropy of a
confident prediction come out to the last ulp instead of as 0.

Two states merge by moving whichever max is smaller into r, scaled by exp((m_small - m) / T).
That is the online softmax (Milakov & Gimelshein), with the count split out.
"""

import triton
import triton.language as tl


@triton.jit
def log1p(v):
    """log(1 + v) to a few ulps for small v too (Goldberg's trick: the rounding of 1 + v is
    divided back out)."""
    u = 1.0 + v
    return tl.where(u == 1.0, v, tl.log(u) * (v / (u - 1.0)))


@triton.jit
def guard(m):
    """The max to measure from: m itself, or 0 while every logit seen is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def block_state(x, mask, inv_temperature, AXIS: tl.constexpr):
    """(m, n, r) of the entries of x where mask holds, reduced along AXIS (x must be -inf where
    mask does not hold). NaN entries land in r, so NaN propagates; a block of -inf only has
    m = -inf and r = 0."""
    m = tl.max(x, AXIS)
    m_b = tl.expand_dims(m, AXIS)
    at_max = (x == m_b) & mask
    n = tl.sum(tl.where(at_max, 1.0, 0.0), AXIS)
    # Off the mask exp(-inf - m) is 0, except when m is -inf too: leave those lanes out outright.
    r = tl.sum(tl.where(at_max | (mask == 0), 0.0, tl.exp((x - m_b) * inv_temperature)), AXIS)
    return m, n.to(r.dtype), r


@triton.jit
def merge(m_a, n_a, r_a, m_b, n_b, r_b, inv_temperature):
    """The state of the union of two disjoint parts of a row."""
    m = tl.maximum(m_a, m_b)
    # exp((m_a - m) / T) is 1 for the side that holds the max; written out so that two -inf
    # maxima do not give exp(NaN).
    scale_a = tl.where(m_a == m, 1.0, tl.exp((m_a - m) * inv_temperature))
    scale_b = tl.where(m_b == m, 1.0, tl.exp((m_b - m) * inv_temperature))
    r = (r_a + tl.where(m_a == m, 0.0, n_a)) * scale_a + (r_b + tl.where(m_b == m, 0.0, n_b)) * scale_b
    n = tl.where(m_a == m, n_a, 0.0) + tl.where(m_b == m, n_b, 0.0)
    return m, n, r


@triton.jit
def normaliser(m, n, r):
    """(d, log d) of a row's state. A +inf logit makes both NaN, as in torch (inf - inf), and so
    does a row with no finite logit (d would count its -inf entries)."""
    r = tl.where((m == float("inf")) | (m == -float("inf")), float("nan"), r)
    d = n + r
    log_d = tl.where(n == 1.0, log1p(r), tl.log(d))
    return d, log_d


# ln 2 split so that k * LN2_HI is exact in fp32 for |k| < 256 (LN2_HI has 16 significant bits).
LN2_HI = tl.constexpr(0.693145751953125)
LN2_LO = tl.constexpr(1.4286068203094172e-06)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _two_sum(a, b):
    """s + err == a + b exactly (Knuth), for finite a and b."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@triton.jit
def _exp_reduced(hi, lo):
    """exp(hi + lo) in fp32 to about 2 ulps whatever |hi|: hi = k ln2 + r with |r| <= ln2/2 taken
    out exactly, exp(r + lo) by tl.exp, and 2^k put back as two exact power-of-two factors (so a
    subnormal result rounds once)."""
    clamped = tl.minimum(tl.maximum(hi, -110.0), 90.0)  # exp is 0 below, inf above
    k = tl.floor(clamped * LOG2E + 0.5)
    r = (clamped - k * LN2_HI) - k * LN2_LO + lo
    k1 = tl.floor(k * 0.5)
    k2 = k - k1
    scale1 = ((k1.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    scale2 = ((k2.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    out = tl.exp(r) * scale1 * scale2
    out = tl.where(hi < -110.0, 0.0, tl.where(hi > 90.0, float("inf"), out))
    return tl.where(hi != hi, hi, out)  # NaN stays NaN (the clamp would have dropped it)


@triton.jit
def exp_of_difference(x, m, inv_temperature, PRECISE: tl.constexpr):
    """exp((x - m) / T), the softmax numerator measured from the max m.

    tl.exp((x - m) / T) rounds x - m first and, on a GPU, multiplies by log2(e) before its
    approximate exp2, which costs about |x - m| / T ulps: 60 for an entry 100 below the max.
    PRECISE (for fp32 outputs) keeps x - m as an exact sum of two floats and range-reduces the
    exp, so such entries keep their last bits too; for T other than 1 the rounding of 1/T
    remains. bf16 and fp16 outputs do not need it (their ulp is 2^16 fp32 ulps or more).
    """
    if PRECISE:
        hi, lo = _two_sum(x, -m)
        return _exp_reduced(hi * inv_temperature, lo * inv_temperature)
    else:
        return tl.exp((x - m) * inv_temperature)
