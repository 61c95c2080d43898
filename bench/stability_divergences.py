"""The stability study's divergence cases: distillation_kl and distillation_jsd of a student's
logits from a teacher's, through the benchmark's providers, against the exact answer.

Each case is a pair of (rows, cols) logits built for a dtype. A provider's op is the mean over the
rows it gets, so it gets all four rows at once: its forward is compared with the exact mean of the
four rows' divergences, its gradient times 4 (exact in binary) with each row's exact gradient. A
row with an infinite or NaN answer makes the mean infinite or NaN, so the cases that hold one
hold nothing else that could hide behind it.

Exact answers: mpmath at 50 digits (bench/stability.py's EXACT_DIGITS) for finite and -inf
logits; rows with NaN or +inf take the float64 reference's NaN, as torch gives.
"""

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import torch

from softlight import reference as ref

from . import ops

__all__ = ["OPS", "CATALOGUE", "QUICK", "Case", "run_cases"]

OPS = ("distillation_kl", "distillation_jsd")
ROWS, COLS = 4, 48
INF = float("inf")


@dataclass
class Case:
    """Student and teacher rows built for a dtype (float64 values the dtype holds exactly)."""

    name: str
    build: callable  # (dtype, generator) -> (student, teacher) float64 arrays (ROWS, cols)
    temperature: float = 1.0
    notes: str = ""
    small: bool = True  # small enough for the 50-digit exact answer


def _rounded(x, dtype):
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype).double().numpy()


def _random(scale, dtype, g, cols=COLS):
    x = torch.randn(ROWS, cols, generator=g, dtype=torch.float64).numpy() * scale
    big = torch.finfo(dtype).max
    return _rounded(np.clip(x, -big, big), dtype)


def _pair(scale_of):
    def build(dtype, g):
        return _random(scale_of(dtype), dtype, g), _random(scale_of(dtype), dtype, g)

    return build


def _nearly_equal(dtype, g):
    """Teachers a few ulps of the dtype away from the students, one row with an offset of 100."""
    s = _random(3.0, dtype, g)
    t = s + np.abs(s) * torch.finfo(dtype).eps * 4 * torch.randn(s.shape, generator=g, dtype=torch.float64).numpy()
    t[1] += 100.0
    return s, _rounded(t, dtype)


def _masked(dtype, g):
    """Row 0: the same classes -inf in both; 1: a one-hot teacher; 2: the teacher masked on half its
    classes (KL(p_t || p_s) finite); 3: both one-hot on the same class (divergence 0)."""
    s, t = _random(3.0, dtype, g), _random(3.0, dtype, g)
    s[0, :20] = t[0, :20] = -INF
    t[1, :] = -INF
    t[1, 7] = 1.0
    t[2, ::2] = -INF
    s[3, :] = t[3, :] = -INF
    s[3, 5], t[3, 5] = 2.0, -3.0
    return s, t


def _student_masked(dtype, g):
    """The student masked where the teacher is not: KL(p_t || p_s) = +inf, the exact answer; the
    JSD stays finite."""
    s, t = _random(3.0, dtype, g), _random(3.0, dtype, g)
    s[:, :10] = -INF
    return s, t


def _near_max(dtype, g):
    big = torch.finfo(dtype).max
    s, t = _random(3.0, dtype, g), _random(3.0, dtype, g)
    s[:, 0], t[:, 1] = big, big
    s[:, 2], t[:, 2] = -big, big * 0.5
    return s, t


def _spread_near_max(dtype, g):
    """Logits within a small spread of a quarter of the dtype's largest value: x / T overflows at
    T = 0.05 where x - max does not."""
    top = torch.finfo(dtype).max / 4
    spread = top / 64
    return (_rounded(top - spread * np.abs(_random(1.0, torch.float64, g)), dtype),
            _rounded(top - spread * np.abs(_random(1.0, torch.float64, g)), dtype))


def _fully_masked(dtype, g):
    s, t = _random(3.0, dtype, g), _random(3.0, dtype, g)
    s[1] = -INF
    t[2] = -INF
    return s, t


def _identical(dtype, g):
    s = _random(3.0, dtype, g)
    return s, s.copy()


