"""Fused linear + cross-entropy: the loss of logits = hidden @ weight.T + bias, without ever
holding the (N, V) logits or their gradient.

    loss = softlight.linear_cross_entropy(hidden, lm_head.weight, labels, label_smoothing=0.1)
    # = softlight.cross_entropy(F.linear(hidden, lm_head.weight).flatten(0, -2), labels.flatten(), ...)

The tokens go through in chunks of rows (`linear_chunks.py`): one matmul gives a chunk's logits,
the cross-entropy kernels (`fused_cross_entropy.forward_rows` / `backward_rows`, every option of
`softlight.cross_entropy`) give each row's loss and then overwrite the logits in place with
their gradient, and two more matmuls fold that gradient into d hidden and d weight.

When is the gradient of each row's loss known? That decides the path:

- reduction "mean" or "sum" (a scalar loss): in the forward pass already, up to one scalar,
  the incoming gradient g of the loss (1 for `loss.backward()`, 1/k under gradient
  accumulation). So forward computes the gradients for g = 1 in the same sweep as the loss,
  and backward only multiplies them by g. That is 3 matmuls of N x H x V in all, as many as
  the unfused forward and backward, and no logits are ever recomputed. The gradients (the
  sizes of hidden, weight and bias) are held from forward to backward, which returns them times
  g as new tensors (so a retained graph can run backward again); the loss comes at the end of
  the model's forward, when every activation is alive anyway. The price: under grad mode the
  two gradient matmuls are spent even if backward never comes, and for g other than a power of
  two the gradients are rounded twice (once in forward, once times g).
- reduction "none": each token's incoming gradient arrives only with backward. Forward keeps
  four fp32 numbers per token (the row max, the normaliser, the gradient coefficient and p_t - 1
  of `RowStats`); backward recomputes each chunk's logits (a 4th matmul) and proceeds as above.

Either way the gradients are those of the unfused composition: the chunk's logits are rounded
to the hidden dtype as `F.linear` rounds them, the cross-entropy gradient is exact (nothing is
dropped), d hidden of a chunk is one matmul over the whole vocabulary, and the sum over chunks
of d weight and d bias is kept in fp32.

Memory beyond the inputs and the gradients: one chunk's logits (`chunk_rows` x V elements of the
hidden dtype), five fp32 numbers per token, and for an fp16/bf16 weight an fp32 accumulator of its
gradient (4 V H bytes) while it is summed.

For the benchmark. The work is matmuls: 2 N H V flops each, 3 of them forward + backward for
"mean"/"sum" (4 for "none"), so report TFLOP/s rather than GB/s; the cross-entropy kernels add
about 2 N V elements of traffic per chunk sweep. Peak memory is the point: measure forward +
backward (hidden and weight requiring gradients) as `torch.cuda.max_memory_allocated()` after
`torch.cuda.reset_peak_memory_stats()`, minus what was allocated before (the inputs). Providers:
the unfused torch path as training code runs it, `F.cross_entropy(F.linear(hidden, weight,
bias).float(), target)`, which holds the logits, their fp32 copy and log-softmax, and their
gradient; Liger-Kernel's `LigerFusedLinearCrossEntropyLoss()(weight, hidden, target, bias)` when
importable (note its argument order).
"""

import math
from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from .fused_cross_entropy import (
    RowStats,
    backward_rows,
    check_class_weight,
    check_flag,
    check_options,
    forward_rows,
    reduce,
    with_extra_outputs,
)
from .linear_chunks import LinearGradients, check_chunk_size, check_indices, check_linear, chunk_rows, chunk_slices, linear

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]


def _sweep(h, weight, bias, target, class_weight, opts, rows, stats=None, grads=None, grad_rows=None, lse_grad=None):
    """One pass over the chunks of rows of h (N, H). Without `stats` (forward) it computes each
    row's RowStats and returns them; with them (backward) it reuses them. With `grads` it writes
    each chunk's d logits, for the incoming gradients `grad_rows` of each row's loss and `lse_grad`
    of its LSE (each (N,) or None), over the chunk's logits and adds them to `grads`."""
    if stats is None:
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        stats = RowStats(*(torch.empty(h.shape[0], dtype=acc, device=h.device) for _ in RowStats._fields))
        fresh = True
    else:
        fresh = False
    for chunk in chunk_slices(h.shape[0], rows):
        logits = linear(h[chunk], weight, bias)
        if fresh:
            for whole, part in zip(stats, forward_rows(logits, target[chunk], class_weight, opts)):
                whole[chunk] = part
        if grads is not None:
            chunk_stats = RowStats(*(None if s is None else s[chunk] for s in stats))
            backward_rows(logits, target[chunk], class_weight, opts, chunk_stats, grad_rows[chunk], logits,
                          None if lse_grad is None else lse_grad[chunk])
            grads.add(chunk, logits, h[chunk])
        del logits  # before the next chunk's logits are allocated: one chunk alive at a time
    return stats


