"""linear_token_logprobs as torch ops: token_logprobs of hidden @ weight.T + bias, a chunk of tokens
at a time, never holding the (N, V) logits.

    logp = softlight.linear_token_logprobs(hidden, lm_head.weight, ids)

Forward makes each chunk's logits with one matmul (kernels/linear_chunks.py) and runs the token
log-probability row engine (kernels/token_logprobs_rows.py) on them. Backward always recomputes
each chunk's logits: the incoming gradients are per token, known only then. Like the linear
cross-entropy, the ops are opaque custom ops on a GPU too.
"""

from dataclasses import dataclass

import torch

from . import checks, launch
from .linear_chunks import LinearGradients, chunk_rows, chunk_slices, linear, placeholder
from .registry import register_op
from .token_logprobs_op import outputs
from .token_logprobs_rows import LogprobStats, TokenLogprobsOptions, empty_stats, logprob_grad_rows, logprob_rows

__all__ = ["linear_token_logprobs", "kernel_launches"]

FN = "softlight.linear_token_logprobs"


@dataclass(frozen=True)
class LinearTokenLogprobsOptions(TokenLogprobsOptions):
    rows: int = 1  # tokens per chunk
    needs: tuple = (False, False, False)  # which of hidden, weight and bias want a gradient


@register_op("linear_token_logprobs", opaque=True)
def linear_token_logprobs_op(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             ids: torch.Tensor, options: str
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor]:
    """LogprobStats of every token, shaped like ids (placeholders for the entropy and E without it)."""
    o = LinearTokenLogprobsOptions.decode(options)
    if not launch.is_dry_run():
        checks.index_range(FN, "ids", ids, weight.shape[0], o.ignore_index)
    flat_ids = ids.reshape(-1)
    h = hidden.reshape(flat_ids.shape[0], hidden.shape[-1])
    stats = empty_stats(flat_ids.shape, h.dtype, h.device, o.entropy)
    for chunk in chunk_slices(h.shape[0], o.rows):
        logits = linear(h[chunk], weight, bias)
        for whole, part in zip(stats, logprob_rows(logits, flat_ids[chunk], o)):
            if whole is not None:
                whole[chunk] = part
        del logits  # before the next chunk's logits are allocated: one chunk alive at a time
    return tuple(placeholder(stats.logp) if s is None else s.reshape(ids.shape) for s in stats)


