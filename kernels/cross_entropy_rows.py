"""Cross-entropy over rows: the options, the per-row statistics, forward, backward and reductions.

Shared by `cross_entropy` (logits of any shape, classes on dim 1) and the linear forms (a chunk of
logits at a time). The math is in kernels/cross_entropy_kernels.py.

Forward leaves per row (fp32; fp64 for fp64 logits) the loss, the LSE, and what backward needs:
the max m and the normaliser d (the LSE as that pair, m/T + log d, so softmax = exp((y - m)/T) / d
keeps its precision for large logits), k minus the target's own (1 - eps) w_t, and p_t - 1.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton

from . import launch
from .cross_entropy_kernels import cross_entropy_backward_kernel, cross_entropy_combine_kernel, cross_entropy_forward_kernel
from .registry import Options
from .rows import row_views

__all__ = ["CrossEntropyOptions", "RowStats", "forward_rows", "backward_rows", "reduce", "reduce_rows",
           "rows_gradient", "gradient_in_torch", "soft_target_gradient"]


@dataclass(frozen=True)
class CrossEntropyOptions(Options):
    ignore_index: int = -100
    label_smoothing: float = 0.0
    inv_temperature: float = 1.0
    z_loss: float = 0.0
    softcap: float | None = None
    reduction: str = "mean"
    all_ignored: str = "nan"  # a mean over a denominator of 0: "nan" (torch's 0/0) or "zero"
    inplace: bool = False  # backward writes the gradient into the logits' storage

    def kernel_scalars(self) -> tuple:
        return (self.ignore_index, self.inv_temperature, self.softcap or 1.0, self.z_loss, self.label_smoothing)


class RowStats(NamedTuple):
    """What forward leaves per row, shaped like the logits without the class dim: the loss and
    the LSE of z; for backward the row max m, the normaliser d = sum_c exp((y_c - m)/T), the
    gradient coefficient k less the target's own (1 - eps) w_t, and p_t - 1 for a class index;
    and denom, what the row adds to the denominator of a mean."""

    loss: torch.Tensor
    lse: torch.Tensor
    row_max: torch.Tensor
    norm: torch.Tensor
    k_rest: torch.Tensor
    pt_minus_1: torch.Tensor
    denom: torch.Tensor


def _plan(n_rows, n_cols, dtype, holds_weights, device):
    """Block size, warps and row splitting: (LaunchConfig, n_splits, cols_per_split)."""
    # One pass that never holds a whole row: blocks of at most `chunk` elements (fewer when the
    # per-class weights u are held beside the logits).
    cfg = launch.launch_config(n_cols, dtype, rows_held=2 if holds_weights else 1, stream=True)
    n_splits = launch.split_count(n_rows, n_cols, cfg.block, device)
    cols_per_split = triton.cdiv(triton.cdiv(n_cols, n_splits), cfg.block) * cfg.block
    return cfg, triton.cdiv(n_cols, cols_per_split), cols_per_split


def _flags(x, target, weight, o: CrossEntropyOptions) -> dict:
    soft = target.is_floating_point()
    return dict(SOFT_TARGET=soft, HAS_WEIGHT=weight is not None, HAS_SOFTCAP=o.softcap is not None,
                SMOOTH=soft or o.label_smoothing > 0, PRECISE=x.dtype == torch.float32,
                ACC=launch.accumulator(x.dtype))


def forward_rows(x, target, weight, o: CrossEntropyOptions) -> RowStats:
    """Per-row loss and backward statistics of logits x (N, C, d1, ...) with classes on dim 1, for
    class indices (N, d1, ...) or probabilities shaped like x."""
    soft = target.is_floating_point()
    n_cols = x.shape[1]
    views = row_views(1, x, per_element={"target": target} if soft else {}, per_row={} if soft else {"target": target})
    layout = views.layout
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = RowStats(*(torch.empty(x.shape[:1] + x.shape[2:], dtype=acc, device=x.device) for _ in RowStats._fields))
    if not layout.n_rows:
        return stats
    cfg, n_splits, cols_per_split = _plan(layout.n_rows, n_cols, x.dtype, soft or weight is not None, x.device)
    partial = torch.empty((layout.n_rows, n_splits, 5) if n_splits > 1 else 1, dtype=acc, device=x.device)
    weight_arg = weight if weight is not None else stats.loss  # not read without HAS_WEIGHT
    flags = _flags(x, target, weight, o)
    launch.run(
        cross_entropy_forward_kernel, (triton.cdiv(layout.n_rows, cfg.rows), n_splits),
        *views.args("x"), *views.args("target"), weight_arg, partial, *stats,
        layout.n_rows, n_cols, layout.n_inner, cols_per_split, *o.kernel_scalars(),
        **flags, SPLIT=n_splits > 1, ROWS=cfg.rows, BLOCK=cfg.block, num_warps=cfg.num_warps,
    )
    if n_splits > 1:
        launch.run(
            cross_entropy_combine_kernel, (layout.n_rows,),
            *views.args("x"), *views.args("target", 2), weight_arg, partial, *stats,
            layout.n_rows, n_cols, layout.n_inner, n_splits, *o.kernel_scalars(),
            **flags, SPLITS_BLOCK=triton.next_power_of_2(n_splits), num_warps=1,
        )
    return stats


def backward_rows(x, target, weight, o: CrossEntropyOptions, stats: RowStats, grad_rows, out, lse_grad=None):
    """Write d loss / d x into `out` (shaped like x; it may be x itself), given the incoming
    gradient of each row's loss (`grad_rows`, shaped like the rows; broadcast views welcome) and,
    when not None, of each row's LSE (`lse_grad`, shaped the same)."""
    soft = target.is_floating_point()
    per_row = {"grad": grad_rows} if soft else {"grad": grad_rows, "target": target}
    if lse_grad is not None:
        per_row["lse_grad"] = lse_grad
    per_element = {"target": target, "dx": out} if soft else {"dx": out}
    views = row_views(1, x, per_row=per_row, per_element=per_element)
    layout = views.layout
    n_cols = x.shape[1]
    if layout.n_rows and n_cols:
        cfg, n_splits, cols_per_split = _plan(layout.n_rows, n_cols, x.dtype, soft or weight is not None, x.device)
        launch.run(
            cross_entropy_backward_kernel, (triton.cdiv(layout.n_rows, cfg.rows), n_splits),
            *views.args("x"), *views.args("target"),
            weight if weight is not None else stats.row_max,  # not read without HAS_WEIGHT
            *views.args("grad", 2),
            *(views.args("lse_grad", 2) if lse_grad is not None else (stats.row_max, 0, 0)),
            *views.args("dx"),
            stats.row_max, stats.norm, stats.k_rest, stats.pt_minus_1,
            layout.n_rows, n_cols, layout.n_inner, cols_per_split,
            o.ignore_index, o.inv_temperature, o.softcap or 1.0, o.label_smoothing,
            **_flags(x, target, weight, o), LSE_GRAD=lse_grad is not None, ROWS=cfg.rows, BLOCK=cfg.block,
            num_warps=cfg.num_warps,
        )
    views.write_back("dx", out)


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


