"""distillation_loss as torch ops: registration, autograd, the public function, the module.

    loss = softlight.distillation_loss(student_logits, teacher_logits)                # KL(p_t || p_s)
    loss = softlight.distillation_loss(policy_logits, reference_logits, divergence="reverse_kl")
    loss = softlight.distillation_loss(student_logits, teacher_logits, divergence="jsd", beta=0.5,
                                       temperature=2.0, target=labels)             # rows at -100 skipped

Written with torch ops a divergence over the vocabulary holds several (N, V) temporaries: both
log-softmaxes, the elementwise terms, and as many again in backward. Here forward reads both rows
of logits twice (the online softmax state of each, then the sum of exact per-class terms; why two
passes: kernels/distillation_kernels.py) and writes a few numbers per row; backward reads them once
more and writes the gradient of the student's logits, and of the teacher's when they require one.

The op softlight::distillation takes both logits, the optional target and the encoded
DistillationOptions, and returns the reduced loss, the per-row statistics and the denominator of a
mean; softlight::distillation_backward writes the gradients.
"""

import torch

from . import checks, launch
from .distillation_rows import (
    DIVERGENCES,
    REDUCTIONS,
    DistillationOptions,
    DivergenceStats,
    backward_rows,
    forward_rows,
    kept_count,
    reduce_rows,
    rows_gradient,
)
from .linear_chunks import placeholder
from .registry import register_op

__all__ = ["distillation_loss", "DistillationLoss", "kernel_launches", "distillation_options"]

FN = "softlight.distillation_loss"


@register_op("distillation")
def distillation_op(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None, options: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, the per-row statistics of DivergenceStats after the loss, the denominator of a mean)."""
    o = DistillationOptions.decode(options)
    stats = forward_rows(student, teacher, target, o)
    total = kept_count(target, o.ignore_index, stats.loss.numel(), stats.loss.dtype, student.device)
    return (reduce_rows(stats.loss, o, total, student.shape[:-1]), *stats[1:], total)


@register_op("distillation_backward")
def distillation_backward_op(grad_rows: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                             target: torch.Tensor | None, student_max: torch.Tensor, student_norm: torch.Tensor,
                             teacher_max: torch.Tensor, teacher_norm: torch.Tensor, log_norm_ratio: torch.Tensor,
                             k_teacher: torch.Tensor, k_student: torch.Tensor, options: str, student_grad: bool,
                             teacher_grad: bool
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d student, d teacher) for the incoming gradient of each row's divergence; a placeholder for
    the one not wanted."""
    stats = DivergenceStats(None, student_max, student_norm, teacher_max, teacher_norm, log_norm_ratio, k_teacher,
                            k_student)
    grad_s = torch.empty_like(student) if student_grad else None
    grad_t = torch.empty_like(teacher) if teacher_grad else None
    backward_rows(student, teacher, target, DistillationOptions.decode(options), stats, grad_rows, grad_s, grad_t)
    return tuple(placeholder(student) if g is None else g for g in (grad_s, grad_t))


def _setup_context(ctx, inputs, output):
    student, teacher, target, options = inputs
    ctx.save_for_backward(student, teacher, target, *output[1:])
    ctx.options, ctx.loss_shape = options, output[0].shape
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_loss, *_):
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{FN}: double backward (create_graph=True) is not implemented")
    student, teacher, target, *stats, total = ctx.saved_tensors
    want_student, want_teacher = ctx.needs_input_grad[:2]
    if grad_loss is None or not (want_student or want_teacher):
        return None, None, None, None
    o = DistillationOptions.decode(ctx.options)
    grad_rows = rows_gradient(grad_loss, o, total, student.shape[:-1])
    grad_s, grad_t = distillation_backward_op(grad_rows, student, teacher, target, *stats, ctx.options,
                                              want_student, want_teacher)
    return grad_s if want_student else None, grad_t if want_teacher else None, None, None


distillation_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def distillation_options(fn, divergence, beta, temperature, ignore_index, reduction) -> DistillationOptions:
    """The options every distillation loss takes, checked."""
    divergence = checks.choice(fn, "divergence", divergence, DIVERGENCES)
    beta = checks.number(fn, "beta", beta, 0.0, high=1.0)
    if divergence == "jsd" and beta in (0.0, 1.0):
        raise ValueError(f"{fn}: beta={beta} makes the JSD identically 0 (m is then p_s or p_t itself); the limits "
                         "some libraries mean by it are divergence='kl' (beta=0) and 'reverse_kl' (beta=1)")
    return DistillationOptions(divergence=divergence, beta=beta,
                               inv_temperature=1.0 / checks.temperature(fn, temperature),
                               ignore_index=checks.integer(fn, "ignore_index", ignore_index),
                               reduction=checks.choice(fn, "reduction", reduction, REDUCTIONS))


