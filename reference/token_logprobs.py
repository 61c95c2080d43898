"""Per-token log-probabilities and entropy, and their gradient, in float64 NumPy.

Logits x have the vocabulary on the last axis, ids the same shape without it. With z = x / T,
p = softmax(z) along the last axis:

    logp = log p_ids = z_ids - LSE(z)
    entropy = -sum_c p_c log p_c,   with p_c log p_c = 0 where p_c = 0 (a logit of -inf)

Gradients, for incoming gradients g of logp and h of the entropy (dH/dz_c = p_c (E_p[z] - z_c)):

    d/dx_c = (g (onehot(ids)_c - p_c) + h p_c (E_p[z] - z_c)) / T

A row that is all -inf, or holds +inf or NaN, gives NaN (as log_softmax does in torch).
"""

import numpy as np

from .softmax import check_temperature, log_softmax

__all__ = ["token_logprobs", "token_logprobs_backward"]


def _prepared(x, ids, temperature):
    check_temperature(temperature)
    z = np.asarray(x, dtype=np.float64) / temperature
    ids = np.asarray(ids)
    if ids.shape != z.shape[:-1]:
        raise ValueError(f"ids must have shape {z.shape[:-1]}, got {ids.shape}")
    if np.any((ids < 0) | (ids >= z.shape[-1])):
        raise IndexError("ids out of range")
    return z, ids, log_softmax(z, axis=-1)


def token_logprobs(x, ids, temperature=1.0):
    """(logp, entropy), both shaped like ids."""
    z, ids, log_p = _prepared(x, ids, temperature)
    logp = np.take_along_axis(log_p, ids[..., None], axis=-1)[..., 0]
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        entropy = -np.where(p > 0, p * log_p, 0.0).sum(-1)
    # np.where drops the NaN of an all -inf row (p = NaN is not > 0): keep it.
    entropy = np.where(np.isnan(p).any(-1), np.nan, entropy)
    return logp, entropy


def token_logprobs_backward(x, ids, grad_logp=None, grad_entropy=None, temperature=1.0):
    """d/dx of sum(grad_logp * logp + grad_entropy * entropy); a None gradient counts as 0."""
    z, ids, log_p = _prepared(x, ids, temperature)
    p = np.exp(log_p)
    grad = np.zeros_like(z)
    if grad_logp is not None:
        onehot = np.zeros_like(z)
        np.put_along_axis(onehot, ids[..., None], 1.0, axis=-1)
        grad += np.asarray(grad_logp, dtype=np.float64)[..., None] * (onehot - p)
    if grad_entropy is not None:
        with np.errstate(invalid="ignore"):
            mean = np.where(p > 0, p * z, 0.0).sum(-1, keepdims=True)  # E_p[z]
            term = np.where(p > 0, p * (mean - z), 0.0)
        term = np.where(np.isnan(p), np.nan, term)
        grad += np.asarray(grad_entropy, dtype=np.float64)[..., None] * term
    return grad / temperature
