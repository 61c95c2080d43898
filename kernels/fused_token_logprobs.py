"""Per-token log-probabilities and entropy, in one pass over the logits, as Triton kernels and torch
autograd Functions; and the fused form from hidden states that never holds the logits.

    logp = softlight.token_logprobs(logits, ids)                   # log_softmax(logits)[ids]
    logp, entropy = softlight.token_logprobs(logits, ids, temperature=0.7, return_entropy=True)
    logp = softlight.linear_token_logprobs(hidden, lm_head.weight, ids)

Reinforcement-learning code wants, for each position, the log-probability of the sampled token
and often the entropy of the distribution. Written with torch ops that is a full (N, V)
log-softmax (and a softmax for the entropy) read back for one value per row. Here one program per
row reads its V logits once and writes three numbers.

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

Shapes: logits (..., V) with the vocabulary last (the natural layout of a language model's
output, (batch, sequence, V)), ids (...) the same shape without V; outputs shaped like ids,
float32 (float64 for float64 logits).

For the benchmark, the bytes model: forward reads the N x V logits once (and N ids) and writes a
few numbers per row; backward reads the logits and writes their gradient (2 N V elements). The
torch path it replaces: `log_softmax(logits.float() / T, -1).gather(-1, ids[..., None])` and, for
the entropy, `-(p * log_p).sum(-1)` with p = log_p.exp(), which writes and reads back (N, V)
tensors. The fused form (`linear_token_logprobs`) is compared like `linear_cross_entropy`.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .launch import accumulator, check_device, check_float_tensor, check_temperature, launch_config, row_layout, row_offset
from .online import block_state, exp_of_difference, merge, normaliser
from .linear_chunks import LinearGradients, check_chunk_size, check_indices, check_linear, chunk_rows, chunk_slices, linear

__all__ = ["token_logprobs", "linear_token_logprobs"]


@triton.jit
def _guard(m):
    """The max to measure from: m itself, or 0 while every logit seen is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


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
            shift_old = _guard(m)
            shift = _guard(m_new)
            rescale = tl.exp((m - shift) * inv_temperature)  # 0 while nothing finite was seen
            z = (x - shift) * inv_temperature  # <= 0; -inf off the row and on masked classes
            e = tl.exp(z)
            # e * z is 0 where e is 0 (z = -inf included), never 0 * inf.
            A = rescale * (A + (n + r) * (shift_old - shift) * inv_temperature) + tl.sum(tl.where(e > 0.0, e * z, 0.0), 0)
        m, n, r = m_new, n_new, r_new

    d, log_d = normaliser(m, n, r)
    shift = _guard(m)
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
    shift = _guard(m)
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


class LogprobStats(NamedTuple):
    """What forward leaves per row, shaped like ids (fp32; fp64 for fp64 logits): the outputs and,
    for backward, the row max m, the normaliser d, 1 - p_t and E = A/d (entropy and mean are None
    without entropy)."""

    logp: torch.Tensor
    entropy: torch.Tensor | None
    row_max: torch.Tensor
    norm: torch.Tensor
    one_minus_pt: torch.Tensor
    mean: torch.Tensor | None


def _empty_stats(shape, dtype, device, entropy: bool) -> LogprobStats:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return LogprobStats(*(torch.empty(shape, dtype=acc, device=device) if entropy or name not in ("entropy", "mean")
                          else None for name in LogprobStats._fields))


def _row_views(x, per_row: dict, out=None):
    """The row layout over the last dim shared by x, per-row tensors (shaped like x without its
    last dim, seen through a stride-0 last dim) and `out` (shaped like x). Everything is made
    contiguous only when the strides cannot share one layout. Returns (layout, x, per_row, out)."""
    def layout_of(x, per_row, out):
        views = [t.unsqueeze(-1).expand(x.shape) for t in per_row.values()]
        return row_layout(-1, x, *views, *([] if out is None else [out]))

    layout = layout_of(x, per_row, out)
    if layout is None:
        x = x.contiguous()
        per_row = {n: t.contiguous() for n, t in per_row.items()}
        out = None if out is None else torch.empty(x.shape, dtype=out.dtype, device=out.device)
        layout = layout_of(x, per_row, out)
    return layout, x, per_row, out


