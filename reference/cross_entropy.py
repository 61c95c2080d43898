"""Cross-entropy and its gradient in float64 NumPy, with every option softlight has.

Logits x have the classes on axis 1 (axis 0 for a single row of shape (C,)), torch's layout.
Before the softmax the logits are soft-capped, then divided by the temperature T:

    z = cap(x) / T,   cap(x) = softcap * tanh(x / softcap)  (cap(x) = x without softcap)

For a row with class-index target t, class weights w (all 1 without weights) and label
smoothing eps over C classes, with -log softmax(z)_c = LSE(z) - z_c:

    loss = (1 - eps) * w_t * (LSE - z_t) + eps / C * sum_c w_c (LSE - z_c) + z_loss * LSE**2

A row whose target is ignore_index contributes 0. reduction="mean" divides the summed loss by
the summed weights w_t of the rows not ignored (their count without weights), as torch does.
When that denominator is 0 (every target ignored, or every kept target's weight 0) the mean is
NaN, torch's 0/0, even where label smoothing made the sum positive; its gradient is NaN on the
rows kept and 0 on the rows ignored (an ignored row's loss is the constant 0).

For a row of class probabilities q (soft targets), smoothed as q' = (1 - eps) q + eps / C:

    loss = sum_c w_c q'_c (LSE - z_c) + z_loss * LSE**2

and "mean" divides by the number of rows. A class with w_c q'_c = 0 contributes 0 even where
z_c = -inf (0 log 0 = 0); torch computes 0 * inf = NaN there.

The gradient with respect to z is g * (softmax(z) * k - u), with u the per-class target weights
above (u_c = eps w_c / C + (1 - eps) w_t [c == t], or w_c q'_c), k = sum_c u_c + 2 z_loss LSE,
and g the incoming gradient of the row; the chain rule through z = cap(x) / T multiplies by
(1 - tanh(x / softcap)**2) / T. A gradient h flowing into the row's LSE (`cross_entropy_lse`)
adds h * softmax(z), on ignored rows too.
"""

import numpy as np

from .softmax import check_temperature, logsumexp

__all__ = ["cross_entropy", "cross_entropy_backward", "cross_entropy_lse", "REDUCTIONS"]

REDUCTIONS = ("none", "mean", "sum")


def _prepared(x, target, weight, ignore_index, label_smoothing, temperature, softcap):
    """The logits as rows z (N, C), dz/dx, the per-class target weights u of each row, which
    rows are kept (not ignored), and what each adds to the denominator of "mean"."""
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(target)
    check_temperature(temperature)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    single = x.ndim == 1
    x2 = np.moveaxis(x[None] if single else x, 1, -1).reshape(-1, x.shape[0] if single else x.shape[1])
    n, c = x2.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    soft = np.issubdtype(target.dtype, np.floating)
    if soft:
        q = np.moveaxis(target[None] if single else target, 1, -1).reshape(n, c).astype(np.float64)
        u = w * ((1.0 - label_smoothing) * q + label_smoothing / c)
        kept = np.ones(n, dtype=bool)
        counted = np.ones(n)
    else:
        t = target.reshape(-1).astype(np.int64)
        kept = t != ignore_index
        if np.any((t[kept] < 0) | (t[kept] >= c)):
            raise IndexError("target out of range")
        u = np.tile(label_smoothing * w / c, (n, 1))
        tk = np.where(kept, t, 0)
        u[np.arange(n), tk] += (1.0 - label_smoothing) * w[tk]
        u[~kept] = 0.0
        counted = np.where(kept, w[tk], 0.0)
    if softcap is not None:
        t_cap = np.tanh(x2 / softcap)
        capped, dcap = softcap * t_cap, 1.0 - t_cap**2
    else:
        capped, dcap = x2, np.ones_like(x2)
    return x.shape, single, capped / temperature, dcap / temperature, u, kept, counted


def _reduced_shape(shape, single):
    return () if single else (shape[0],) + tuple(shape[2:])


def cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  temperature=1.0, z_loss=0.0, softcap=None):
    """The loss, reduced as `reduction` says (an array of the target's shape for "none")."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    shape, single, z, _, u, kept, counted = _prepared(x, target, weight, ignore_index, label_smoothing, temperature, softcap)
    lse = logsumexp(z, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        # sum_c u_c (LSE - z_c), with 0 for classes whose u_c is 0 whatever z_c is.
        per_class = np.where(u != 0, u * (lse[:, None] - z), 0.0)
        rows = per_class.sum(-1) + np.where(kept, z_loss * lse**2, 0.0)
    if reduction == "none":
        return rows.reshape(_reduced_shape(shape, single))
    if reduction == "sum":
        return rows.sum()
    total = counted.sum()
    return rows.sum() / total if total != 0 else np.float64(np.nan)


def cross_entropy_lse(x, temperature=1.0, softcap=None):
    """Each row's LSE of z = cap(x) / T, shaped like the loss of reduction="none"."""
    x = np.asarray(x, dtype=np.float64)
    check_temperature(temperature)
    rows = np.moveaxis(x[None] if x.ndim == 1 else x, 1, -1)  # classes last
    capped = rows if softcap is None else softcap * np.tanh(rows / softcap)
    lse = logsumexp(capped / temperature, axis=-1)
    return lse[0] if x.ndim == 1 else lse


def cross_entropy_backward(x, target, grad_output=1.0, weight=None, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0, temperature=1.0, z_loss=0.0, softcap=None, grad_lse=None):
    """d(loss)/d(x) given the incoming gradient of the reduced loss (per row for "none"), plus the
    term of `grad_lse`, an incoming gradient of each row's LSE (shaped like the rows), if given."""
    shape, single, z, dz_dx, u, kept, counted = _prepared(x, target, weight, ignore_index, label_smoothing, temperature, softcap)
    lse = logsumexp(z, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        p = np.exp(z - lse)
        k = u.sum(-1, keepdims=True) + np.where(kept[:, None], 2.0 * z_loss * lse, 0.0)
        if reduction == "none":
            g = np.asarray(grad_output, dtype=np.float64).reshape(-1, 1)
        elif reduction == "sum":
            g = np.full((len(u), 1), float(grad_output))
        else:
            total = counted.sum()
            g = np.full((len(u), 1), float(grad_output) / total if total != 0 else np.nan)
        g = np.where(kept[:, None], g, 0.0)  # an ignored row's loss is the constant 0
        grad = g * (p * k - u)
        if grad_lse is not None:
            grad = grad + np.asarray(grad_lse, dtype=np.float64).reshape(-1, 1) * p
        grad = grad * dz_dx
    if single:
        return grad.reshape(shape)
    return np.moveaxis(grad.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)
