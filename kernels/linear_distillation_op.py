"""linear_distillation_loss as torch ops: the divergence between a student's and a teacher's
distributions from their hidden states and output projections, without ever holding either model's
(N, V) logits or their gradients.

    loss = softlight.linear_distillation_loss(student_hidden, student.lm_head.weight,
                                              teacher_hidden, teacher.lm_head.weight, divergence="jsd")
    # = softlight.distillation_loss(F.linear(student_hidden, Ws), F.linear(teacher_hidden, Wt), ...)

The tokens go through in chunks of rows (kernels/linear_chunks.py): one matmul per model gives a
chunk's logits (the two models may have different hidden sizes, not different vocabularies), the
divergence row engine (kernels/distillation_rows.py) gives each row's divergence and then
overwrites the logits in place with their gradients, and two matmuls per model that needs them fold
those into d hidden and d weight (d bias summed). The teacher's side is computed without gradient
unless its hidden states, weight or bias require one.

As for `linear_cross_entropy`: with reduction "mean" or "sum" the gradients are computed during
forward (for an incoming gradient of 1) and backward multiplies them by the incoming gradient, so no
logits are recomputed; with "none" the per-row gradients arrive only with backward, which then
recomputes each chunk's logits. Memory beyond the inputs and gradients: one chunk's logits of each
model, a few fp32 numbers per token, and for fp16/bf16 weights an fp32 accumulator of each weight
gradient wanted. The ops are opaque custom ops on a GPU too (their bodies loop over chunks with
cuBLAS matmuls).
"""

from dataclasses import dataclass

import torch

from . import checks, launch
from .distillation_op import distillation_options
from .distillation_rows import (
    DistillationOptions,
    DivergenceStats,
    accumulator,
    backward_rows,
    empty_stats,
    forward_rows,
    kept_count,
    reduce_rows,
)
from .linear_chunks import LinearGradients, chunk_rows, chunk_slices, linear, placeholder
from .registry import register_op

__all__ = ["linear_distillation_loss", "LinearDistillationLoss", "kernel_launches"]

FN = "softlight.linear_distillation_loss"
STUDENT_NAMES = ("student_hidden", "student_weight", "student_bias")
TEACHER_NAMES = ("teacher_hidden", "teacher_weight", "teacher_bias")


@dataclass(frozen=True)
class LinearDistillationOptions(DistillationOptions):
    rows: int = 1  # tokens per chunk
    student_needs: tuple = (False, False, False)  # which of the student's hidden, weight and bias want a gradient
    teacher_needs: tuple = (False, False, False)

    @property
    def eager(self) -> bool:
        """Whether forward computes the gradients (a scalar loss that some input needs a gradient of)."""
        return self.reduction != "none" and any(self.student_needs + self.teacher_needs)


def _sweep(student, teacher, target, o, stats=None, grad_rows=None):
    """One pass over the chunks of rows. `student` and `teacher` are (hidden (N, H), weight, bias);
    target (N,) or None. Without `stats` (forward) it computes each row's DivergenceStats; with them
    (backward) it reuses them. With `grad_rows` (N,) it writes each chunk's d logits over its logits
    and returns the LinearGradients of both models (None for a model that needs none)."""
    (hs, ws, bs), (ht, wt, bt) = student, teacher
    fresh = stats is None
    if fresh:
        stats = empty_stats(hs.shape[:1], accumulator(hs.dtype, ht.dtype), hs.device)
    grads = [LinearGradients(*model, needs) if grad_rows is not None and any(needs) else None
             for model, needs in ((student, o.student_needs), (teacher, o.teacher_needs))]
    for chunk in chunk_slices(hs.shape[0], o.rows):
        zs, zt = linear(hs[chunk], ws, bs), linear(ht[chunk], wt, bt)
        rows_target = None if target is None else target[chunk]
        if fresh:
            for whole, part in zip(stats, forward_rows(zs, zt, rows_target, o)):
                whole[chunk] = part
        if grad_rows is not None:
            chunk_stats = DivergenceStats(*(None if s is None else s[chunk] for s in stats))
            backward_rows(zs, zt, rows_target, o, chunk_stats, grad_rows[chunk], zs if grads[0] else None,
                          zt if grads[1] else None)
            for model_grads, dz, h in zip(grads, (zs, zt), (hs, ht)):
                if model_grads is not None:
                    model_grads.add(chunk, dz, h[chunk])
        del zs, zt  # before the next chunk's logits are allocated: one chunk of each alive at a time
    return stats, grads


def _flat(hidden):
    return hidden.reshape(-1, hidden.shape[-1])


