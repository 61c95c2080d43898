"""token_logprobs as torch ops: registration, autograd, the public function.

    logp = softlight.token_logprobs(logits, ids)                   # log_softmax(logits)[ids]
    logp, entropy = softlight.token_logprobs(logits, ids, temperature=0.7, return_entropy=True)

Reinforcement-learning code wants, for each position, the log-probability of the sampled token
and often the entropy of the distribution. Written with torch ops that is a full (N, V)
log-softmax (and a softmax for the entropy) read back for one value per row. Here one program per
row reads its V logits once and writes a few numbers (kernels/token_logprobs_kernels.py).

Shapes: logits (..., V) with the vocabulary last (the natural layout of a language model's
output, (batch, sequence, V)), ids (...) the same shape without V; outputs shaped like ids,
float32 (float64 for float64 logits).
"""

import torch

from . import checks, launch
from .linear_chunks import placeholder
from .registry import register_op
from .token_logprobs_rows import LogprobStats, TokenLogprobsOptions, logprob_grad_rows, logprob_rows

__all__ = ["token_logprobs", "kernel_launches", "outputs"]

FN = "softlight.token_logprobs"


@register_op("token_logprobs")
def token_logprobs_op(logits: torch.Tensor, ids: torch.Tensor, options: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p, entropy, row max, normaliser, 1 - p_t, E): LogprobStats, with placeholders for the
    entropy and E without options' entropy."""
    o = TokenLogprobsOptions.decode(options)
    if not launch.is_dry_run():
        checks.index_range(FN, "ids", ids, logits.shape[-1], o.ignore_index)
    stats = logprob_rows(logits, ids, o)
    return tuple(placeholder(stats.logp) if s is None else s for s in stats)


@register_op("token_logprobs_backward")
def token_logprobs_backward_op(grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None,
                               logits: torch.Tensor, ids: torch.Tensor, row_max: torch.Tensor, norm: torch.Tensor,
                               one_minus_pt: torch.Tensor, mean: torch.Tensor, options: str) -> torch.Tensor:
    stats = LogprobStats(None, None, row_max, norm, one_minus_pt, mean)
    dx = torch.empty_like(logits)
    logprob_grad_rows(logits, ids, TokenLogprobsOptions.decode(options), stats, grad_logp, grad_entropy, dx)
    return dx


def _setup_context(ctx, inputs, output):
    logits, ids, options = inputs
    ctx.save_for_backward(logits, ids, *output[2:])
    ctx.options = options
    ctx.set_materialize_grads(False)  # an output not used in the loss brings no gradient


def _autograd_backward(ctx, grad_logp, grad_entropy, *_):
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{FN}: double backward (create_graph=True) is not implemented")
    logits, ids, row_max, norm, one_minus_pt, mean = ctx.saved_tensors
    if not TokenLogprobsOptions.decode(ctx.options).entropy:
        grad_entropy = None  # the entropy's placeholder
    if grad_logp is None and grad_entropy is None:
        return None, None, None
    dx = token_logprobs_backward_op(grad_logp, grad_entropy, logits, ids, row_max, norm, one_minus_pt, mean,
                                    ctx.options)
    return dx, None, None


token_logprobs_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def outputs(logp, entropy, return_entropy: bool):
    return (logp, entropy) if return_entropy else logp


def token_logprobs(logits, ids, *, temperature=1.0, return_entropy=False, ignore_index=-100):
    """log softmax(logits / temperature) at `ids`, one value per row, and optionally each row's
    entropy -sum_c p_c log p_c; differentiable in the logits, in one pass without an (N, V)
    log-softmax.

    logits: (..., V), the vocabulary last; ids: (...) token ids (any integer dtype), logits' shape
    without V. Returns logp shaped like ids, or (logp, entropy) with return_entropy=True; float32
    (float64 for float64 logits). -inf logits are masked-out tokens: they add 0 to the entropy
    (torch's -(p * log p).sum() gives NaN there; torch.special.entr agrees with us). Positions
    whose id is `ignore_index` (prompt or padding tokens in RL code) give 0 for both outputs and
    pass no gradient. Any other id outside [0, V) raises IndexError on the CPU; on a GPU its row's
    log-probability is NaN.
    """
    checks.logits(FN, "logits", logits, class_dim=-1)
    checks.class_indices(FN, "ids", ids, logits.shape[:-1], logits.device, "the input's shape without its last dim")
    o = TokenLogprobsOptions(inv_temperature=1.0 / checks.temperature(FN, temperature),
                             entropy=checks.flag(FN, "return_entropy", return_entropy),
                             ignore_index=checks.integer(FN, "ignore_index", ignore_index))
    logp, entropy, *_ = token_logprobs_op(logits, ids, o.encode())
    return outputs(logp, entropy, o.entropy)


def kernel_launches(shape, dtype: torch.dtype, *, return_entropy=False, grads=("logp",), temperature=1.0) -> list:
    """The kernel launches of a forward and a backward of token_logprobs on logits of `shape` and
    `dtype` (the vocabulary last), with the gradients `grads` flowing in (of "logp", "entropy" or
    both): for the compile report."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    ids = torch.empty(shape[:-1], dtype=torch.int64, device="meta")
    o = TokenLogprobsOptions(1.0 / temperature, return_entropy or "entropy" in grads)
    with launch.recording() as launches:
        stats = logprob_rows(x, ids, o)
        per_row = torch.empty(shape[:-1], dtype=stats.row_max.dtype, device="meta")
        logprob_grad_rows(x, ids, o, stats, per_row if "logp" in grads else None,
                          per_row if "entropy" in grads else None, torch.empty_like(x))
    return launches
