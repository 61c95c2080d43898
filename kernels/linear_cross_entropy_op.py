"""linear_cross_entropy as torch ops: the loss of logits = hidden @ weight.T + bias, without ever
holding the (N, V) logits or their gradient.

    loss = softlight.linear_cross_entropy(hidden, lm_head.weight, labels, label_smoothing=0.1)
    # = softlight.cross_entropy(F.linear(hidden, lm_head.weight).flatten(0, -2), labels.flatten(), ...)

The tokens go through in chunks of rows (kernels/linear_chunks.py): one matmul gives a chunk's
logits, the cross-entropy row engine (kernels/cross_entropy_rows.py, every option of
`softlight.cross_entropy`) gives each row's loss and then overwrites the logits in place with
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
  A gradient flowing into the returned LSE (return_lse) takes such a sweep too.

Either way the gradients are those of the unfused composition: the chunk's logits are rounded
to the hidden dtype as `F.linear` rounds them, the cross-entropy gradient is exact (nothing is
dropped), d hidden of a chunk is one matmul over the whole vocabulary, and the sum over chunks
of d weight and d bias is kept in fp32.

Memory beyond the inputs and the gradients: one chunk's logits (`chunk_rows` x V elements of the
hidden dtype), five fp32 numbers per token, and for an fp16/bf16 weight an fp32 accumulator of its
gradient (4 V H bytes) while it is summed.

The ops are opaque custom ops on a GPU too: their bodies loop over chunks with cuBLAS matmuls,
which Inductor would only unroll.
"""

from dataclasses import dataclass

import torch

from . import checks, launch
from .cross_entropy_op import cross_entropy_options, with_extra_outputs
from .cross_entropy_rows import CrossEntropyOptions, RowStats, backward_rows, forward_rows, reduce
from .linear_chunks import LinearGradients, chunk_rows, chunk_slices, linear, placeholder
from .registry import register_op

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss", "kernel_launches"]

FN = "softlight.linear_cross_entropy"


@dataclass(frozen=True)
class LinearCrossEntropyOptions(CrossEntropyOptions):
    rows: int = 1  # tokens per chunk
    needs: tuple = (False, False, False)  # which of hidden, weight and bias want a gradient
    num_items: float | None = None  # the denominator of a mean, when the caller gave it as a number


def _sweep(h, weight, bias, target, class_weight, o, stats=None, grads=None, grad_rows=None, lse_grad=None):
    """One pass over the chunks of rows of h (N, H). Without `stats` (forward) it computes each
    row's RowStats and returns them; with them (backward) it reuses them. With `grads` it writes
    each chunk's d logits, for the incoming gradients `grad_rows` of each row's loss and `lse_grad`
    of its LSE (each (N,) or None), over the chunk's logits and adds them to `grads`."""
    fresh = stats is None
    if fresh:
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        stats = RowStats(*(torch.empty(h.shape[0], dtype=acc, device=h.device) for _ in RowStats._fields))
    for chunk in chunk_slices(h.shape[0], o.rows):
        logits = linear(h[chunk], weight, bias)
        if fresh:
            for whole, part in zip(stats, forward_rows(logits, target[chunk], class_weight, o)):
                whole[chunk] = part
        if grads is not None:
            chunk_stats = RowStats(*(None if s is None else s[chunk] for s in stats))
            backward_rows(logits, target[chunk], class_weight, o, chunk_stats, grad_rows[chunk], logits,
                          None if lse_grad is None else lse_grad[chunk])
            grads.add(chunk, logits, h[chunk])
        del logits  # before the next chunk's logits are allocated: one chunk alive at a time
    return stats


def _denominator(o: LinearCrossEntropyOptions, total):
    return o.num_items if o.num_items is not None else total


def _unit_row_gradient(o: LinearCrossEntropyOptions, total, n_rows, dtype, device):
    """The gradient of each row's loss when the loss's own gradient is 1, as a stride-0 (N,) view.
    A mean over a denominator of 0 has NaN there, as torch's 0/0 (ignored rows still get 0)."""
    total = _denominator(o, total)
    if o.reduction == "sum":
        scale = torch.ones((), dtype=dtype, device=device)
    elif isinstance(total, torch.Tensor):
        scale = torch.where(total != 0, 1.0 / total, float("nan")).to(dtype)
    else:
        scale = torch.full((), 1.0 / total, dtype=dtype, device=device)
    return scale.expand(n_rows)


