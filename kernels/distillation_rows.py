"""Divergences over rows: the options, the per-row statistics, forward, backward and reductions.

Shared by `distillation_loss` (student and teacher logits (..., V), the vocabulary last) and
`linear_distillation_loss` (a chunk of both models' logits at a time). The math is in
kernels/distillation_kernels.py.

Forward leaves per row (fp32; fp64 when either input is fp64) the divergence and what backward
needs: each distribution's max and normaliser (its log-sum-exp as m/T + log d), the log-ratio of
the two normalisers, and the row's KL sums (the divergence itself for the KLs, KL(p_t || m) and
KL(p_s || m) for the JSD).
"""

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import triton

from . import launch
from .distillation_kernels import distillation_backward_kernel, distillation_forward_kernel
from .registry import Options
from .rows import row_views

__all__ = ["DIVERGENCES", "REDUCTIONS", "DistillationOptions", "DivergenceStats", "accumulator", "empty_stats",
           "forward_rows", "backward_rows", "kept_count", "reduce_rows", "rows_gradient"]

DIVERGENCES = ("kl", "reverse_kl", "jsd")
REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class DistillationOptions(Options):
    divergence: str = "kl"
    beta: float = 0.5  # the JSD's weight of the teacher
    inv_temperature: float = 1.0
    ignore_index: int = -100
    reduction: str = "mean"

    def kernel_scalars(self) -> tuple:
        """ignore_index, then 1/T and beta each as an fp32 pair hi + lo (a kernel's float arguments
        are fp32; the pair keeps 48 bits for the fp64 path, and hi alone is the fp32 value)."""
        return (self.ignore_index, *_fp32_pair(self.inv_temperature), *_fp32_pair(self.beta))

    @property
    def code(self) -> int:
        """The kernels' DIVERGENCE constant."""
        return DIVERGENCES.index(self.divergence)


class DivergenceStats(NamedTuple):
    """What forward leaves per row, shaped like the rows: the divergence, each distribution's max m
    and normaliser d = sum_c exp((x_c - m)/T), log(d_t / d_s) as the Newton step made it
    consistent (kernels/distillation_kernels.py), and the two KL sums: KL(p_t || q) and KL(p_s || q),
    q the other distribution for the KLs (the one not computed is 0) and m for the JSD."""

    loss: torch.Tensor
    student_max: torch.Tensor
    student_norm: torch.Tensor
    teacher_max: torch.Tensor
    teacher_norm: torch.Tensor
    log_norm_ratio: torch.Tensor
    k_teacher: torch.Tensor
    k_student: torch.Tensor


def _fp32_pair(value: float) -> tuple[float, float]:
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def accumulator(student_dtype: torch.dtype, teacher_dtype: torch.dtype) -> torch.dtype:
    """fp64 when either input is fp64 (gradcheck), else fp32: the dtype of the loss and statistics."""
    return torch.float64 if torch.float64 in (student_dtype, teacher_dtype) else torch.float32


def empty_stats(shape, dtype, device) -> DivergenceStats:
    return DivergenceStats(*(torch.empty(shape, dtype=dtype, device=device) for _ in DivergenceStats._fields))


def _constants(acc: torch.dtype) -> dict:
    # The Taylor series of expm1 and of e^-L - 1 + L for |L| < 1/2: 9 terms leave a relative
    # error below 3e-9 (fp32's ulp is 6e-8), 16 below 2e-19 (fp64's is 1e-16).
    return dict(ACC=launch.accumulator(acc), TERMS=16 if acc == torch.float64 else 9)


def _config(n_cols, student, teacher):
    """Blocks of both rows at once (rows_held=2), each thread holding half the policy's elements of
    each: as many bytes in flight as a one-row kernel, and registers left for the per-class math
    (the compile report showed 171 registers a thread at 16 elements, 8 warps, and so one program
    an SM)."""
    dtype = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else student.dtype
    cfg = launch.launch_config(n_cols, dtype, rows_held=2, stream=True)
    return dataclasses.replace(cfg, num_warps=min(2 * cfg.num_warps, 32))