def logprob_rows(x, ids, inv_temperature: float, entropy: bool) -> LogprobStats:
    """log softmax(x / T)[ids] of each row of x (..., V), and its entropy when `entropy`."""
    stats = _empty_stats(ids.shape, x.dtype, x.device, entropy)
    layout, x, per_row, _ = _row_views(x, {"ids": ids})
    if layout.n_rows:
        cfg = launch_config(layout.n_cols, x.dtype, stream=True)
        (xs_outer, xs_inner, xs_col), (ids_outer, ids_inner, _) = layout.strides
        token_logprobs_forward_kernel[(layout.n_rows,)](
            x, xs_outer, xs_inner, xs_col, per_row["ids"], ids_outer, ids_inner,
            stats.logp, stats.entropy if entropy else stats.logp, stats.row_max, stats.norm, stats.one_minus_pt,
            stats.mean if entropy else stats.logp,  # not written without ENTROPY
            layout.n_cols, layout.n_inner, inv_temperature,
            ENTROPY=entropy, PRECISE=x.dtype == torch.float32, BLOCK=cfg.block, ACC=accumulator(x.dtype),
            num_warps=cfg.num_warps,
        )
    return stats


def logprob_grad_rows(x, ids, inv_temperature: float, stats: LogprobStats, grad_logp, grad_entropy, out):
    """Write d/dx of sum(grad_logp * logp + grad_entropy * entropy) into `out` (shaped like x; it
    may be x itself). grad_logp / grad_entropy: shaped like ids (broadcast views welcome), or None
    for no gradient."""
    per_row = {"ids": ids}
    if grad_logp is not None:
        per_row["grad_logp"] = grad_logp
    if grad_entropy is not None:
        per_row["grad_entropy"] = grad_entropy
    layout, xs, per_row, dx = _row_views(x, per_row, out)
    strides = dict(zip(["x", *per_row, "dx"], layout.strides))
    if layout.n_rows and layout.n_cols:
        cfg = launch_config(layout.n_cols, x.dtype, stream=True)
        unused = (stats.row_max, 0, 0)  # stands in for a gradient that is not there
        grad_logp_args = (per_row["grad_logp"], *strides["grad_logp"][:2]) if grad_logp is not None else unused
        grad_entropy_args = (per_row["grad_entropy"], *strides["grad_entropy"][:2]) if grad_entropy is not None else unused
        token_logprobs_backward_kernel[(layout.n_rows,)](
            xs, *strides["x"], per_row["ids"], *strides["ids"][:2], *grad_logp_args, *grad_entropy_args,
            dx, *strides["dx"], stats.row_max, stats.norm, stats.one_minus_pt,
            stats.mean if grad_entropy is not None else stats.row_max,
            layout.n_cols, layout.n_inner, inv_temperature,
            LOGP_GRAD=grad_logp is not None, ENTROPY_GRAD=grad_entropy is not None, PRECISE=dx.dtype == torch.float32,
            BLOCK=cfg.block, ACC=accumulator(x.dtype), num_warps=cfg.num_warps,
        )
    if dx is not out:  # the strides forced a contiguous copy
        out.copy_(dx)


def _outputs(stats: LogprobStats, entropy: bool):
    return (stats.logp, stats.entropy) if entropy else stats.logp


class TokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, inv_temperature, entropy):
        stats = logprob_rows(logits, ids, inv_temperature, entropy)
        ctx.save_for_backward(logits, ids, stats.row_max, stats.norm, stats.one_minus_pt, stats.mean)
        ctx.inv_temperature = inv_temperature
        ctx.set_materialize_grads(False)  # an output not used in the loss brings no gradient
        return _outputs(stats, entropy)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy=None):
        logits, ids, row_max, norm, one_minus_pt, mean = ctx.saved_tensors
        stats = LogprobStats(None, None, row_max, norm, one_minus_pt, mean)
        dx = torch.empty_like(logits)
        logprob_grad_rows(logits, ids, ctx.inv_temperature, stats, grad_logp, grad_entropy, dx)
        return dx, None, None, None


