"""Cross-entropy, forward and backward, as Triton kernels and a torch autograd Function.

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

Backward is one pass writing dx = g * (softmax(z) * k - u) * dz/dx, with u_c the target weights
(eps w_c/C + (1 - eps) w_t [c == t] for a class index), k = sum_c u_c + 2 z_loss LSE, g the
incoming gradient of the row and dz/dx = (1 - (y/softcap)^2) / T. At the target class of a
confident row p_t - 1 would cancel, so forward saves it computed without cancellation,
p_t - 1 = -(n - 1 + r) / (n + r) when the target holds the max.

Forward saves per row (fp32; fp64 for fp64 logits): the max m and the normaliser d (the LSE as
that pair, m/T + log d, so softmax = exp((y - m)/T) / d keeps its precision for large logits),
k minus the target's own (1 - eps) w_t, and p_t - 1.

When rows are too few to fill the GPU, each row's columns are split over several programs:
forward writes each range's (m, n, r, S, U) and a combine kernel merges them before finishing
the row; backward needs no combine.
"""

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launch import (
    accumulator,
    check_device,
    check_float_tensor,
    check_temperature,
    launch_config,
    launchable,
    register_op,
    row_layout,
    row_offset,
    split_count,
)
from .online import block_state, exp_of_difference, merge, normaliser

__all__ = ["cross_entropy", "CrossEntropyLoss"]

REDUCTIONS = ("none", "mean", "sum")
ALL_IGNORED = ("nan", "zero")
NEG_INF = float("-inf")


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
def _guard(m):
    """The max to measure from: m itself, or 0 while every logit seen is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


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
    shift = _guard(m)
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
            shift_new = _guard(m_new)
            S = S + (shift_new - _guard(m)) * U + tl.sum(tl.where(u != 0.0, u * (shift_new[:, None] - y), 0.0), 1)
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
    shift = _guard(m)
    S = tl.sum(S_i + (shift[:, None] - _guard(m_i)) * U_i, 1)
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


def _row_views(x, per_row: dict, per_class: dict):
    """The row layout shared by the logits x (classes on dim 1) and named companions: per-row
    tensors (shaped like x without dim 1) are seen through a stride-0 class dim, per-class ones
    (shaped like x) as they are. Returns (layout, x, tensors, strides), tensors and strides by
    name; everything is made contiguous only when the strides cannot share one layout."""
    names = list(per_row) + list(per_class)

    def views(tensors):
        return [tensors[n].unsqueeze(1).expand(x.shape) if n in per_row else tensors[n] for n in names]

    tensors = {**per_row, **per_class}
    layout = row_layout(1, x, *views(tensors))
    if layout is None:
        x = x.contiguous()
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        layout = row_layout(1, x, *views(tensors))
    strides = dict(zip(["x"] + names, layout.strides))
    return layout, x, tensors, strides


def _as_rows(input, target):
    """(N, C, ...) logits and their target; a single row (C,) becomes (1, C)."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0)
    return input, target


@dataclass(frozen=True)
class CrossEntropyOptions:
    ignore_index: int = -100
    label_smoothing: float = 0.0
    inv_temperature: float = 1.0
    z_loss: float = 0.0
    softcap: float | None = None

    def scalars(self):
        return (self.ignore_index, self.inv_temperature, self.softcap or 1.0, self.z_loss, self.label_smoothing)


class RowStats(NamedTuple):
    """What forward leaves per row (fp32; fp64 for fp64 logits), shaped like the logits without
    the class dim: the loss and the LSE of z; for backward the row max m, the normaliser d = sum_c exp((y_c - m)/T)
    (softmax = exp((y - m)/T) / d, and LSE = m/T + log d), the gradient coefficient k less the
    target's own (1 - eps) w_t, and p_t - 1 for a class index; and denom, what the row adds to
    the denominator of a mean."""

    loss: torch.Tensor
    lse: torch.Tensor
    row_max: torch.Tensor
    norm: torch.Tensor
    k_rest: torch.Tensor
    pt_minus_1: torch.Tensor
    denom: torch.Tensor