def forward_rows(student, teacher, target, o: DistillationOptions) -> DivergenceStats:
    """Per-row divergence and backward statistics of logits (..., V) (the vocabulary last),
    student and teacher of one shape; target (...) class indices marking rows to skip, or None."""
    acc = accumulator(student.dtype, teacher.dtype)
    stats = empty_stats(student.shape[:-1], acc, student.device)
    views = row_views(-1, student, per_row={} if target is None else {"target": target},
                      per_element={"teacher": teacher})
    layout = views.layout
    if layout.n_rows:
        cfg = _config(layout.n_cols, student, teacher)
        launch.run(
            distillation_forward_kernel, (triton.cdiv(layout.n_rows, cfg.rows),),
            *views.args("x"), *views.args("teacher"),
            *(views.args("target", 2) if target is not None else (stats.loss, 0, 0)),
            *stats, layout.n_rows, layout.n_cols, layout.n_inner, *o.kernel_scalars(),
            DIVERGENCE=o.code, HAS_TARGET=target is not None, PRECISE=acc == torch.float32, **_constants(acc),
            ROWS=cfg.rows, BLOCK=cfg.block, num_warps=cfg.num_warps,
        )
    return stats


def backward_rows(student, teacher, target, o: DistillationOptions, stats: DivergenceStats, grad_rows,
                  grad_student=None, grad_teacher=None):
    """Write d loss / d student into `grad_student` and d loss / d teacher into `grad_teacher` (each
    shaped like the logits, or None when not wanted; either may be its logits themselves), given
    the incoming gradient of each row's divergence (`grad_rows`, shaped like the rows; broadcast
    views welcome)."""
    per_row = {"grad": grad_rows} if target is None else {"grad": grad_rows, "target": target}
    outputs = {name: t for name, t in (("ds", grad_student), ("dt", grad_teacher)) if t is not None}
    views = row_views(-1, student, per_row=per_row, per_element={"teacher": teacher, **outputs})
    layout = views.layout
    acc = accumulator(student.dtype, teacher.dtype)
    if layout.n_rows and layout.n_cols and outputs:
        cfg = _config(layout.n_cols, student, teacher)
        unused = views.args("x")  # stands in for an output not wanted: never written
        fp32_out = any(t.dtype == torch.float32 for t in outputs.values())
        launch.run(
            distillation_backward_kernel, (triton.cdiv(layout.n_rows, cfg.rows),),
            *views.args("x"), *views.args("teacher"),
            *(views.args("target", 2) if target is not None else (stats.student_max, 0, 0)),
            *views.args("grad", 2),
            *(views.args("ds") if "ds" in outputs else unused), *(views.args("dt") if "dt" in outputs else unused),
            *stats[1:], layout.n_rows, layout.n_cols, layout.n_inner, *o.kernel_scalars(),
            DIVERGENCE=o.code, HAS_TARGET=target is not None, STUDENT_GRAD="ds" in outputs,
            TEACHER_GRAD="dt" in outputs, PRECISE=fp32_out and acc == torch.float32, **_constants(acc),
            ROWS=cfg.rows, BLOCK=cfg.block, num_warps=cfg.num_warps,
        )
    for name, out in outputs.items():
        views.write_back(name, out)


def kept_count(target, ignore_index: int, n_rows: int, dtype, device) -> torch.Tensor:
    """The denominator of a mean: the rows whose target is not ignore_index (all rows without one),
    as a 0-d tensor (never read on the host)."""
    if target is None:
        return torch.full((), n_rows, dtype=dtype, device=device)
    return (target != ignore_index).sum().to(dtype)


def reduce_rows(rows, o: DistillationOptions, total, row_shape):
    """Per-row divergences reduced as o.reduction says; a mean over no kept row is NaN (0/0, as
    torch's losses). The sum runs in float64 and is rounded once: rows near fp32's largest value
    (divergences of logits near it) then have a finite mean, and the mean its last bit."""
    if o.reduction == "none":
        return rows.reshape(row_shape)
    total_sum = rows.sum(dtype=torch.float64)
    if o.reduction == "sum":
        return total_sum.to(rows.dtype)
    return torch.where(total != 0, total_sum / total, float("nan")).to(rows.dtype)


def rows_gradient(grad_loss, o: DistillationOptions, total, row_shape):
    """The incoming gradient of each row's divergence, from that of the reduced loss (NaN for a
    mean over no kept row; the kernels still give ignored rows 0)."""
    if o.reduction == "none":
        return grad_loss.reshape(row_shape)
    if o.reduction == "mean":
        grad_loss = torch.where(total != 0, grad_loss / total, float("nan"))
    return grad_loss.expand(row_shape)
