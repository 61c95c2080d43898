"""Per-token log-probabilities over rows: the options, the per-row statistics, forward and backward.

Shared by `token_logprobs` (logits (..., V), the vocabulary last) and `linear_token_logprobs` (a
chunk of logits at a time). The math is in kernels/token_logprobs_kernels.py.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import launch
from .registry import Options
from .rows import row_views
from .token_logprobs_kernels import token_logprobs_backward_kernel, token_logprobs_forward_kernel

__all__ = ["TokenLogprobsOptions", "LogprobStats", "empty_stats", "logprob_rows", "logprob_grad_rows"]


@dataclass(frozen=True)
class TokenLogprobsOptions(Options):
    inv_temperature: float = 1.0
    entropy: bool = False  # also each row's entropy
    ignore_index: int = -100  # ids equal to it give 0 (log p and entropy) and pass no gradient


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


def empty_stats(shape, dtype, device, entropy: bool) -> LogprobStats:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return LogprobStats(*(torch.empty(shape, dtype=acc, device=device) if entropy or name not in ("entropy", "mean")
                          else None for name in LogprobStats._fields))


def logprob_rows(x, ids, o: TokenLogprobsOptions) -> LogprobStats:
    """log softmax(x / T)[ids] of each row of x (..., V), and its entropy when o.entropy; 0 for
    both where ids is o.ignore_index (prompt and padding positions)."""
    stats = empty_stats(ids.shape, x.dtype, x.device, o.entropy)
    kept = ids != o.ignore_index
    ids = torch.where(kept, ids, 0)  # the kernels see a valid id; its row's outputs are zeroed below
    views = row_views(-1, x, per_row={"ids": ids})
    layout = views.layout
    if layout.n_rows:
        cfg = launch.launch_config(layout.n_cols, x.dtype, stream=True)
        launch.run(
            token_logprobs_forward_kernel, (layout.n_rows,),
            *views.args("x"), *views.args("ids", 2),
            stats.logp, stats.entropy if o.entropy else stats.logp, stats.row_max, stats.norm, stats.one_minus_pt,
            stats.mean if o.entropy else stats.logp,  # not written without ENTROPY
            layout.n_cols, layout.n_inner, o.inv_temperature,
            ENTROPY=o.entropy, PRECISE=x.dtype == torch.float32, BLOCK=cfg.block, ACC=launch.accumulator(x.dtype),
            num_warps=cfg.num_warps,
        )
    for out in (stats.logp, stats.entropy):
        if out is not None:
            out.masked_fill_(~kept, 0.0)
    return stats


def logprob_grad_rows(x, ids, o: TokenLogprobsOptions, stats: LogprobStats, grad_logp, grad_entropy, out):
    """Write d/dx of sum(grad_logp * logp + grad_entropy * entropy) into `out` (shaped like x; it
    may be x itself). grad_logp / grad_entropy: shaped like ids (broadcast views welcome), or None
    for no gradient. Rows whose id is o.ignore_index get no gradient (0, for finite logits)."""
    kept = ids != o.ignore_index
    ids = torch.where(kept, ids, 0)
    grad_logp = None if grad_logp is None else torch.where(kept, grad_logp, 0.0)
    grad_entropy = None if grad_entropy is None else torch.where(kept, grad_entropy, 0.0)
    per_row = {"ids": ids}
    if grad_logp is not None:
        per_row["grad_logp"] = grad_logp
    if grad_entropy is not None:
        per_row["grad_entropy"] = grad_entropy
    views = row_views(-1, x, per_row=per_row, per_element={"dx": out})
    layout = views.layout
    if layout.n_rows and layout.n_cols:
        cfg = launch.launch_config(layout.n_cols, x.dtype, stream=True)
        unused = (stats.row_max, 0, 0)  # stands in for a gradient that is not there
        launch.run(
            token_logprobs_backward_kernel, (layout.n_rows,),
            *views.args("x"), *views.args("ids", 2),
            *(views.args("grad_logp", 2) if grad_logp is not None else unused),
            *(views.args("grad_entropy", 2) if grad_entropy is not None else unused),
            *views.args("dx"), stats.row_max, stats.norm, stats.one_minus_pt,
            stats.mean if grad_entropy is not None else stats.row_max,
            layout.n_cols, layout.n_inner, o.inv_temperature,
            LOGP_GRAD=grad_logp is not None, ENTROPY_GRAD=grad_entropy is not None, PRECISE=out.dtype == torch.float32,
            BLOCK=cfg.block, ACC=launch.accumulator(x.dtype), num_warps=cfg.num_warps,
        )
    views.write_back("dx", out)
