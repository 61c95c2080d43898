"""Divergences between a student's and a teacher's distributions over the vocabulary, and their
gradients, in float64 NumPy: the textbook formulas, independent of the kernels' own.

Logits have the vocabulary on the last axis, student and teacher of one shape. With z = x / T,
p_s = softmax(z_s), p_t = softmax(z_t) and log p from log_softmax:

    "kl"          KL(p_t || p_s) = sum_c p_t (log p_t - log p_s)
    "reverse_kl"  KL(p_s || p_t) = sum_c p_s (log p_s - log p_t)
    "jsd"         beta KL(p_t || m) + (1 - beta) KL(p_s || m),   m = beta p_t + (1 - beta) p_s

A class where the first distribution of a KL is 0 adds 0 (p log p = 0 at p = 0); one where it is
positive and the second is 0 makes the KL +inf. A row that is all -inf, or holds +inf or NaN, in
either gives NaN, as torch's log_softmax does.

Gradients, with K the row's divergence and L = log(p / q) the per-class log-ratio of a KL(p || q):

    "kl":          d/dz_s = p_s - p_t,                    d/dz_t = p_t (log p_t - log p_s - K)
    "reverse_kl":  d/dz_s = p_s (log p_s - log p_t - K),  d/dz_t = p_t - p_s
    "jsd":         d/dz_s = (1 - beta) p_s (log(p_s / m) - KL(p_s || m))
                   d/dz_t = beta p_t (log(p_t / m) - KL(p_t || m))

(since d KL(p||q)/dp_c = log(p_c/q_c) + 1 and, for the JSD, d/dp_s of the whole is
(1 - beta) log(p_s/m): the terms through m cancel), each times the incoming gradient of the row and
1/T for d/dx. `target` (class indices, the logits' shape without V) only marks rows to skip: a row
whose target is `ignore_index` adds 0 and gets zero gradient; "mean" divides by the rows kept
(NaN, torch's 0/0, when there are none).
"""

import numpy as np

from .softmax import check_temperature, log_softmax

__all__ = ["DIVERGENCES", "divergence_rows", "distillation", "distillation_backward", "linear_distillation",
           "linear_distillation_backward"]

DIVERGENCES = ("kl", "reverse_kl", "jsd")
REDUCTIONS = ("none", "mean", "sum")


def _prepared(student, teacher, divergence, beta, temperature, target, ignore_index):
    """(log p_s, log p_t as (N, V), kept rows (N,), the rows' shape)."""
    check_temperature(temperature)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1) for the JSD, got {beta}")
    zs = np.asarray(student, dtype=np.float64) / temperature
    zt = np.asarray(teacher, dtype=np.float64) / temperature
    if zs.shape != zt.shape or zs.ndim == 0:
        raise ValueError(f"student and teacher must share one shape (..., V), got {zs.shape} and {zt.shape}")
    row_shape = zs.shape[:-1]
    kept = np.ones(row_shape, dtype=bool) if target is None else np.asarray(target) != ignore_index
    v = zs.shape[-1]
    return (log_softmax(zs.reshape(-1, v), axis=-1), log_softmax(zt.reshape(-1, v), axis=-1), kept.reshape(-1),
            row_shape)


def _kl_terms(log_p, log_q):
    """p (log p - log q) per class, 0 where p = 0 (NaN kept where log p is NaN)."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), np.where(np.isnan(p), np.nan, 0.0))


def _jsd_parts(ls, lt, beta):
    """(log m, KL(p_t || m) per row, KL(p_s || m) per row)."""
    with np.errstate(divide="ignore"):
        log_m = np.logaddexp(np.log(beta) + lt, np.log1p(-beta) + ls)
    return log_m, _kl_terms(lt, log_m).sum(-1), _kl_terms(ls, log_m).sum(-1)


def divergence_rows(student, teacher, divergence="kl", beta=0.5, temperature=1.0):
    """Each row's divergence, shaped like the logits without V (no row skipped)."""
    ls, lt, _, row_shape = _prepared(student, teacher, divergence, beta, temperature, None, -100)
    if divergence == "kl":
        rows = _kl_terms(lt, ls).sum(-1)
    elif divergence == "reverse_kl":
        rows = _kl_terms(ls, lt).sum(-1)
    else:
        _, kl_t, kl_s = _jsd_parts(ls, lt, beta)
        rows = beta * kl_t + (1 - beta) * kl_s
    return rows.reshape(row_shape)


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def distillation(student, teacher, divergence="kl", beta=0.5, temperature=1.0, target=None, ignore_index=-100,
                 reduction="mean"):
    """The divergence, reduced as `reduction` says (per row, the logits' shape without V, for "none")."""
    _check_reduction(reduction)
    _, _, kept, row_shape = _prepared(student, teacher, divergence, beta, temperature, target, ignore_index)
    rows = np.where(kept, divergence_rows(student, teacher, divergence, beta, temperature).reshape(-1), 0.0)
    if reduction == "none":
        return rows.reshape(row_shape)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / kept.sum() if kept.sum() else np.float64(np.nan)


