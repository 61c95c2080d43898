"""Softmax, log-softmax and log-sum-exp in float64 NumPy: the ground truth the kernels are held to.

Every function takes an array-like, works in float64 and returns float64. ``temperature`` T
divides the logits first: softmax(x / T). The stable forms subtract the row maximum b before
exponentiating, which changes nothing mathematically (softmax is invariant to adding a constant
to every logit) but keeps exp() in range:

    LSE(x) = b + log(sum_j exp(x_j - b))          b = max_j x_j
    softmax(x)_i = exp(x_i - b) / sum_j exp(x_j - b)
    log_softmax(x)_i = (x_i - b) - log(sum_j exp(x_j - b))

Edge cases follow torch's formulas on purpose, so the reference can pin them: a row that is
entirely -inf, or holds +inf or NaN, gives NaN for softmax and log-softmax; its LSE is -inf,
+inf and NaN respectively.

``naive_softmax`` and ``naive_log_softmax`` are the textbook formulas without the shift, kept for
the stability study: they overflow to inf/NaN once a logit passes log(float64 max) ~ 709.8.
"""

import numpy as np

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "softmax_backward",
    "log_softmax_backward",
    "naive_softmax",
    "naive_log_softmax",
]


def check_temperature(temperature):
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")


def _scaled(x, temperature):
    check_temperature(temperature)
    return np.asarray(x, dtype=np.float64) / temperature


def _row_max(z, axis):
    """max(z) along axis (keepdims); -inf for an empty axis, where np.max would raise."""
    if z.shape[axis] == 0:
        return np.full_like(np.sum(z, axis=axis, keepdims=True), -np.inf)
    return np.max(z, axis=axis, keepdims=True)


def logsumexp(x, axis=-1, temperature=1.0, keepdims=False):
    z = _scaled(x, temperature)
    b = _row_max(z, axis)
    # Shift by 0 where the max is not finite: an all -inf row then gives log(0) = -inf, a row
    # with +inf gives +inf and a row with NaN gives NaN, as torch.logsumexp does.
    b = np.where(np.isfinite(b), b, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = b + np.log(np.sum(np.exp(z - b), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def softmax(x, axis=-1, temperature=1.0):
    z = _scaled(x, temperature)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(z - _row_max(z, axis))
        return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1, temperature=1.0):
    z = _scaled(x, temperature)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = z - _row_max(z, axis)
        return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def softmax_backward(y, dy, axis=-1, temperature=1.0):
    """Gradient of softmax given its output y and the incoming gradient dy.

    With the Jacobian ds_i/dz_j = s_i (delta_ij - s_j): dz = s * (dy - sum(dy * s)); the 1/T of
    z = x / T multiplies the result."""
    y = np.asarray(y, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    check_temperature(temperature)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True)) / temperature


def log_softmax_backward(y, dy, axis=-1, temperature=1.0):
    """Gradient of log-softmax given its output y = log s and the incoming gradient dy:
    dz = dy - s * sum(dy), times 1/T."""
    y = np.asarray(y, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    check_temperature(temperature)
    return (dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)) / temperature


def naive_softmax(x, axis=-1, temperature=1.0):
    """exp(z) / sum(exp(z)) with no shift: overflows for large logits. For the stability study only."""
    z = _scaled(x, temperature)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(z)
        return e / np.sum(e, axis=axis, keepdims=True)


def naive_log_softmax(x, axis=-1, temperature=1.0):
    """log(softmax(z)) computed naively: -inf where softmax underflows, NaN where exp overflows.
    For the stability study only."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(naive_softmax(x, axis=axis, temperature=temperature))