def _plan(n_rows, n_cols, dtype, holds_weights, device):
    """Block size, warps and row splitting: (LaunchConfig, n_splits, cols_per_split)."""
    # One pass that never holds a whole row: blocks of at most CHUNK elements (fewer when the
    # per-class weights u are held beside the logits).
    cfg = launch_config(n_cols, dtype, rows_held=2 if holds_weights else 1, stream=True)
    n_splits = split_count(n_rows, n_cols, cfg.block, device)
    cols_per_split = triton.cdiv(triton.cdiv(n_cols, n_splits), cfg.block) * cfg.block
    return cfg, triton.cdiv(n_cols, cols_per_split), cols_per_split


def _flags(x, target, weight, opts):
    soft = target.is_floating_point()
    return dict(SOFT_TARGET=soft, HAS_WEIGHT=weight is not None, HAS_SOFTCAP=opts.softcap is not None,
                SMOOTH=soft or opts.label_smoothing > 0, PRECISE=x.dtype == torch.float32, ACC=accumulator(x.dtype))


def forward_rows(x, target, weight, opts: CrossEntropyOptions, launch=True) -> RowStats:
    """Per-row loss and backward statistics of logits x (N, C, d1, ...) with classes on dim 1, for
    class indices (N, d1, ...) or probabilities shaped like x. Launches forward (and combine);
    with launch=False only allocates (the fake implementation)."""
    soft = target.is_floating_point()
    n_cols = x.shape[1]
    layout, x, tensors, strides = _row_views(x, {} if soft else {"target": target}, {"target": target} if soft else {})
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = RowStats(*(torch.empty(x.shape[:1] + x.shape[2:], dtype=acc, device=x.device) for _ in RowStats._fields))
    cfg, n_splits, cols_per_split = _plan(layout.n_rows, n_cols, x.dtype, soft or weight is not None, x.device)
    if not layout.n_rows or not launch:
        return stats
    partial = torch.empty((layout.n_rows, n_splits, 5) if n_splits > 1 else 1, dtype=acc, device=x.device)
    weight_arg = weight if weight is not None else stats.loss  # not read without HAS_WEIGHT
    flags = _flags(x, target, weight, opts)
    launchable(cross_entropy_forward_kernel)[(triton.cdiv(layout.n_rows, cfg.rows), n_splits)](
        x, *strides["x"], tensors["target"], *strides["target"], weight_arg, partial, *stats,
        layout.n_rows, n_cols, layout.n_inner, cols_per_split, *opts.scalars(),
        **flags, SPLIT=n_splits > 1, ROWS=cfg.rows, BLOCK=cfg.block, num_warps=cfg.num_warps,
    )
    if n_splits > 1:
        launchable(cross_entropy_combine_kernel)[(layout.n_rows,)](
            x, *strides["x"], tensors["target"], *strides["target"][:2], weight_arg, partial, *stats,
            layout.n_rows, n_cols, layout.n_inner, n_splits, *opts.scalars(),
            **flags, SPLITS_BLOCK=triton.next_power_of_2(n_splits), num_warps=1,
        )
    return stats


def backward_rows(x, target, weight, opts: CrossEntropyOptions, stats: RowStats, grad_rows, out, lse_grad=None,
                  launch=True):
    """Write d loss / d x into `out` (shaped like x; it may be x itself), given the incoming
    gradient of each row's loss (`grad_rows`, shaped like the rows; broadcast views welcome) and,
    when not None, of each row's LSE (`lse_grad`, shaped the same)."""
    soft = target.is_floating_point()
    per_row = {"grad": grad_rows} if soft else {"grad": grad_rows, "target": target}
    if lse_grad is not None:
        per_row["lse_grad"] = lse_grad
    per_class = {"target": target, "dx": out} if soft else {"dx": out}
    layout, xs, tensors, strides = _row_views(x, per_row, per_class)
    n_cols = x.shape[1]
    cfg, n_splits, cols_per_split = _plan(layout.n_rows, n_cols, x.dtype, soft or weight is not None, x.device)
    if layout.n_rows and n_cols and launch:
        launchable(cross_entropy_backward_kernel)[(triton.cdiv(layout.n_rows, cfg.rows), n_splits)](
            xs, *strides["x"], tensors["target"], *strides["target"],
            weight if weight is not None else stats.row_max,  # not read without HAS_WEIGHT
            tensors["grad"], *strides["grad"][:2],
            *((tensors["lse_grad"], *strides["lse_grad"][:2]) if lse_grad is not None else (stats.row_max, 0, 0)),
            tensors["dx"], *strides["dx"],
            stats.row_max, stats.norm, stats.k_rest, stats.pt_minus_1,
            layout.n_rows, n_cols, layout.n_inner, cols_per_split,
            opts.ignore_index, opts.inv_temperature, opts.softcap or 1.0, opts.label_smoothing,
            **_flags(x, target, weight, opts), LSE_GRAD=lse_grad is not None, ROWS=cfg.rows, BLOCK=cfg.block,
            num_warps=cfg.num_warps,
        )
    if tensors["dx"] is not out:  # the strides forced a contiguous copy
        out.copy_(tensors["dx"])