@register_op("linear_token_logprobs_backward", opaque=True)
def linear_token_logprobs_backward_op(grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None,
                                      hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                      ids: torch.Tensor, row_max: torch.Tensor, norm: torch.Tensor,
                                      one_minus_pt: torch.Tensor, mean: torch.Tensor, options: str
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d hidden, d weight, d bias), placeholders for those not needed."""
    o = LinearTokenLogprobsOptions.decode(options)
    flat_ids = ids.reshape(-1)
    h = hidden.reshape(flat_ids.shape[0], hidden.shape[-1])
    row_max, norm, one_minus_pt = (t.reshape(-1) for t in (row_max, norm, one_minus_pt))
    mean = mean.reshape(-1) if grad_entropy is not None else None
    grad_logp = None if grad_logp is None else grad_logp.reshape(-1)
    grad_entropy = None if grad_entropy is None else grad_entropy.reshape(-1)
    grads = LinearGradients(h, weight, bias, o.needs)
    for chunk in chunk_slices(h.shape[0], o.rows):
        logits = linear(h[chunk], weight, bias)
        stats = LogprobStats(None, None, row_max[chunk], norm[chunk], one_minus_pt[chunk],
                             None if mean is None else mean[chunk])
        logprob_grad_rows(logits, flat_ids[chunk], o, stats, None if grad_logp is None else grad_logp[chunk],
                          None if grad_entropy is None else grad_entropy[chunk], logits)
        grads.add(chunk, logits, h[chunk])
        del logits
    grad_hidden, grad_weight, grad_bias = grads.result()
    grad_hidden = None if grad_hidden is None else grad_hidden.reshape(hidden.shape)
    return tuple(placeholder(h) if g is None else g for g in (grad_hidden, grad_weight, grad_bias))


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, ids, options = inputs
    ctx.save_for_backward(hidden, weight, bias, ids, *output[2:])
    ctx.options = options
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_logp, grad_entropy, *_):
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{FN}: double backward (create_graph=True) is not implemented")
    hidden, weight, bias, ids, row_max, norm, one_minus_pt, mean = ctx.saved_tensors
    o = LinearTokenLogprobsOptions.decode(ctx.options)
    if not o.entropy:
        grad_entropy = None  # the entropy's placeholder
    if grad_logp is None and grad_entropy is None:
        return None, None, None, None, None
    grads = linear_token_logprobs_backward_op(grad_logp, grad_entropy, hidden, weight, bias, ids, row_max, norm,
                                              one_minus_pt, mean, ctx.options)
    return (*(g if need else None for g, need in zip(grads, o.needs)), None, None)


linear_token_logprobs_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def linear_token_logprobs(hidden, weight, ids, bias=None, *, temperature=1.0, return_entropy=False, chunk_size=None,
                          ignore_index=-100):
    """token_logprobs(hidden @ weight.T + bias, ids, ...) with gradients for hidden, weight and
    bias, never holding the (N, V) logits: they are made, used and dropped a chunk of tokens at a
    time (forward, then again in backward, which recomputes them).

    hidden: (..., H); weight: (V, H); bias: (V,) or None (one floating dtype and device); ids:
    (...) token ids, hidden's shape without H. Returns logp shaped like ids, or (logp, entropy)
    with return_entropy=True, float32 (float64 for float64 inputs). chunk_size: rows per chunk
    (default: see `linear_chunks.chunk_rows`). ignore_index: as in `token_logprobs` (0, no gradient).
    """
    n_classes = checks.linear(FN, hidden, weight, bias)
    checks.class_indices(FN, "ids", ids, hidden.shape[:-1], hidden.device, "the input's shape without its last dim")
    grad_mode = torch.is_grad_enabled()
    o = LinearTokenLogprobsOptions(
        inv_temperature=1.0 / checks.temperature(FN, temperature),
        entropy=checks.flag(FN, "return_entropy", return_entropy),
        ignore_index=checks.integer(FN, "ignore_index", ignore_index),
        rows=chunk_rows(ids.numel(), hidden.shape[-1], n_classes, checks.chunk_size(FN, chunk_size)),
        needs=tuple(grad_mode and t is not None and t.requires_grad for t in (hidden, weight, bias)),
    )
    logp, entropy, *_ = linear_token_logprobs_op(hidden, weight, bias, ids, o.encode())
    return outputs(logp, entropy, o.entropy)


def kernel_launches(tokens: int, hidden: int, vocabulary: int, dtype: torch.dtype, *, return_entropy=False,
                    chunk_size=None, temperature=1.0) -> list:
    """The kernel launches of a forward and a backward of linear_token_logprobs for `tokens` hidden
    states of size `hidden` and a vocabulary of `vocabulary`: for the compile report."""
    h = torch.empty(tokens, hidden, dtype=dtype, device="meta")
    w = torch.empty(vocabulary, hidden, dtype=dtype, device="meta")
    ids = torch.empty(tokens, dtype=torch.int64, device="meta")
    o = LinearTokenLogprobsOptions(1.0 / temperature, return_entropy,
                                   rows=chunk_rows(tokens, hidden, vocabulary, chunk_size), needs=(True, True, False))
    with launch.recording() as launches:
        logp, entropy, *stats = linear_token_logprobs_op(h, w, None, ids, o.encode())
        linear_token_logprobs_backward_op(logp, entropy if return_entropy else None, h, w, None, ids, *stats,
                                          o.encode())
    return launches