def reduce_rows(stats: RowStats, o: CrossEntropyOptions, row_shape):
    """The loss as o.reduction says, and the denominator of a mean: the summed weights of the
    rows kept (their count without weights)."""
    total = stats.denom.sum()
    return reduce(stats.loss, o.reduction, total, row_shape, o.all_ignored), total


def rows_gradient(grad_loss, o: CrossEntropyOptions, total, row_shape):
    """The incoming gradient of each row's loss, from the gradient of the reduced loss. For a
    mean whose denominator is 0 it is NaN, as torch's (d(0/0)); the kernels still give ignored
    rows 0, so a batch with every target ignored has zero gradient, as in torch."""
    if o.reduction == "none":
        return grad_loss.reshape(row_shape)
    if o.reduction == "mean":
        fallback = 0.0 if o.all_ignored == "zero" else float("nan")
        grad_loss = torch.where(total != 0, grad_loss / total, fallback)
    return grad_loss.expand(row_shape)


def gradient_in_torch(x, target, weight, o: CrossEntropyOptions, grad_rows, lse_grad=None):
    """backward_rows in torch ops, for create_graph=True (double backward):
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


def soft_target_gradient(x, weight, lse, grad_rows, o: CrossEntropyOptions):
    """d loss / d q_c = g (1 - eps) w_c (LSE - z_c), in torch ops (a rarely used path)."""
    y = x.to(lse.dtype)
    if o.softcap is not None:
        y = o.softcap * torch.tanh(y / o.softcap)
    w = 1.0 if weight is None else weight.to(y.dtype).reshape([-1 if i == 1 else 1 for i in range(x.dim())])
    return grad_rows.unsqueeze(1).to(y.dtype) * (1.0 - o.label_smoothing) * w * (lse.unsqueeze(1) - y * o.inv_temperature)