def reduce_rows(stats: RowStats, reduction: str, row_shape, all_ignored: str = "nan"):
    """The loss as `reduction` says, and the denominator of a mean: the summed weights of the
    rows kept (their count without weights)."""
    total = stats.denom.sum()
    return reduce(stats.loss, reduction, total, row_shape, all_ignored), total


def reduce(rows, reduction, total, row_shape, all_ignored="nan"):
    """Per-row values reduced as `reduction` says, a mean dividing by `total`. A mean whose
    denominator is 0 (every target ignored, or every kept target's class weight 0) is NaN, as
    torch's 0/0 (even when smoothing made the sum positive), or 0 with all_ignored="zero"."""
    if reduction == "none":
        return rows.reshape(row_shape)
    if reduction == "sum":
        return rows.sum()
    if not isinstance(total, torch.Tensor):  # a number the caller gave (num_items), > 0
        return rows.sum() / total
    fallback = 0.0 if all_ignored == "zero" else float("nan")
    return torch.where(total != 0, rows.sum() / total, fallback)


def rows_gradient(grad_loss, reduction, total, row_shape, all_ignored="nan"):
    """The incoming gradient of each row's loss, from the gradient of the reduced loss. For a
    mean whose denominator is 0 it is NaN, as torch's (d(0/0)); the kernels still give ignored
    rows 0, so a batch with every target ignored has zero gradient, as in torch."""
    if reduction == "none":
        return grad_loss.reshape(row_shape)
    if reduction == "mean":
        fallback = 0.0 if all_ignored == "zero" else float("nan")
        grad_loss = torch.where(total != 0, grad_loss / total, fallback)
    return grad_loss.expand(row_shape)


def _check_targets(target, n_classes, ignore_index):
    """IndexError for a class index outside [0, C) that is not ignore_index: only where checking
    costs nothing (CPU tensors); on a GPU it would synchronise, and such rows give NaN instead."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        raise IndexError(f"softlight.cross_entropy: target {int(target[bad].flatten()[0])} is out of bounds for "
                         f"{n_classes} classes (ignore_index={ignore_index})")


def _row_shape(input):
    return input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()


def _forward_op(input, target, weight, reduction, ignore_index, label_smoothing, inv_temperature, z_loss, softcap,
                all_ignored, launch=True):
    if launch and not target.is_floating_point() and input.device.type == "cpu":
        _check_targets(target, input.shape[1] if input.dim() > 1 else input.shape[0], ignore_index)
    opts = CrossEntropyOptions(ignore_index, label_smoothing, inv_temperature, z_loss, softcap)
    x, target_rows = _as_rows(input, target)
    stats = forward_rows(x, target_rows, weight, opts, launch)
    loss, total = reduce_rows(stats, reduction, _row_shape(input), all_ignored)
    lse = stats.lse.reshape(_row_shape(input))
    return loss, lse, stats.row_max, stats.norm, stats.k_rest, stats.pt_minus_1, total


def _backward_op(grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total, reduction,
                 ignore_index, label_smoothing, inv_temperature, softcap, all_ignored, launch=True):
    opts = CrossEntropyOptions(ignore_index, label_smoothing, inv_temperature, 0.0, softcap)
    x, target_rows = _as_rows(input, target)
    row_shape = x.shape[:1] + x.shape[2:]
    grad_rows = rows_gradient(grad_loss, reduction, total, row_shape, all_ignored)
    lse_grad = None if grad_lse is None else grad_lse.reshape(row_shape)
    dx = torch.empty_like(x)
    backward_rows(x, target_rows, weight, opts, RowStats(None, None, row_max, norm, k_rest, pt_minus_1, None),
                  grad_rows, dx, lse_grad, launch)
    return dx.reshape(input.shape)


@register_op("cross_entropy", fake=lambda *args: _forward_op(*args, launch=False))
def cross_entropy_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                     ignore_index: int, label_smoothing: float, inv_temperature: float, z_loss: float,
                     softcap: float | None, all_ignored: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]:
    """(loss, LSE per row, row max, normaliser, k_rest, p_t - 1, denominator of a mean): the loss,
    the LSE of each row's z, and what backward needs (RowStats)."""
    return _forward_op(input, target, weight, reduction, ignore_index, label_smoothing, inv_temperature, z_loss, softcap,
                       all_ignored)