class LinearTokenLogprobsFunction(torch.autograd.Function):
    """token_logprobs of hidden @ weight.T + bias, a chunk of tokens at a time. Backward always
    recomputes each chunk's logits: the incoming gradients are per token, known only then."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, inv_temperature, entropy, rows):
        flat_ids = ids.reshape(-1)
        h = hidden.reshape(flat_ids.shape[0], hidden.shape[-1])
        stats = _empty_stats(flat_ids.shape, h.dtype, h.device, entropy)
        for chunk in chunk_slices(h.shape[0], rows):
            logits = linear(h[chunk], weight, bias)
            for whole, part in zip(stats, logprob_rows(logits, flat_ids[chunk], inv_temperature, entropy)):
                if whole is not None:
                    whole[chunk] = part
            del logits  # before the next chunk's logits are allocated: one chunk alive at a time
        ctx.save_for_backward(h, weight, bias, flat_ids, stats.row_max, stats.norm, stats.one_minus_pt, stats.mean)
        ctx.inv_temperature, ctx.rows, ctx.hidden_shape = inv_temperature, rows, hidden.shape
        ctx.set_materialize_grads(False)
        return _outputs(LogprobStats(*(None if s is None else s.reshape(ids.shape) for s in stats)), entropy)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy=None):
        h, weight, bias, ids, row_max, norm, one_minus_pt, mean = ctx.saved_tensors
        grad_logp = None if grad_logp is None else grad_logp.reshape(-1)
        grad_entropy = None if grad_entropy is None else grad_entropy.reshape(-1)
        grads = LinearGradients(h, weight, bias, ctx.needs_input_grad[:3])
        for chunk in chunk_slices(h.shape[0], ctx.rows):
            logits = linear(h[chunk], weight, bias)
            stats = LogprobStats(None, None, row_max[chunk], norm[chunk], one_minus_pt[chunk],
                                 None if mean is None else mean[chunk])
            logprob_grad_rows(logits, ids[chunk], ctx.inv_temperature, stats,
                              None if grad_logp is None else grad_logp[chunk],
                              None if grad_entropy is None else grad_entropy[chunk], logits)
            grads.add(chunk, logits, h[chunk])
            del logits
        grad_hidden, grad_weight, grad_bias = grads.result()
        if grad_hidden is not None:
            grad_hidden = grad_hidden.reshape(ctx.hidden_shape)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _check_return_entropy(fn, return_entropy):
    if not isinstance(return_entropy, bool):
        raise TypeError(f"{fn}: return_entropy must be a bool, got {type(return_entropy).__name__}")
    return return_entropy


def token_logprobs(logits, ids, *, temperature=1.0, return_entropy=False):
    """log softmax(logits / temperature) at `ids`, one value per row, and optionally each row's
    entropy -sum_c p_c log p_c; differentiable in the logits, in one pass without an (N, V)
    log-softmax.

    logits: (..., V), the vocabulary last; ids: (...) token ids (any integer dtype), logits' shape
    without V. Returns logp shaped like ids, or (logp, entropy) with return_entropy=True; float32
    (float64 for float64 logits). -inf logits are masked-out tokens: they add 0 to the entropy
    (torch's -(p * log p).sum() gives NaN there; torch.special.entr agrees with us). An id outside
    [0, V) raises IndexError on the CPU; on a GPU its row's log-probability is NaN.
    """
    fn = "softlight.token_logprobs"
    check_float_tensor(fn, "logits", logits)
    check_device(fn, "logits", logits)
    if logits.dim() == 0:
        raise ValueError(f"{fn}: logits must be (..., V), with the vocabulary last; got a 0-d tensor")
    if logits.shape[-1] == 0:
        raise ValueError(f"{fn}: logits have an empty vocabulary (last dim is 0)")
    check_indices(fn, "ids", ids, logits, logits.shape[-1])
    inv_temperature = 1.0 / check_temperature(fn, temperature)
    entropy = _check_return_entropy(fn, return_entropy)
    return TokenLogprobsFunction.apply(logits, ids, inv_temperature, entropy)


def linear_token_logprobs(hidden, weight, ids, bias=None, *, temperature=1.0, return_entropy=False, chunk_size=None):
    """token_logprobs(hidden @ weight.T + bias, ids, ...) with gradients for hidden, weight and
    bias, never holding the (N, V) logits: they are made, used and dropped a chunk of tokens at a
    time (forward, then again in backward, which recomputes them).

    hidden: (..., H); weight: (V, H); bias: (V,) or None (one floating dtype and device); ids:
    (...) token ids, hidden's shape without H. Returns logp shaped like ids, or (logp, entropy)
    with return_entropy=True, float32 (float64 for float64 inputs). chunk_size: rows per chunk
    (default: see `linear_chunks.chunk_rows`).
    """
    fn = "softlight.linear_token_logprobs"
    n_classes = check_linear(fn, hidden, weight, bias)
    check_indices(fn, "ids", ids, hidden, n_classes)
    inv_temperature = 1.0 / check_temperature(fn, temperature)
    entropy = _check_return_entropy(fn, return_entropy)
    rows = chunk_rows(ids.numel(), hidden.shape[-1], n_classes, check_chunk_size(fn, chunk_size))
    return LinearTokenLogprobsFunction.apply(hidden, weight, bias, ids, inv_temperature, entropy, rows)
