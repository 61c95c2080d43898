"""The losses of an output projection, in float64 NumPy: cross-entropy and per-token
log-probabilities of logits = hidden @ weight.T + bias, and the gradients of hidden, weight and
bias. They compose the reference's cross-entropy and token log-probabilities with the matmul:

    d hidden = d logits @ weight,   d weight = d logits.T @ hidden,   d bias = sum over tokens of d logits

hidden is (..., H), weight (V, H), bias (V,), targets / ids hidden's shape without H.
`num_items` (with reduction "mean") divides the summed loss by it instead of by the count of
targets kept, as gradient accumulation over micro-batches wants.

`logits`, when given, replaces hidden @ weight.T + bias in the loss (the gradients of hidden and
weight still multiply by weight and hidden): the tests pass the logits as the unfused composition
holds them, rounded to the hidden dtype by the matmul, so both sides see the same logits.
"""

import numpy as np

from .cross_entropy import REDUCTIONS, cross_entropy, cross_entropy_backward
from .token_logprobs import token_logprobs, token_logprobs_backward

__all__ = [
    "linear_logits",
    "linear_cross_entropy",
    "linear_cross_entropy_backward",
    "linear_token_logprobs",
    "linear_token_logprobs_backward",
]


def linear_logits(hidden, weight, bias=None):
    logits = np.asarray(hidden, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T
    return logits if bias is None else logits + np.asarray(bias, dtype=np.float64)


def _rows(hidden, weight, bias, logits):
    """(hidden as (N, H), weight, logits as (N, V)) in float64."""
    h = np.asarray(hidden, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    z = linear_logits(h, w, bias) if logits is None else np.asarray(logits, dtype=np.float64)
    return h.reshape(-1, w.shape[1]), w, z.reshape(-1, w.shape[0])


def _ce_options(reduction, num_items, options):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_items is not None and reduction != "mean":
        raise ValueError("num_items replaces the denominator of reduction='mean'")
    weight = options.pop("class_weight", None)
    return dict(options, weight=weight, reduction="sum" if num_items is not None else reduction)


def linear_cross_entropy(hidden, weight, target, bias=None, reduction="mean", num_items=None, logits=None, **options):
    """The loss (per token, shaped like target, for "none"). options: ignore_index,
    label_smoothing, temperature, z_loss, softcap, class_weight, as `cross_entropy`."""
    _, _, z = _rows(hidden, weight, bias, logits)
    target = np.asarray(target)
    loss = cross_entropy(z, target.reshape(-1), **_ce_options(reduction, num_items, options))
    if num_items is not None:
        return loss / num_items
    return loss.reshape(target.shape) if reduction == "none" else loss


def linear_cross_entropy_backward(hidden, weight, target, grad_output=1.0, bias=None, reduction="mean",
                                  num_items=None, logits=None, **options):
    """(d hidden, d weight, d bias) given the incoming gradient of the loss (per token for "none")."""
    h, w, z = _rows(hidden, weight, bias, logits)
    grad = np.asarray(grad_output, dtype=np.float64)
    if num_items is not None:
        grad = grad / num_items
    grad = grad.reshape(-1) if reduction == "none" else grad
    dz = cross_entropy_backward(z, np.asarray(target).reshape(-1), grad, **_ce_options(reduction, num_items, options))
    return (dz @ w).reshape(np.shape(hidden)), dz.T @ h, dz.sum(0)


def linear_token_logprobs(hidden, weight, ids, bias=None, temperature=1.0, logits=None):
    """(logp, entropy) of each token, shaped like ids."""
    _, _, z = _rows(hidden, weight, bias, logits)
    ids = np.asarray(ids)
    logp, entropy = token_logprobs(z, ids.reshape(-1), temperature)
    return logp.reshape(ids.shape), entropy.reshape(ids.shape)


def linear_token_logprobs_backward(hidden, weight, ids, grad_logp=None, grad_entropy=None, bias=None,
                                   temperature=1.0, logits=None):
    """(d hidden, d weight, d bias) of sum(grad_logp * logp + grad_entropy * entropy)."""
    h, w, z = _rows(hidden, weight, bias, logits)
    flat = [None if g is None else np.asarray(g, dtype=np.float64).reshape(-1) for g in (grad_logp, grad_entropy)]
    dz = token_logprobs_backward(z, np.asarray(ids).reshape(-1), *flat, temperature=temperature)
    return (dz @ w).reshape(np.shape(hidden)), dz.T @ h, dz.sum(0)