@register_op("cross_entropy_backward", fake=lambda *args: _backward_op(*args, launch=False))
def cross_entropy_backward_op(grad_loss: torch.Tensor, grad_lse: torch.Tensor | None, input: torch.Tensor,
                              target: torch.Tensor, weight: torch.Tensor | None, row_max: torch.Tensor,
                              norm: torch.Tensor, k_rest: torch.Tensor, pt_minus_1: torch.Tensor, total: torch.Tensor,
                              reduction: str, ignore_index: int, label_smoothing: float, inv_temperature: float,
                              softcap: float | None, all_ignored: str) -> torch.Tensor:
    return _backward_op(grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total, reduction,
                        ignore_index, label_smoothing, inv_temperature, softcap, all_ignored)


def _setup_context(ctx, inputs, output):
    input, target, weight, reduction, ignore_index, label_smoothing, inv_temperature, z_loss, softcap, all_ignored = inputs
    ctx.save_for_backward(input, target, weight, *output[1:])
    ctx.reduction, ctx.all_ignored, ctx.loss_shape = reduction, all_ignored, output[0].shape
    ctx.opts = CrossEntropyOptions(ignore_index, label_smoothing, inv_temperature, z_loss, softcap)
    # An output that nothing downstream uses brings None, not zeros: no LSE term unless asked.
    ctx.set_materialize_grads(False)


def _unpack(ctx, grad_loss, grad_lse):
    """What both backward paths start from: the saved tensors, the logits as rows, each row's
    incoming gradients (of its loss and of its LSE, the latter None when nothing flows into it),
    and the gradient of probability targets (None unless they need one). Unpacking checks the
    saved tensors' versions: after an in-place backward the logits hold their gradient, and a
    second backward (retain_graph) fails here."""
    input, target, weight, lse, row_max, norm, k_rest, pt_minus_1, total = ctx.saved_tensors
    x, target_rows = _as_rows(input, target)
    row_shape = x.shape[:1] + x.shape[2:]
    stats = RowStats(None, lse, row_max, norm, k_rest, pt_minus_1, None)
    if grad_loss is None:
        grad_loss = torch.zeros(ctx.loss_shape, dtype=row_max.dtype, device=row_max.device)
    grad_rows = rows_gradient(grad_loss, ctx.reduction, total, row_shape, ctx.all_ignored)
    lse_grad = None if grad_lse is None else grad_lse.reshape(row_shape)
    grad_target = None
    if target.is_floating_point() and ctx.needs_input_grad[1]:
        grad_target = _soft_target_grad(x, weight, stats, grad_rows, ctx.opts).to(target.dtype).reshape(target.shape)
    return input, target, weight, stats, total, x, target_rows, grad_loss, grad_rows, lse_grad, grad_target


def _autograd_backward(ctx, grad_loss, grad_lse, *_):
    input, target, weight, stats, total, x, target_rows, grad_loss, grad_rows, lse_grad, grad_target = _unpack(
        ctx, grad_loss, grad_lse)
    o = ctx.opts
    if torch.is_grad_enabled():
        dx = _differentiable_gradient(x, target_rows, weight, o, grad_rows, lse_grad).reshape(input.shape)
    else:
        dx = cross_entropy_backward_op(grad_loss, grad_lse, input, target, weight, stats.row_max, stats.norm,
                                       stats.k_rest, stats.pt_minus_1, total, ctx.reduction, o.ignore_index,
                                       o.label_smoothing, o.inv_temperature, o.softcap, ctx.all_ignored)
    return dx, grad_target, None, None, None, None, None, None, None, None


