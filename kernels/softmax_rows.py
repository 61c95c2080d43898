"""Softmax and log-softmax over rows: the options, and forward and backward over a tensor's rows.

`forward_rows` and `backward_rows` see any tensor as rows over `dim` (kernels/rows.py), pick the
launch (kernels/launch.py) and run the kernels of kernels/softmax_kernels.py. `backward_in_torch`
is the same backward written with torch ops, for create_graph=True: differentiating it again goes
through y, whose own backward is the op's.
"""

from dataclasses import dataclass

import torch
import triton

from . import launch
from .registry import Options
from .rows import row_views
from .softmax_kernels import softmax_backward_kernel, softmax_forward_kernel

__all__ = ["SoftmaxOptions", "forward_rows", "backward_rows", "backward_in_torch"]


@dataclass(frozen=True)
class SoftmaxOptions(Options):
    dim: int  # non-negative
    dtype: torch.dtype  # of the output (torch's dtype=: the input is rounded to it first)
    input_dtype: torch.dtype  # of the input, and so of its gradient
    inv_temperature: float = 1.0
    log: bool = False  # log_softmax
    masked_zero: bool = False  # masked_rows="zero": an all -inf row gives 0 (log: -inf), zero gradient


def forward_rows(x: torch.Tensor, o: SoftmaxOptions) -> torch.Tensor:
    views = row_views(o.dim, x, new={"y": o.dtype})
    y, layout = views["y"], views.layout
    if y.numel():
        cfg = launch.launch_config(layout.n_cols, o.dtype)
        launch.run(
            softmax_forward_kernel, (triton.cdiv(layout.n_rows, cfg.rows),),
            views["x"], y, layout.n_rows, layout.n_cols, layout.n_inner, *views.strides["x"], *views.strides["y"],
            o.inv_temperature,
            LOG=o.log, SINGLE_BLOCK=cfg.single_block, MASKED_ZERO=o.masked_zero, PRECISE=o.dtype == torch.float32,
            ROWS=cfg.rows, BLOCK=cfg.block, ACC=launch.accumulator(o.dtype), num_warps=cfg.num_warps,
        )
    return y


def backward_rows(y: torch.Tensor, dy: torch.Tensor, o: SoftmaxOptions) -> torch.Tensor:
    views = row_views(o.dim, y, per_element={"dy": dy}, new={"dx": o.input_dtype})
    dx, layout = views["dx"], views.layout
    if dx.numel():
        cfg = launch.launch_config(layout.n_cols, y.dtype, rows_held=2)
        launch.run(
            softmax_backward_kernel, (triton.cdiv(layout.n_rows, cfg.rows),),
            views["x"], views["dy"], dx, layout.n_rows, layout.n_cols, layout.n_inner, *views.strides["x"],
            *views.strides["dy"], *views.strides["dx"], o.inv_temperature,
            LOG=o.log, SINGLE_BLOCK=cfg.single_block, MASKED_ZERO=o.masked_zero,
            ROWS=cfg.rows, BLOCK=cfg.block, ACC=launch.accumulator(y.dtype), num_warps=cfg.num_warps,
        )
    return dx


def backward_in_torch(y: torch.Tensor, dy: torch.Tensor, o: SoftmaxOptions) -> torch.Tensor:
    """backward_rows in torch ops (differentiable)."""
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    yy, gg = y.to(acc), dy.to(acc)
    if o.log:
        dx = gg - yy.exp() * gg.sum(o.dim, keepdim=True)
        if o.masked_zero:
            dx = dx.masked_fill((yy == float("-inf")).all(o.dim, keepdim=True), 0.0)
    else:
        dx = yy * (gg - (gg * yy).sum(o.dim, keepdim=True))
    return (dx * o.inv_temperature).to(o.input_dtype)