@register_op("linear_cross_entropy", opaque=True)
def linear_cross_entropy_op(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            target: torch.Tensor, class_weight: torch.Tensor | None, total: torch.Tensor | None,
                            options: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """(loss, LSE per token, d hidden, d weight, d bias for a loss gradient of 1 (placeholders for
    reduction "none" or no gradient), row max, normaliser, k_rest, p_t - 1)."""
    o = LinearCrossEntropyOptions.decode(options)
    if not launch.is_dry_run():
        checks.index_range(FN, "target", target, weight.shape[0], o.ignore_index)
    t = target.reshape(-1)
    h = hidden.reshape(t.shape[0], hidden.shape[-1])
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    eager = o.reduction != "none" and any(o.needs)
    grads = LinearGradients(h, weight, bias, o.needs) if eager else None
    grad_rows = _unit_row_gradient(o, total, h.shape[0], acc, h.device) if eager else None
    stats = _sweep(h, weight, bias, t, class_weight, o, grads=grads, grad_rows=grad_rows)
    made = grads.result() if eager else (None, None, None)
    loss = reduce(stats.loss, o.reduction, _denominator(o, total), target.shape)
    return (loss, stats.lse.reshape(target.shape), *(placeholder(h) if g is None else g for g in made),
            stats.row_max, stats.norm, stats.k_rest, stats.pt_minus_1)


@register_op("linear_cross_entropy_backward", opaque=True)
def linear_cross_entropy_backward_op(grad_rows: torch.Tensor, grad_lse: torch.Tensor | None, hidden: torch.Tensor,
                                     weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                                     class_weight: torch.Tensor | None, row_max: torch.Tensor, norm: torch.Tensor,
                                     k_rest: torch.Tensor, pt_minus_1: torch.Tensor, options: str
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d hidden, d weight, d bias) of a sweep that recomputes the logits, for per-token gradients
    of the loss (`grad_rows`, (N,)) and of the LSE (`grad_lse`); placeholders for those not needed."""
    o = LinearCrossEntropyOptions.decode(options)
    t = target.reshape(-1)
    h = hidden.reshape(t.shape[0], hidden.shape[-1])
    grads = LinearGradients(h, weight, bias, o.needs)
    stats = RowStats(None, None, row_max, norm, k_rest, pt_minus_1, None)
    _sweep(h, weight, bias, t, class_weight, o, stats, grads, grad_rows.reshape(-1),
           None if grad_lse is None else grad_lse.reshape(-1))
    grad_hidden, grad_weight, grad_bias = grads.result()
    grad_hidden = None if grad_hidden is None else grad_hidden.reshape(hidden.shape)
    return tuple(placeholder(h) if g is None else g for g in (grad_hidden, grad_weight, grad_bias))


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, target, class_weight, _, options = inputs
    ctx.save_for_backward(hidden, weight, bias, target, class_weight, *output[5:], *output[2:5])
    ctx.options = options
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_loss, grad_lse, *_):
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{FN}: double backward (create_graph=True) is not implemented")
    hidden, weight, bias, target, class_weight, row_max, norm, k_rest, pt_minus_1, *made = ctx.saved_tensors
    o = LinearCrossEntropyOptions.decode(ctx.options)
    eager = o.reduction != "none" and any(o.needs)
    results = [None, None, None]
    if grad_lse is not None or (not eager and grad_loss is not None):
        if eager or grad_loss is None:  # the loss's own part is made already, or not wanted
            grad_rows = torch.zeros((), dtype=row_max.dtype, device=row_max.device).expand(row_max.shape)
        else:
            grad_rows = grad_loss.reshape(-1)
        results = list(linear_cross_entropy_backward_op(grad_rows, grad_lse, hidden, weight, bias, target,
                                                        class_weight, row_max, norm, k_rest, pt_minus_1, ctx.options))
    if eager and grad_loss is not None:
        # Out of place: a retained graph (gradcheck's repeated backward) must find them intact.
        for i, g in enumerate(made):
            if o.needs[i]:
                g = g.reshape(hidden.shape) if i == 0 else g
                results[i] = g * grad_loss if results[i] is None else results[i] + g * grad_loss
    return (*(g if need else None for g, need in zip(results, o.needs)), None, None, None, None)


linear_cross_entropy_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _mean_denominator(target, class_weight, ignore_index, dtype):
    """The summed class weights of the targets not ignored (their count without class weights),
    what torch's mean divides by."""
    kept = target != ignore_index
    if class_weight is None:
        return kept.sum().to(dtype)
    # Clamping keeps the look-up in range for ignored (and, on a GPU, invalid) targets.
    w = class_weight.to(dtype)[target.clamp(0, class_weight.shape[0] - 1)]
    return torch.where(kept, w, 0.0).sum()


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
    n_classes = checks.linear(FN, hidden, weight, bias)
    ce = cross_entropy_options(FN, reduction, ignore_index, label_smoothing, temperature, z_loss, softcap)
    checks.class_indices(FN, "target", target, hidden.shape[:-1], hidden.device,
                         "the input's shape without its last dim")
    class_weight = checks.class_weight(FN, "class_weight", class_weight, n_classes, "hidden", hidden.device)
    num_items = checks.num_items(FN, num_items, reduction, hidden.device)
    chunk_size = checks.chunk_size(FN, chunk_size)
    checks.flag(FN, "return_lse", return_lse)
    checks.flag(FN, "return_z_loss", return_z_loss)

    grad_mode = torch.is_grad_enabled()
    needs = tuple(grad_mode and t is not None and t.requires_grad for t in (hidden, weight, bias))
    o = LinearCrossEntropyOptions(**vars(ce), rows=chunk_rows(target.numel(), hidden.shape[-1], n_classes, chunk_size),
                                  needs=needs, num_items=num_items if isinstance(num_items, float) else None)
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    total = None
    if reduction == "mean" and o.num_items is None:
        total = num_items if num_items is not None else _mean_denominator(target, class_weight, ce.ignore_index, acc)
    loss, lse, *_ = linear_cross_entropy_op(hidden, weight, bias, target, class_weight, total, o.encode())
    return with_extra_outputs(loss, lse, target != ce.ignore_index, _denominator(o, total), o, return_lse,
                              return_z_loss)


def kernel_launches(tokens: int, hidden: int, vocabulary: int, dtype: torch.dtype, *, chunk_size=None,
                    **options) -> list:
    """The kernel launches of a forward and a backward of linear_cross_entropy for `tokens` hidden
    states of size `hidden` and a vocabulary of `vocabulary`, with its keyword options (reduction
    "none" shows the backward's sweep): for the compile report."""
    h = torch.empty(tokens, hidden, dtype=dtype, device="meta")
    w = torch.empty(vocabulary, hidden, dtype=dtype, device="meta")
    target = torch.empty(tokens, dtype=torch.int64, device="meta")
    keywords = dict(reduction="mean", ignore_index=-100, label_smoothing=0.0, temperature=1.0, z_loss=0.0, softcap=None)
    ce = cross_entropy_options(FN, **{**keywords, **options})
    o = LinearCrossEntropyOptions(**vars(ce), rows=chunk_rows(tokens, hidden, vocabulary, chunk_size),
                                  needs=(True, True, False))
    total = torch.empty((), device="meta") if o.reduction == "mean" else None
    with launch.recording() as launches:
        out = linear_cross_entropy_op(h, w, None, target, None, total, o.encode())
        if o.reduction == "none":
            linear_cross_entropy_backward_op(out[0], None, h, w, None, target, None, *out[5:], o.encode())
    return launches


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of `linear_cross_entropy`: `criterion(hidden, weight, target, bias=None,
    num_items=None)`, with the options fixed at construction."""

    def _get_name(self):  # the repr says whose module this is
        return f"softlight.{type(self).__name__}"

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