cross_entropy_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _differentiable_gradient(x, target, weight, o, grad_rows, lse_grad=None):
    """The gradient in torch ops, for create_graph=True (double backward):
    (g (p k - u) + h p) dz/dx, with h the gradient flowing into the row's LSE."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xx = x.to(acc)
    y = xx if o.softcap is None else o.softcap * torch.tanh(xx / o.softcap)
    z = y * o.inv_temperature
    p = torch.softmax(z, 1)
    lse = torch.logsumexp(z, 1, keepdim=True)
    n_classes = x.shape[1]
    w = torch.ones(n_classes, dtype=acc, device=x.device) if weight is None else weight.to(acc)
    w = w.reshape([-1 if i == 1 else 1 for i in range(x.dim())])
    if target.is_floating_point():
        u = w * ((1 - o.label_smoothing) * target.to(acc) + o.label_smoothing / n_classes)
        kept = torch.ones_like(lse, dtype=torch.bool)
    else:
        kept = (target != o.ignore_index).unsqueeze(1)
        onehot = torch.nn.functional.one_hot(torch.where(kept.squeeze(1), target, 0), n_classes).movedim(-1, 1).to(acc)
        u = (w * ((1 - o.label_smoothing) * onehot + o.label_smoothing / n_classes)) * kept
    k = u.sum(1, keepdim=True) + torch.where(kept, 2 * o.z_loss * lse, 0.0)
    g = torch.where(kept, grad_rows.unsqueeze(1).to(acc), 0.0)  # an ignored row's gradient is 0, whatever g is
    grad = g * (p * k - u)
    if lse_grad is not None:
        grad = grad + lse_grad.unsqueeze(1).to(acc) * p
    grad = grad * o.inv_temperature
    if o.softcap is not None:
        grad = grad * (1 - (y / o.softcap) ** 2)
    return grad.to(x.dtype)


class CrossEntropyFunction(torch.autograd.Function):
    """The in-place path (inplace_backward=True): an autograd.Function, eager mode only, that
    writes the gradient into the logits and bumps their version counter."""

    @staticmethod
    def forward(ctx, input, target, weight, reduction, opts, all_ignored):
        loss, *stats = _forward_op(input, target, weight, reduction, opts.ignore_index, opts.label_smoothing,
                                   opts.inv_temperature, opts.z_loss, opts.softcap, all_ignored)
        ctx.save_for_backward(input, target, weight, *stats)
        ctx.reduction, ctx.opts, ctx.all_ignored, ctx.loss_shape = reduction, opts, all_ignored, loss.shape
        ctx.mark_non_differentiable(stats[-1])
        ctx.set_materialize_grads(False)
        return loss, stats[0], stats[-1]

    @staticmethod
    def backward(ctx, grad_loss, grad_lse, _):
        input, target, weight, stats, _, x, target_rows, _, grad_rows, lse_grad, grad_target = _unpack(
            ctx, grad_loss, grad_lse)
        backward_rows(x, target_rows, weight, ctx.opts, stats, grad_rows, x, lse_grad)
        # The logits now hold their gradient: any other use of them in the graph must fail
        # loudly (saved-tensor version check), never read the gradient as logits.
        torch.autograd.graph.increment_version(input)
        return x.reshape(input.shape), grad_target, None, None, None, None


def _soft_target_grad(x, weight, stats, grad_rows, opts):
    """d loss / d q_c = g (1 - eps) w_c (LSE - z_c), in torch ops (a rarely used path)."""
    y = x.to(stats.row_max.dtype)
    if opts.softcap is not None:
        y = opts.softcap * torch.tanh(y / opts.softcap)
    lse = stats.lse.unsqueeze(1)
    w = 1.0 if weight is None else weight.to(y.dtype).reshape([-1 if i == 1 else 1 for i in range(x.dim())])
    return grad_rows.unsqueeze(1).to(y.dtype) * (1.0 - opts.label_smoothing) * w * (lse - y * opts.inv_temperature)


def _check_number(fn, name, value, low, low_inclusive=True, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < low or (value == low and not low_inclusive):
        bound = f">= {low}" if low_inclusive else f"> {low}"
        raise ValueError(f"{fn}: {name} must be finite and {bound}, got {value}")
    return value


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                  temperature=1.0, z_loss=0.0, softcap=None, inplace_backward=False, all_ignored="nan",
                  return_lse=False, return_z_loss=False):
    """Cross-entropy between logits and targets, like torch.nn.functional.cross_entropy.

    input: (N, C), (C,) or (N, C, d1, ...) logits, classes on dim 1. target: class indices of shape
    (N,), () or (N, d1, ...) (any integer dtype), or class probabilities shaped like input.
    weight, ignore_index, reduction, label_smoothing: torch's meaning. Beyond torch:
    temperature (logits / T), z_loss (adds z_loss * LSE**2 per row kept), softcap (logits ->
    softcap * tanh(logits / softcap), applied before the temperature), inplace_backward (the
    gradient overwrites the logits' storage; autograd raises if anything else still needs them),
    all_ignored (what reduction="mean" returns when its denominator is 0, every target ignored or
    every kept target's class weight 0: "nan" as torch, or "zero"; with every target ignored the
    gradient is zero either way), return_lse, return_z_loss (see below).

    Returns the loss; with return_lse=True also each row's LSE of z = softcap(logits) / T, shaped
    like the loss of reduction="none" (differentiable: a gradient flowing into it adds its
    p = softmax(z) term); with return_z_loss=True also the z-loss term alone, z_loss * LSE**2 over
    the rows kept, reduced as the loss is (it stays inside the loss too; for logging). Both come
    from the one forward pass, in this order: (loss, lse, z_loss), or (loss, lse) or
    (loss, z_loss).

    The loss is float32 whatever the logits dtype (float64 for float64 logits), where torch
    rounds it to the logits dtype; the gradient has the logits' dtype.
    """
    fn = "softlight.cross_entropy"
    check_float_tensor(fn, "input", input)
    check_device(fn, "input", input)
    if input.dim() == 0:
        raise ValueError(f"{fn}: input must have a class dimension, got a 0-d tensor")
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    if n_classes == 0:
        raise ValueError(f"{fn}: input has no classes (dim {1 if input.dim() > 1 else 0} is empty)")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != input.device:
        raise RuntimeError(f"{fn}: target is on {target.device} but input is on {input.device}")
    row_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(f"{fn}: class-probability target must have the input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        if target.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{fn}: class-probability target must be float16, bfloat16, float32 or float64, got {target.dtype}")
    else:
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"{fn}: target must hold class indices (an integer dtype) or class probabilities "
                            f"(a floating dtype), got {target.dtype}")
        if target.shape != row_shape:
            if target.shape == input.shape:
                raise TypeError(f"{fn}: target has the input's shape, as class probabilities do, but dtype "
                                f"{target.dtype}; probabilities must be floating point")
            raise ValueError(f"{fn}: class-index target must have shape {tuple(row_shape)} for input of shape "
                             f"{tuple(input.shape)}, got {tuple(target.shape)}")
    weight = check_class_weight(fn, "weight", weight, n_classes, "input", input.device)
    opts = check_options(fn, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap)
    if target.is_floating_point() and opts.ignore_index >= 0:
        # A negative ignore_index can never name a class; torch rejects the others as we do.
        raise ValueError(f"{fn}: ignore_index={opts.ignore_index} does not apply to class-probability targets "
                         "(torch rejects it too); leave it at its default, -100")
    if all_ignored not in ALL_IGNORED:
        raise ValueError(f"{fn}: all_ignored must be one of {ALL_IGNORED}, got {all_ignored!r}")
    check_flag(fn, "return_lse", return_lse)
    check_flag(fn, "return_z_loss", return_z_loss)
    if inplace_backward and input.requires_grad and input.is_leaf:
        raise ValueError(f"{fn}: inplace_backward=True would overwrite a leaf tensor's values with its gradient; "
                         "use it on logits computed by an op, or leave it False")
    if inplace_backward:
        loss, lse, total = CrossEntropyFunction.apply(input, target, weight, reduction, opts, all_ignored)
    else:
        loss, lse, *_, total = cross_entropy_op(input, target, weight, reduction, opts.ignore_index,
                                                opts.label_smoothing, opts.inv_temperature, opts.z_loss, opts.softcap,
                                                all_ignored)
    kept = None if target.is_floating_point() else target != opts.ignore_index
    return with_extra_outputs(loss, lse, kept, total, reduction, opts.z_loss, all_ignored, return_lse, return_z_loss)


def with_extra_outputs(loss, lse, kept, total, reduction, z_loss, all_ignored, return_lse, return_z_loss):
    """The loss alone, or (loss, lse, z_loss term) as return_lse and return_z_loss ask. The z-loss
    term, z_loss * LSE**2 over the kept rows (`kept` None: every row), reduced as the loss is, is
    computed from the LSE with torch ops, so a gradient flowing into it reaches the logits through
    the LSE's own."""
    if not (return_lse or return_z_loss):
        return loss
    outputs = [loss]
    if return_lse:
        outputs.append(lse)
    if return_z_loss:
        if z_loss == 0.0:
            rows = torch.zeros_like(lse)
        else:
            rows = z_loss * lse * lse
            if kept is not None:
                rows = torch.where(kept, rows, 0.0)
        outputs.append(reduce(rows, reduction, total, lse.shape, all_ignored))
    return tuple(outputs)


def check_flag(fn, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")


def check_class_weight(fn, name, weight, n_classes, input_name, device):
    """torch's per-class weight: None, or a floating (C,) tensor on the input's device that needs
    no gradient; returned contiguous."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {got}")
    if weight.shape != (n_classes,):
        raise ValueError(f"{fn}: {name} must have shape ({n_classes},), one per class, got {tuple(weight.shape)}")
    if weight.device != device:
        raise RuntimeError(f"{fn}: {name} is on {weight.device} but {input_name} is on {device}")
    if weight.requires_grad:
        raise NotImplementedError(f"{fn}: the gradient with respect to {name} is not implemented (nor in torch)")
    return weight.contiguous()


def check_options(fn, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap) -> CrossEntropyOptions:
    """The scalar options every cross-entropy takes, checked, as CrossEntropyOptions."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{fn}: ignore_index must be an int, got {type(ignore_index).__name__}")
    smoothing = _check_number(fn, "label_smoothing", label_smoothing, 0.0)
    if smoothing > 1.0:
        raise ValueError(f"{fn}: label_smoothing must be between 0.0 and 1.0, got {smoothing}")
    temperature = check_temperature(fn, temperature)
    z_loss = _check_number(fn, "z_loss", z_loss, 0.0)
    softcap = _check_number(fn, "softcap", softcap, 0.0, low_inclusive=False, allow_none=True)
    return CrossEntropyOptions(ignore_index, smoothing, 1.0 / temperature, z_loss, softcap)


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for torch.nn.CrossEntropyLoss (same arguments, in the same order, including the
    deprecated size_average and reduce), with softlight's extra options as keywords."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, temperature=1.0, z_loss=0.0, softcap=None, inplace_backward=False,
                 all_ignored="nan", return_lse=False, return_z_loss=False):
        super().__init__()
        if size_average is not None or reduce is not None:
            # torch's legacy rule for the two deprecated flags.
            reduce = True if reduce is None else reduce
            size_average = True if size_average is None else size_average
            reduction = "none" if not reduce else "mean" if size_average else "sum"
            warnings.warn(f"size_average and reduce args will be deprecated, please use reduction='{reduction}' "
                          "instead.", stacklevel=2)
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.temperature, self.z_loss, self.softcap, self.inplace_backward = temperature, z_loss, softcap, inplace_backward
        self.all_ignored, self.return_lse, self.return_z_loss = all_ignored, return_lse, return_z_loss

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
                             temperature=self.temperature, z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward, all_ignored=self.all_ignored,
                             return_lse=self.return_lse, return_z_loss=self.return_z_loss)

    def extra_repr(self):
        extras = {"ignore_index": (self.ignore_index, -100), "reduction": (self.reduction, "mean"),
                  "label_smoothing": (self.label_smoothing, 0.0), "temperature": (self.temperature, 1.0),
                  "z_loss": (self.z_loss, 0.0), "softcap": (self.softcap, None),
                  "return_lse": (self.return_lse, False), "return_z_loss": (self.return_z_loss, False)}
        return ", ".join(f"{k}={v!r}" for k, (v, default) in extras.items() if v != default)