def _long_rows(dtype, g):
    return _random(4.0, dtype, g, cols=262144), _random(4.0, dtype, g, cols=262144)


CATALOGUE = [
    Case("pair scale 1", _pair(lambda d: 1.0)),
    Case("pair scale 30", _pair(lambda d: 30.0)),
    Case("pair scale max/4", _pair(lambda d: torch.finfo(d).max / 4), notes="a quarter of the dtype's largest value"),
    Case("pair near max", _near_max, notes="logits at the dtype's largest value and its negative"),
    Case("pair nearly equal", _nearly_equal, notes="teachers a few ulps from the students: the divergence is tiny"),
    Case("pair identical", _identical, notes="the divergence is exactly 0"),
    Case("pair masked and one-hot", _masked, notes="-inf in both, a one-hot teacher, half the teacher masked"),
    Case("pair student masked", _student_masked, notes="KL(p_t || p_s) = +inf exactly; the JSD is finite"),
    Case("pair temperature 0.05 near max/4", _spread_near_max, temperature=0.05,
         notes="x / T overflows the dtype; x - max does not"),
    Case("pair fully masked rows", _fully_masked, notes="a row all -inf in one input: NaN, as torch"),
    Case("pair long rows 262144", _long_rows, small=False),
]
QUICK = {"pair scale max/4", "pair nearly equal", "pair masked and one-hot"}


# ---------------------------------------------------------------------------------------------
# Exact answers


def _mp_row(s_row, t_row, T, op):
    """(divergence, its gradient in the student's logits) of one row, 50 digits; None where a row
    has no finite logit (its answer is NaN)."""
    zs = [mpmath.mpf(float(v)) / T for v in s_row]
    zt = [mpmath.mpf(float(v)) / T for v in t_row]

    def log_probs(z):
        live = [v for v in z if v != -mpmath.inf]
        if not live:
            return None
        m = max(live)
        lse = m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in live))
        return [v - lse for v in z]

    ls, lt = log_probs(zs), log_probs(zt)
    if ls is None or lt is None:
        return None
    ps, pt = [mpmath.exp(v) for v in ls], [mpmath.exp(v) for v in lt]
    if op == "distillation_kl":
        if any(a > 0 and b == 0 for a, b in zip(pt, ps)):
            return mpmath.inf, [(b - a) / T for a, b in zip(pt, ps)]
        kl = mpmath.fsum(a * (la - lb) for a, b, la, lb in zip(pt, ps, lt, ls) if a > 0)
        return kl, [(b - a) / T for a, b in zip(pt, ps)]
    beta = mpmath.mpf(ops.JSD_BETA)
    log_m = [mpmath.log(beta * a + (1 - beta) * b) if a + b > 0 else -mpmath.inf for a, b in zip(pt, ps)]
    kl_t = mpmath.fsum(a * (la - lm) for a, la, lm in zip(pt, lt, log_m) if a > 0)
    kl_s = mpmath.fsum(b * (lb - lm) for b, lb, lm in zip(ps, ls, log_m) if b > 0)
    grad = [(1 - beta) * b * (lb - lm - kl_s) / T if b > 0 else mpmath.mpf(0) for b, lb, lm in zip(ps, ls, log_m)]
    return beta * kl_t + (1 - beta) * kl_s, grad


def float64_reference(op, s, t, T, naive=False):
    """(per-row divergences, per-row student gradients) in float64; `naive`: the textbook
    exp(x) / sum exp(x) probabilities and p log(p / q) terms, without the shift by the max."""
    divergence = ops.DIVERGENCE[op]
    if not naive:
        return (ref.divergence_rows(s, t, divergence, ops.JSD_BETA, T),
                ref.distillation_backward(s, t, np.ones(len(s)), divergence, ops.JSD_BETA, T,
                                                       reduction="none")[0])
    with np.errstate(all="ignore"):
        ps, pt = ref.naive_softmax(s, temperature=T), ref.naive_softmax(t, temperature=T)
        if divergence == "kl":
            rows = np.sum(np.where(pt > 0, pt * np.log(pt / ps), 0.0), -1)
            return rows, (ps - pt) / T
        m = ops.JSD_BETA * pt + (1 - ops.JSD_BETA) * ps
        log_m = np.log(m)
        kl_t = np.sum(np.where(pt > 0, pt * (np.log(pt) - log_m), 0.0), -1)
        kl_s = np.sum(np.where(ps > 0, ps * (np.log(ps) - log_m), 0.0), -1)
        grad = (1 - ops.JSD_BETA) * np.where(ps > 0, ps * (np.log(ps) - log_m - kl_s[:, None]), 0.0) / T
        return ops.JSD_BETA * kl_t + (1 - ops.JSD_BETA) * kl_s, grad