def distillation_loss(student_logits, teacher_logits, *, divergence="kl", beta=0.5, temperature=1.0, target=None,
                      ignore_index=-100, reduction="mean"):
    """A divergence between the student's and the teacher's distributions over the vocabulary, per
    row, exact over the whole vocabulary, differentiable in both logits, without (N, V) temporaries.

    student_logits, teacher_logits: (..., V), the vocabulary last, of one shape (their floating
    dtypes may differ). With p_s = softmax(student_logits / T), p_t = softmax(teacher_logits / T):

    - divergence="kl": KL(p_t || p_s), the forward KL of distillation;
    - "reverse_kl": KL(p_s || p_t), the KL penalty of RL fine-tuning against a reference policy;
    - "jsd": beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s, with
      0 < beta < 1 (Liger's and TRL's generalised JSD; beta 0 and 1 would make it identically 0).

    temperature T divides both logits; the loss is the divergence of the tempered distributions,
    not multiplied by T**2 (Hinton et al.'s scaling keeps gradient sizes independent of T: multiply
    by temperature**2 yourself if you want it). target: optional class indices shaped like the
    logits without V, only to mark rows to skip: a row whose target is ignore_index adds 0 and gets
    zero gradient. reduction: "none" (one value per row, shaped like the logits without V), "sum",
    or "mean" over the rows kept (NaN, torch's 0/0, when none is).

    The loss is float32 whatever the logits dtype (float64 when either is float64); the gradients
    have their logits' dtypes; the teacher's is computed only when teacher_logits requires grad.
    -inf logits are masked classes: they add nothing where the other distribution is 0 there too,
    and make a KL +inf where only its second argument is 0 (the exact answer). A row that is all
    -inf, or holds +inf or NaN, in either input gives NaN, as torch's log_softmax does.
    Forward reads both rows twice, backward once (kernels/distillation_kernels.py).
    """
    checks.logits(FN, "student_logits", student_logits, class_dim=-1)
    checks.logits(FN, "teacher_logits", teacher_logits, class_dim=-1)
    checks.same_shape(FN, "teacher_logits", teacher_logits, "student_logits", student_logits)
    checks.same_device(FN, "teacher_logits", teacher_logits, "student_logits", student_logits)
    o = distillation_options(FN, divergence, beta, temperature, ignore_index, reduction)
    if target is not None:
        checks.class_indices(FN, "target", target, student_logits.shape[:-1], student_logits.device,
                             "the logits' shape without the vocabulary")
    return distillation_op(student_logits, teacher_logits, target, o.encode())[0]


class DistillationLoss(torch.nn.Module):
    """Module form of `distillation_loss`: `criterion(student_logits, teacher_logits, target=None)`,
    the options fixed at construction."""

    def __init__(self, divergence="kl", beta=0.5, *, temperature=1.0, ignore_index=-100, reduction="mean"):
        super().__init__()
        self.divergence, self.beta, self.temperature = divergence, beta, temperature
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, student_logits, teacher_logits, target=None):
        return distillation_loss(student_logits, teacher_logits, divergence=self.divergence, beta=self.beta,
                                 temperature=self.temperature, target=target, ignore_index=self.ignore_index,
                                 reduction=self.reduction)

    def extra_repr(self):
        beta = f", beta={self.beta}" if self.divergence == "jsd" else ""
        return f"divergence={self.divergence!r}{beta}, temperature={self.temperature}, reduction={self.reduction!r}"


def kernel_launches(shape, dtype: torch.dtype, *, divergence="kl", target=False, teacher_grad=False,
                    temperature=1.0) -> list:
    """The kernel launches of a forward and a backward of distillation_loss on logits of `shape`
    and `dtype` (the vocabulary last), with a target marking rows or not, and the teacher's
    gradient or not: for the compile report."""
    s = torch.empty(shape, dtype=dtype, device="meta")
    t = torch.empty(shape, dtype=dtype, device="meta")
    rows_target = torch.empty(shape[:-1], dtype=torch.int64, device="meta") if target else None
    o = distillation_options(FN, divergence, 0.5, temperature, -100, "mean")
    with launch.recording() as launches:
        stats = forward_rows(s, t, rows_target, o)
        backward_rows(s, t, rows_target, o, stats, torch.empty_like(stats.loss), torch.empty_like(s),
                      torch.empty_like(t) if teacher_grad else None)
    return launches