def _mean_denominator(target, class_weight, ignore_index, num_items, dtype):
    """What "mean" divides the summed loss by: num_items when given, else the summed class weights
    of the targets not ignored (their count without class weights), as torch's mean does."""
    if num_items is not None:
        return num_items
    kept = target != ignore_index
    if class_weight is None:
        return kept.sum().to(dtype)
    # Clamping keeps the look-up in range for ignored (and, on a GPU, invalid) targets.
    w = class_weight.to(dtype)[target.clamp(0, class_weight.shape[0] - 1)]
    return torch.where(kept, w, 0.0).sum()


def _unit_row_gradient(reduction, total, n_rows, dtype, device):
    """The gradient of each row's loss when the loss's own gradient is 1, as a stride-0 (N,) view.
    A mean over a denominator of 0 has NaN there, as torch's 0/0 (ignored rows still get 0)."""
    if reduction == "sum":
        scale = torch.ones((), dtype=dtype, device=device)
    elif isinstance(total, torch.Tensor):
        scale = torch.where(total != 0, 1.0 / total, float("nan")).to(dtype)
    else:
        scale = torch.full((), 1.0 / total, dtype=dtype, device=device)
    return scale.expand(n_rows)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """(loss reduced, LSE per row) of cross_entropy(hidden @ weight.T + bias, target)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, reduction, opts, total, rows, grad_enabled):
        t = target.reshape(-1)
        h = hidden.reshape(t.shape[0], hidden.shape[-1])
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        needs = ctx.needs_input_grad[:3] if grad_enabled else (False, False, False)
        ctx.eager = reduction != "none" and any(needs)
        ctx.needs, ctx.hidden_shape, ctx.rows, ctx.opts, ctx.reduction = needs, hidden.shape, rows, opts, reduction

        grads = LinearGradients(h, weight, bias, needs) if ctx.eager else None
        grad_rows = _unit_row_gradient(reduction, total, h.shape[0], acc, h.device) if ctx.eager else None
        stats = _sweep(h, weight, bias, t, class_weight, opts, rows, grads=grads, grad_rows=grad_rows)

        if any(needs):
            # What a backward sweep needs (the inputs, four numbers a row), and for "mean"/"sum"
            # the gradients already made; a gradient flowing into the LSE takes a sweep of its own.
            ctx.save_for_backward(h, weight, bias, t, class_weight, stats.row_max, stats.norm, stats.k_rest,
                                  stats.pt_minus_1, *(grads.result() if ctx.eager else ()))
        ctx.set_materialize_grads(False)
        return reduce(stats.loss, reduction, total, target.shape), stats.lse.reshape(target.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):
        h, weight, bias, t, class_weight, row_max, norm, k_rest, pt_minus_1, *made = ctx.saved_tensors
        grad_lse = None if grad_lse is None else grad_lse.reshape(-1)
        sweep = grad_lse is not None or (not ctx.eager and grad_loss is not None)
        results = [None, None, None]
        if sweep:
            grads = LinearGradients(h, weight, bias, ctx.needs)
            stats = RowStats(None, None, row_max, norm, k_rest, pt_minus_1, None)
            if ctx.eager or grad_loss is None:  # the loss's own part is made already, or not wanted
                grad_rows = torch.zeros((), dtype=row_max.dtype, device=row_max.device).expand(h.shape[0])
            else:
                grad_rows = grad_loss.reshape(-1)
            _sweep(h, weight, bias, t, class_weight, ctx.opts, ctx.rows, stats, grads, grad_rows, grad_lse)
            results = list(grads.result())
        if ctx.eager and grad_loss is not None:
            # Out of place: a retained graph (gradcheck's repeated backward) must find them intact.
            for i, g in enumerate(made):
                if g is not None:
                    results[i] = g * grad_loss if results[i] is None else results[i] + g * grad_loss
        grad_hidden, grad_weight, grad_bias = results
        if grad_hidden is not None:
            grad_hidden = grad_hidden.reshape(ctx.hidden_shape)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None


def _check_num_items(fn, num_items, reduction, device):
    """num_items as a number, or as a 0-d tensor on hidden's device (a 0-d tensor on the CPU
    beside GPU inputs is read on the host, which needs no synchronisation with the GPU)."""
    if num_items is None:
        return None
    if reduction != "mean":
        raise ValueError(f"{fn}: num_items replaces the denominator of reduction='mean'; got reduction={reduction!r}")
    if isinstance(num_items, torch.Tensor):
        if num_items.dim() != 0 or num_items.dtype == torch.bool or num_items.is_complex():
            raise TypeError(f"{fn}: num_items must be a number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(num_items.shape)} and dtype {num_items.dtype}")
        if num_items.device == device:  # stays a tensor: its value is never read on the host
            return num_items.detach().to(torch.float64 if num_items.dtype == torch.float64 else torch.float32)
        if num_items.device.type != "cpu":
            raise RuntimeError(f"{fn}: num_items is on {num_items.device} but hidden is on {device}")
        num_items = num_items.item()
    if isinstance(num_items, bool) or not isinstance(num_items, Real):
        raise TypeError(f"{fn}: num_items must be a number or a 0-d real tensor, got {type(num_items).__name__}")
    if not (math.isfinite(num_items) and num_items > 0):
        raise ValueError(f"{fn}: num_items must be finite and > 0, got {num_items}")
    return float(num_items)


def linear_cross_entropy(hidden, weight, target, bias=None, *, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0, z_loss=0.0, softcap=None, temperature=1.0, class_weight=None,
                         num_items=None, chunk_size=None, return_lse=False, return_z_loss=False):
    """cross_entropy(hidden @ weight.T + bias, target) with gradients for hidden, weight and bias,
    never holding the (N, V) logits: they are made, used and dropped a chunk of tokens at a time.

    hidden: (..., H) hidden states; weight: (V, H) output projection (e.g. `lm_head.weight`);
    target: (...) class indices (any integer dtype), hidden's shape without its last dim; bias:
    (V,) or None. hidden, weight and bias share one floating dtype and device.

    ignore_index, reduction ("none" gives a loss per token, shaped like target), label_smoothing,
    z_loss, softcap, temperature: as in `softlight.cross_entropy`. class_weight: torch's per-class
    `weight` of cross-entropy, (V,) (named so because `weight` is the projection here).
    num_items: for gradient accumulation, the number of tokens (or any normaliser) of the whole
    batch summed over micro-batches: with reduction "mean" the summed loss is divided by it
    instead of by this call's own count, so the micro-batch losses add up to the batch's mean
    (Hugging Face's `num_items_in_batch`). An int or float > 0, or a 0-d tensor (read without any
    host-device synchronisation; a value of 0 there gives a NaN loss and NaN gradients, as 0/0).
    chunk_size: rows per chunk (default: see `linear_chunks.chunk_rows`). return_lse,
    return_z_loss: as in `softlight.cross_entropy`, the LSE of each token's logits (shaped like
    target) and the z-loss term alone; a gradient flowing into either costs one more sweep over
    the chunks in backward (the logits recomputed), none when they are only logged.

    The loss is float32 (float64 for float64 inputs); the gradients have the inputs' dtypes. A
    mean whose denominator is 0 (every target ignored, or every kept target's class weight 0) is
    NaN, as in torch. For "mean"/"sum" the gradients are computed during forward, for "none" the
    logits are recomputed in backward (see this module's docstring).
    """
    fn = "softlight.linear_cross_entropy"
    n_classes = check_linear(fn, hidden, weight, bias)
    opts = check_options(fn, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap)
    check_indices(fn, "target", target, hidden, n_classes, ignore_index)
    class_weight = check_class_weight(fn, "class_weight", class_weight, n_classes, "hidden", hidden.device)
    num_items = _check_num_items(fn, num_items, reduction, hidden.device)
    chunk_size = check_chunk_size(fn, chunk_size)
    check_flag(fn, "return_lse", return_lse)
    check_flag(fn, "return_z_loss", return_z_loss)

    rows = chunk_rows(target.numel(), hidden.shape[-1], n_classes, chunk_size)
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    total = _mean_denominator(target, class_weight, opts.ignore_index, num_items, acc) if reduction == "mean" else None
    loss, lse = LinearCrossEntropyFunction.apply(hidden, weight, bias, target, class_weight, reduction, opts, total,
                                                 rows, torch.is_grad_enabled())
    return with_extra_outputs(loss, lse, target != opts.ignore_index, total, reduction, opts.z_loss, "nan",
                              return_lse, return_z_loss)


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of `linear_cross_entropy`: `criterion(hidden, weight, target, bias=None,
    num_items=None)`, with the options fixed at construction."""

    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                 temperature=1.0, class_weight=None, chunk_size=None, return_lse=False, return_z_loss=False):
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.temperature, self.chunk_size = z_loss, softcap, temperature, chunk_size
        self.return_lse, self.return_z_loss = return_lse, return_z_loss

    def forward(self, hidden, weight, target, bias=None, num_items=None):
        return linear_cross_entropy(hidden, weight, target, bias, ignore_index=self.ignore_index,
                                    reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, temperature=self.temperature,
                                    class_weight=self.class_weight, num_items=num_items, chunk_size=self.chunk_size,
                                    return_lse=self.return_lse, return_z_loss=self.return_z_loss)