def exact(op, s, t, T, small, digits):
    """(exact mean divergence over the rows, exact per-row student gradients)."""
    rows, grad = float64_reference(op, s, t, T)
    if small:
        with mpmath.workdps(digits):
            for i in range(len(s)):
                if not all(np.all(np.isfinite(row) | np.isneginf(row)) for row in (s[i], t[i])):
                    continue  # NaN or +inf: NaN, as the float64 formula gives
                found = _mp_row(s[i], t[i], T, op)
                if found is None:
                    continue  # a row all -inf: NaN (torch), as float64 gives
                rows[i] = float(found[0])
                grad[i] = [float(v) for v in found[1]]
    with np.errstate(invalid="ignore"):
        return np.array(math.fsum(rows) / len(rows)) if np.all(np.isfinite(rows)) else np.array(np.sum(rows)), grad


# ---------------------------------------------------------------------------------------------
# Providers


def run_provider(provider, op, s, t, T):
    """(the mean divergence, the per-row student gradient = that of the mean times the rows) of a
    benchmark provider on the case's rows, in its own output dtypes."""
    impl = provider.implementation(op)
    if "temperature" in impl.options:
        fn = lambda a, b: impl.fn(a, b, temperature=T)  # noqa: E731
    else:
        fn = lambda a, b: impl.fn(a / T, b / T)  # noqa: E731
    inputs = ops.Inputs(op, s.clone().requires_grad_(), teacher=t)
    out = inputs.call(fn)
    (grad,) = torch.autograd.grad(out, inputs.differentiable)
    return out.detach().reshape(()), grad * len(s)


def run_cases(measure, providers_used, dtypes, cases=None, device="cpu", seed=0, digits=50):
    """Records of the study's table (bench/stability.py) for every divergence case, op, direction,
    dtype and provider. `measure(values, exact, dtype)` is the study's error measure."""
    from . import providers

    records = []
    for case in CATALOGUE:
        if cases is not None and case.name not in cases:
            continue
        for dtype_name, dtype in dtypes.items():
            g = torch.Generator().manual_seed(seed)
            s64, t64 = case.build(dtype, g)
            s = torch.from_numpy(s64).to(dtype).to(device)
            t = torch.from_numpy(t64).to(dtype).to(device)
            for op in OPS:
                exact_fwd, exact_bwd = exact(op, s64, t64, case.temperature, case.small, digits)
                results = {}
                for label, naive in (("naive reference (float64)", True), ("stable reference (float64)", False)):
                    rows, grad = float64_reference(op, s64, t64, case.temperature, naive)
                    with np.errstate(invalid="ignore"):
                        results[label] = [(torch.float64, np.array(np.mean(rows))), (torch.float64, grad)]
                for name in providers_used:
                    fwd, bwd = run_provider(providers.BUILTIN[name], op, s, t, case.temperature)
                    results[name] = [(fwd.dtype, fwd.double().cpu().numpy()), (bwd.dtype, bwd.double().cpu().numpy())]
                for provider, outputs in results.items():
                    for direction, (out_dtype, values), exact_values in zip(("forward", "backward"), outputs,
                                                                            (exact_fwd, exact_bwd)):
                        m = measure(values, exact_values, out_dtype)
                        records.append(dict(case=case.name, op=op, direction=direction, dtype=dtype_name,
                                            provider=provider, out_dtype=str(out_dtype).removeprefix("torch."),
                                            rows=s64.shape[0], cols=s64.shape[1], temperature=case.temperature,
                                            exact="mpmath" if case.small else "float64", **m, notes=case.notes))
    return records
