"""cross_entropy as torch ops: registration, autograd, the public function, the module.

    loss = softlight.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)

The op softlight::cross_entropy takes the logits, the target, the class weights and the encoded
CrossEntropyOptions, and returns the loss, each row's LSE and what backward needs. Its one
registered backward calls softlight::cross_entropy_backward, or, with inplace_backward=True,
softlight::cross_entropy_backward_inplace, which writes the gradient into the logits' storage
(declared through mutates_args, so torch bumps their version counter and autograd refuses any
later use of the logits as logits).
"""

import warnings

import torch

from . import checks, launch
from .cross_entropy_rows import (
    CrossEntropyOptions,
    RowStats,
    backward_rows,
    forward_rows,
    gradient_in_torch,
    reduce,
    reduce_rows,
    rows_gradient,
    soft_target_gradient,
)
from .registry import register_op

__all__ = ["cross_entropy", "CrossEntropyLoss", "kernel_launches", "cross_entropy_options", "with_extra_outputs"]

REDUCTIONS = ("none", "mean", "sum")
ALL_IGNORED = ("nan", "zero")
FN = "softlight.cross_entropy"


def _as_rows(input, target):
    """(N, C, ...) logits and their target; a single row (C,) becomes (1, C)."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0)
    return input, target


def _row_shape(input):
    return input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()


def _forward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, options: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                        torch.Tensor]:
    """(loss, LSE per row, row max, normaliser, k_rest, p_t - 1, denominator of a mean)."""
    o = CrossEntropyOptions.decode(options)
    if not target.is_floating_point() and not launch.is_dry_run():
        checks.index_range(FN, "target", target, input.shape[1] if input.dim() > 1 else input.shape[0], o.ignore_index)
    x, target_rows = _as_rows(input, target)
    stats = forward_rows(x, target_rows, weight, o)
    loss, total = reduce_rows(stats, o, _row_shape(input))
    return loss, stats.lse.reshape(_row_shape(input)), stats.row_max, stats.norm, stats.k_rest, stats.pt_minus_1, total


def _backward_into(out, grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total,
                   options):
    """The gradient of the logits, written into `out` (the logits themselves when it is None)."""
    o = CrossEntropyOptions.decode(options)
    x, target_rows = _as_rows(input, target)
    row_shape = x.shape[:1] + x.shape[2:]
    grad_rows = rows_gradient(grad_loss, o, total, row_shape)
    lse_grad = None if grad_lse is None else grad_lse.reshape(row_shape)
    stats = RowStats(None, None, row_max, norm, k_rest, pt_minus_1, None)
    backward_rows(x, target_rows, weight, o, stats, grad_rows, x if out is None else out.view(x.shape), lse_grad)


def _backward(grad_loss: torch.Tensor, grad_lse: torch.Tensor | None, input: torch.Tensor, target: torch.Tensor,
              weight: torch.Tensor | None, row_max: torch.Tensor, norm: torch.Tensor, k_rest: torch.Tensor,
              pt_minus_1: torch.Tensor, total: torch.Tensor, options: str) -> torch.Tensor:
    dx = torch.empty_like(input)
    _backward_into(dx, grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total, options)
    return dx


def _backward_inplace(grad_loss: torch.Tensor, grad_lse: torch.Tensor | None, input: torch.Tensor,
                      target: torch.Tensor, weight: torch.Tensor | None, row_max: torch.Tensor, norm: torch.Tensor,
                      k_rest: torch.Tensor, pt_minus_1: torch.Tensor, total: torch.Tensor, options: str) -> None:
    _backward_into(None, grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total, options)


cross_entropy_op = register_op("cross_entropy")(_forward)
cross_entropy_backward_op = register_op("cross_entropy_backward")(_backward)
cross_entropy_backward_inplace_op = register_op("cross_entropy_backward_inplace", mutates_args=("input",))(
    _backward_inplace)


def _setup_context(ctx, inputs, output):
    input, target, weight, options = inputs
    ctx.save_for_backward(input, target, weight, *output[1:])
    ctx.options, ctx.loss_shape = options, output[0].shape
    # An output that nothing downstream uses brings None, not zeros: no LSE term unless asked.
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_loss, grad_lse, *_):
    """Unpacking the saved tensors checks their versions: after an in-place backward the logits
    hold their gradient, and a second backward (retain_graph) fails here."""
    input, target, weight, lse, row_max, norm, k_rest, pt_minus_1, total = ctx.saved_tensors
    o = CrossEntropyOptions.decode(ctx.options)
    if grad_loss is None:
        grad_loss = torch.zeros(ctx.loss_shape, dtype=row_max.dtype, device=row_max.device)
    x, target_rows = _as_rows(input, target)
    grad_target = None
    if target.is_floating_point() and ctx.needs_input_grad[1]:
        grad_rows = rows_gradient(grad_loss, o, total, x.shape[:1] + x.shape[2:])
        grad_target = soft_target_gradient(x, weight, lse.reshape(grad_rows.shape), grad_rows, o)
        grad_target = grad_target.to(target.dtype).reshape(target.shape)
    saved = (grad_loss, grad_lse, input, target, weight, row_max, norm, k_rest, pt_minus_1, total, ctx.options)
    if torch.is_grad_enabled():  # create_graph=True: a backward that can be differentiated again
        grad_rows = rows_gradient(grad_loss, o, total, x.shape[:1] + x.shape[2:])
        lse_grad = None if grad_lse is None else grad_lse.reshape(grad_rows.shape)
        dx = gradient_in_torch(x, target_rows, weight, o, grad_rows, lse_grad).reshape(input.shape)
    elif o.inplace:
        cross_entropy_backward_inplace_op(*saved)
        dx = input
    else:
        dx = cross_entropy_backward_op(*saved)
    return dx, grad_target, None, None


cross_entropy_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def cross_entropy_options(fn, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap,
                          all_ignored="nan", inplace=False) -> CrossEntropyOptions:
    """The options every cross-entropy takes, checked."""
    return CrossEntropyOptions(
        ignore_index=checks.integer(fn, "ignore_index", ignore_index),
        label_smoothing=checks.number(fn, "label_smoothing", label_smoothing, 0.0, high=1.0),
        inv_temperature=1.0 / checks.temperature(fn, temperature),
        z_loss=checks.number(fn, "z_loss", z_loss, 0.0),
        softcap=checks.number(fn, "softcap", softcap, 0.0, low_inclusive=False, allow_none=True),
        reduction=checks.choice(fn, "reduction", reduction, REDUCTIONS),
        all_ignored=checks.choice(fn, "all_ignored", all_ignored, ALL_IGNORED),
        inplace=checks.flag(fn, "inplace_backward", inplace),
    )


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
    n_classes = checks.logits(FN, "input", input, class_dim=1)
    checks.cross_entropy_target(FN, target, input)
    weight = checks.class_weight(FN, "weight", weight, n_classes, "input", input.device)
    o = cross_entropy_options(FN, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap, all_ignored,
                              inplace_backward)
    if target.is_floating_point() and o.ignore_index >= 0:
        # A negative ignore_index can never name a class; torch rejects the others as we do.
        raise ValueError(f"{FN}: ignore_index={o.ignore_index} does not apply to class-probability targets "
                         "(torch rejects it too); leave it at its default, -100")
    checks.flag(FN, "return_lse", return_lse)
    checks.flag(FN, "return_z_loss", return_z_loss)
    if inplace_backward and input.requires_grad and input.is_leaf:
        raise ValueError(f"{FN}: inplace_backward=True would overwrite a leaf tensor's values with its gradient; "
                         "use it on logits computed by an op, or leave it False")
    loss, lse, *_, total = cross_entropy_op(input, target, weight, o.encode())
    kept = None if target.is_floating_point() else target != o.ignore_index
    return with_extra_outputs(loss, lse, kept, total, o, return_lse, return_z_loss)


def with_extra_outputs(loss, lse, kept, total, o: CrossEntropyOptions, return_lse, return_z_loss):
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
        if o.z_loss == 0.0:
            rows = torch.zeros_like(lse)
        else:
            rows = o.z_loss * lse * lse
            if kept is not None:
                rows = torch.where(kept, rows, 0.0)
        outputs.append(reduce(rows, o.reduction, total, lse.shape, o.all_ignored))
    return tuple(outputs)


def kernel_launches(shape, dtype: torch.dtype, *, probabilities=False, class_weight=False, lse_grad=False,
                    **options) -> list:
    """The kernel launches of a forward and a backward of cross_entropy on logits of `shape` and
    `dtype` (classes on dim 1), with class indices or `probabilities`, per-class weights or not,
    a gradient flowing into the LSE or not, and cross_entropy's keyword options: for the compile
    report."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    target = torch.empty_like(x) if probabilities else torch.empty(_row_shape(x), dtype=torch.int64, device="meta")
    weight = torch.empty(shape[1], dtype=torch.float32, device="meta") if class_weight else None
    keywords = dict(reduction="mean", ignore_index=-100, label_smoothing=0.0, temperature=1.0, z_loss=0.0, softcap=None)
    options = cross_entropy_options(FN, **{**keywords, **options}).encode()
    with launch.recording() as launches:
        loss, lse, *stats = _forward(x, target, weight, options)
        _backward(torch.ones_like(loss), torch.empty_like(lse) if lse_grad else None, x, target, weight, *stats, options)
    return launches


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for torch.nn.CrossEntropyLoss (same arguments, in the same order, including the
    deprecated size_average and reduce), with softlight's extra options as keywords."""

    def _get_name(self):  # the repr says whose module this is
        return f"softlight.{type(self).__name__}"

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