def _results(grads, models) -> list:
    """(d hidden, d weight, d bias) of each model, shaped like its inputs; placeholders for those
    not made."""
    out = []
    for model_grads, (hidden, _, _) in zip(grads, models):
        made = model_grads.result() if model_grads is not None else (None, None, None)
        made = (None if made[0] is None else made[0].reshape(hidden.shape), *made[1:])
        out += [placeholder(hidden) if g is None else g for g in made]
    return out


@register_op("linear_distillation", opaque=True)
def linear_distillation_op(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                           student_bias: torch.Tensor | None, teacher_hidden: torch.Tensor,
                           teacher_weight: torch.Tensor, teacher_bias: torch.Tensor | None,
                           target: torch.Tensor | None, options: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, the student's and the teacher's (d hidden, d weight, d bias) for a loss gradient of 1
    (placeholders when not eager or not needed), the per-row statistics after the loss, the
    denominator of a mean)."""
    o = LinearDistillationOptions.decode(options)
    models = ((student_hidden, student_weight, student_bias), (teacher_hidden, teacher_weight, teacher_bias))
    flat = [(_flat(h), w, b) for h, w, b in models]
    rows_target = None if target is None else target.reshape(-1)
    n_rows = flat[0][0].shape[0]
    acc = accumulator(student_hidden.dtype, teacher_hidden.dtype)
    total = kept_count(rows_target, o.ignore_index, n_rows, acc, student_hidden.device)
    grad_rows = None
    if o.eager:
        scale = torch.ones((), dtype=acc, device=student_hidden.device)
        if o.reduction == "mean":
            scale = torch.where(total != 0, 1.0 / total, float("nan")).to(acc)
        grad_rows = scale.expand(n_rows)
    stats, grads = _sweep(*flat, rows_target, o, grad_rows=grad_rows)
    loss = reduce_rows(stats.loss, o, total, student_hidden.shape[:-1])
    return (loss, *_results(grads, models), *stats[1:], total)


@register_op("linear_distillation_backward", opaque=True)
def linear_distillation_backward_op(grad_rows: torch.Tensor, student_hidden: torch.Tensor,
                                    student_weight: torch.Tensor, student_bias: torch.Tensor | None,
                                    teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor,
                                    teacher_bias: torch.Tensor | None, target: torch.Tensor | None,
                                    student_max: torch.Tensor, student_norm: torch.Tensor,
                                    teacher_max: torch.Tensor, teacher_norm: torch.Tensor,
                                    log_norm_ratio: torch.Tensor, k_teacher: torch.Tensor, k_student: torch.Tensor,
                                    options: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                           torch.Tensor, torch.Tensor]:
    """The student's and the teacher's (d hidden, d weight, d bias) of a sweep that recomputes the
    logits, for per-token gradients of the divergence (`grad_rows`, (N,)); placeholders for those
    not needed."""
    o = LinearDistillationOptions.decode(options)
    models = ((student_hidden, student_weight, student_bias), (teacher_hidden, teacher_weight, teacher_bias))
    stats = DivergenceStats(None, student_max, student_norm, teacher_max, teacher_norm, log_norm_ratio, k_teacher,
                            k_student)
    _, grads = _sweep(*[(_flat(h), w, b) for h, w, b in models], None if target is None else target.reshape(-1), o,
                      stats, grad_rows.reshape(-1))
    return tuple(_results(grads, models))


def _setup_context(ctx, inputs, output):
    *tensors, options = inputs
    ctx.save_for_backward(*tensors, *output[7:14], *output[1:7])
    ctx.options = options
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_loss, *_):
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{FN}: double backward (create_graph=True) is not implemented")
    saved = ctx.saved_tensors
    inputs, stats, made = saved[:7], saved[7:14], saved[14:]
    o = LinearDistillationOptions.decode(ctx.options)
    needs = o.student_needs + o.teacher_needs
    if grad_loss is None or not any(needs):
        return (None,) * 8
    if o.eager:
        # Out of place: a retained graph (gradcheck's repeated backward) must find them intact.
        results = [g * grad_loss if need else None for g, need in zip(made, needs)]
    else:
        results = linear_distillation_backward_op(grad_loss, *inputs, *stats, ctx.options)
    return (*(g if need else None for g, need in zip(results, needs)), None, None)


linear_distillation_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _needs(grad_mode, model):
    return tuple(grad_mode and t is not None and t.requires_grad for t in model)


def linear_distillation_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, *, student_bias=None,
                             teacher_bias=None, divergence="kl", beta=0.5, temperature=1.0, target=None,
                             ignore_index=-100, reduction="mean", chunk_size=None):
    """distillation_loss(student_hidden @ student_weight.T + student_bias, teacher_hidden @
    teacher_weight.T + teacher_bias, ...), with gradients for every input that requires one, never
    holding either model's (N, V) logits: they are made, used and dropped a chunk of tokens at a time.

    student_hidden (..., H_s), student_weight (V, H_s), student_bias (V,) or None, of one floating
    dtype; the teacher's likewise with its own hidden size H_t and dtype, the same vocabulary V and
    the same token shape (...). divergence, beta, temperature, target ((...) class indices marking
    rows to skip with ignore_index), reduction: as in `softlight.distillation_loss` ("none" gives one
    value per token, shaped like the token shape). chunk_size: tokens per chunk (default: both
    models' chunks of logits together about the size of student_hidden, at least the launch policy's
    min_chunk_rows tokens).

    The loss is float32 (float64 when either model is float64); the gradients have their inputs'
    dtypes; the teacher's side gets gradients only where its tensors require them. For "mean" and
    "sum" the gradients are computed during forward; for "none" backward recomputes the logits.
    """
    n_vocab = checks.linear(FN, student_hidden, student_weight, student_bias, STUDENT_NAMES)
    teacher_vocab = checks.linear(FN, teacher_hidden, teacher_weight, teacher_bias, TEACHER_NAMES)
    if teacher_vocab != n_vocab:
        raise ValueError(f"{FN}: teacher_weight has a vocabulary of {teacher_vocab} (shape "
                         f"{tuple(teacher_weight.shape)}) but student_weight has {n_vocab}; they must match")
    if teacher_hidden.shape[:-1] != student_hidden.shape[:-1]:
        raise ValueError(f"{FN}: teacher_hidden has tokens of shape {tuple(teacher_hidden.shape[:-1])} but "
                         f"student_hidden has {tuple(student_hidden.shape[:-1])}; they must match")
    checks.same_device(FN, "teacher_hidden", teacher_hidden, "student_hidden", student_hidden)
    base = distillation_options(FN, divergence, beta, temperature, ignore_index, reduction)
    if target is not None:
        checks.class_indices(FN, "target", target, student_hidden.shape[:-1], student_hidden.device,
                             "the hidden states' shape without their last dim")
    n_tokens = student_hidden.numel() // max(student_hidden.shape[-1], 1)
    grad_mode = torch.is_grad_enabled()
    o = LinearDistillationOptions(
        **vars(base),
        rows=chunk_rows(n_tokens, max(student_hidden.shape[-1] // 2, 1), n_vocab, checks.chunk_size(FN, chunk_size)),
        student_needs=_needs(grad_mode, (student_hidden, student_weight, student_bias)),
        teacher_needs=_needs(grad_mode, (teacher_hidden, teacher_weight, teacher_bias)),
    )
    return linear_distillation_op(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                                  teacher_bias, target, o.encode())[0]


class LinearDistillationLoss(torch.nn.Module):
    """Module form of `linear_distillation_loss`: `criterion(student_hidden, student_weight,
    teacher_hidden, teacher_weight, target=None, student_bias=None, teacher_bias=None)`, the options
    fixed at construction."""

    def __init__(self, divergence="kl", beta=0.5, *, temperature=1.0, ignore_index=-100, reduction="mean",
                 chunk_size=None):
        super().__init__()
        self.divergence, self.beta, self.temperature = divergence, beta, temperature
        self.ignore_index, self.reduction, self.chunk_size = ignore_index, reduction, chunk_size

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, target=None, student_bias=None,
                teacher_bias=None):
        return linear_distillation_loss(student_hidden, student_weight, teacher_hidden, teacher_weight,
                                        student_bias=student_bias, teacher_bias=teacher_bias,
                                        divergence=self.divergence, beta=self.beta, temperature=self.temperature,
                                        target=target, ignore_index=self.ignore_index, reduction=self.reduction,
                                        chunk_size=self.chunk_size)


def kernel_launches(tokens: int, student_hidden: int, teacher_hidden: int, vocabulary: int, dtype: torch.dtype, *,
                    divergence="kl", reduction="mean", chunk_size=None) -> list:
    """The kernel launches of a forward and a backward of linear_distillation_loss (the student's
    gradients only), for the compile report."""
    hs = torch.empty(tokens, student_hidden, dtype=dtype, device="meta")
    ws = torch.empty(vocabulary, student_hidden, dtype=dtype, device="meta")
    ht = torch.empty(tokens, teacher_hidden, dtype=dtype, device="meta")
    wt = torch.empty(vocabulary, teacher_hidden, dtype=dtype, device="meta")
    base = distillation_options(FN, divergence, 0.5, 1.0, -100, reduction)
    o = LinearDistillationOptions(**vars(base), rows=chunk_rows(tokens, max(student_hidden // 2, 1), vocabulary,
                                                                chunk_size), student_needs=(True, True, False))
    with launch.recording() as launches:
        out = linear_distillation_op(hs, ws, None, ht, wt, None, None, o.encode())
        if not o.eager:
            linear_distillation_backward_op(out[0], hs, ws, None, ht, wt, None, None, *out[7:14], o.encode())
    return launches