def distillation_backward(student, teacher, grad_output=1.0, divergence="kl", beta=0.5, temperature=1.0, target=None,
                          ignore_index=-100, reduction="mean"):
    """(d loss / d student, d loss / d teacher), shaped like the logits, given the incoming gradient
    of the reduced loss (per row for "none")."""
    _check_reduction(reduction)
    ls, lt, kept, row_shape = _prepared(student, teacher, divergence, beta, temperature, target, ignore_index)
    ps, pt = np.exp(ls), np.exp(lt)
    with np.errstate(invalid="ignore"):
        if divergence == "kl":
            k = _kl_terms(lt, ls).sum(-1, keepdims=True)
            grad_s, grad_t = ps - pt, np.where(pt > 0, pt * (lt - ls - k), 0.0)
        elif divergence == "reverse_kl":
            k = _kl_terms(ls, lt).sum(-1, keepdims=True)
            grad_s, grad_t = np.where(ps > 0, ps * (ls - lt - k), 0.0), pt - ps
        else:
            log_m, kl_t, kl_s = _jsd_parts(ls, lt, beta)
            grad_s = (1 - beta) * np.where(ps > 0, ps * (ls - log_m - kl_s[:, None]), 0.0)
            grad_t = beta * np.where(pt > 0, pt * (lt - log_m - kl_t[:, None]), 0.0)
    # np.where above drops the NaN of a NaN row (p = NaN is not > 0): keep it.
    bad = (np.isnan(ps) | np.isnan(pt)).any(-1, keepdims=True)
    grad_s, grad_t = (np.where(bad, np.nan, g) for g in (grad_s, grad_t))
    if reduction == "none":
        g = np.asarray(grad_output, dtype=np.float64).reshape(-1)
    elif reduction == "sum":
        g = np.full(len(kept), float(grad_output))
    else:
        g = np.full(len(kept), float(grad_output) / kept.sum() if kept.sum() else np.nan)
    g = g[:, None] / temperature
    shape = np.shape(student)
    with np.errstate(invalid="ignore"):
        # An ignored row's loss is the constant 0: its gradient is 0, NaN rows included.
        return tuple(np.where(kept[:, None], g * grad, 0.0).reshape(shape) for grad in (grad_s, grad_t))


def _linear_logits(hidden, weight, bias, logits):
    """(hidden as (N, H), logits as (N, V)) in float64; `logits`, when given, stands in for
    hidden @ weight.T + bias (the tests pass them as the unfused composition rounds them)."""
    h = np.asarray(hidden, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if logits is None:
        logits = h @ w.T + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    return h.reshape(-1, w.shape[1]), np.asarray(logits, dtype=np.float64).reshape(-1, w.shape[0])


def linear_distillation(student_hidden, student_weight, teacher_hidden, teacher_weight, student_bias=None,
                        teacher_bias=None, student_logits=None, teacher_logits=None, **options):
    """`distillation` of the two models' logits, hidden @ weight.T + bias each (options: divergence,
    beta, temperature, target, ignore_index, reduction; "none" is shaped like the hidden states
    without H)."""
    _, zs = _linear_logits(student_hidden, student_weight, student_bias, student_logits)
    _, zt = _linear_logits(teacher_hidden, teacher_weight, teacher_bias, teacher_logits)
    target = options.pop("target", None)
    rows = distillation(zs, zt, target=None if target is None else np.asarray(target).reshape(-1), **options)
    return rows.reshape(np.shape(student_hidden)[:-1]) if options.get("reduction") == "none" else rows


def linear_distillation_backward(student_hidden, student_weight, teacher_hidden, teacher_weight, grad_output=1.0,
                                 student_bias=None, teacher_bias=None, student_logits=None, teacher_logits=None,
                                 **options):
    """((d student hidden, d student weight, d student bias), (the teacher's three)):
    d hidden = d logits @ weight, d weight = d logits.T @ hidden, d bias = d logits summed over tokens."""
    hs, zs = _linear_logits(student_hidden, student_weight, student_bias, student_logits)
    ht, zt = _linear_logits(teacher_hidden, teacher_weight, teacher_bias, teacher_logits)
    target = options.pop("target", None)
    grad = np.asarray(grad_output, dtype=np.float64)
    grad = grad.reshape(-1) if options.get("reduction") == "none" else grad
    dzs, dzt = distillation_backward(zs, zt, grad, target=None if target is None else np.asarray(target).reshape(-1),
                                     **options)
    out = []
    for h, w, dz, hidden in ((hs, student_weight, dzs, student_hidden), (ht, teacher_weight, dzt, teacher_hidden)):
        w = np.asarray(w, dtype=np.float64)
        out.append(((dz @ w).reshape(np.shape(hidden)), dz.T @ h, dz.sum(0)))
    return tuple(out)
