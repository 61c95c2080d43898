"""`softlight stability`: an adversarial catalogue through the naive reference, the stable
reference, softlight and torch, measured in ulps of each output dtype against the exact answer.

The exact answer is computed with mpmath at 50 digits for the small cases (and float64 is then
itself measured against it, to show where float64 suffices), and with the float64 reference for
the long ones. Every input is first rounded to the dtype under test, so every provider and the
exact answer see the same numbers.

Error measures, per output element:
- ulps: |out - exact| / ulp(exact), the ulp of the provider's output dtype at the exact value;
  an output equal to the exact answer rounded to that dtype (including a correct overflow to
  inf or underflow to 0) counts 0;
- non-finite where finite: outputs that are inf or NaN although the exact answer, rounded to the
  output dtype, is finite; the goal is that softlight has none;
- relative error ||out - exact|| / ||exact|| over the finite exact entries.

The divergences (distillation_kl, distillation_jsd: a student's logits against a teacher's) have
cases of their own, pairs of logits (bench/stability_divergences.py), in the same table.
"""

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import pandas as pd
import torch

import softlight
from softlight import reference as ref

from . import ops, providers, stability_divergences
from .spec import DISTILLATION_OPS, ROW_OPS

DTYPES = {name: ops.TORCH_DTYPES[name] for name in ("float32", "float16", "bfloat16")}
# The row ops the catalogue covers (token_logprobs' outputs are one number a row: not yet; the
# divergences, two inputs each, have a catalogue of their own: bench/stability_divergences.py).
OPS = tuple(op for op in ROW_OPS if op != "token_logprobs" and op not in DISTILLATION_OPS)
MANTISSA_BITS = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
EXACT_DIGITS = 50
INF = float("inf")


# ---------------------------------------------------------------------------------------------
# The catalogue


@dataclass
class Case:
    """Rows of logits built for a dtype (as float64 values the dtype holds exactly), and for
    cross-entropy the target class of each row."""

    name: str
    build: callable  # (dtype, generator) -> (x float64 array, target int array)
    ops: tuple = OPS
    temperature: float = 1.0
    notes: str = ""
    small: bool = True  # small enough for the 50-digit exact answer


def _rounded(x, dtype):
    """float64 array -> the same values rounded to dtype (overflow to inf), back as float64."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype).double().numpy()


def _random(rows, cols, scale, dtype, g, clip=True):
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64).numpy() * scale
    big = torch.finfo(dtype).max
    return _rounded(np.clip(x, -big, big) if clip else x, dtype)


def _targets(x, g):
    return torch.randint(0, x.shape[1], (x.shape[0],), generator=g).numpy()


def _scaled(scale_of):
    def build(dtype, g):
        x = _random(4, 48, scale_of(dtype), dtype, g)
        return x, _targets(x, g)

    return build


def _with(fn):
    def build(dtype, g):
        x = _random(4, 48, 3.0, dtype, g)
        t = _targets(x, g)
        fn(x, t, dtype)
        return _rounded(x, dtype), t

    return build


def _ties(x, t, dtype):
    x[:, :5] = x.max() + 1.0  # five-way tie at the max in every row
    x[3] = 2.5  # a constant row


def _masked_half(x, t, dtype):
    x[:, ::2] = -INF
    t[:] = 1


def _masked_rows(x, t, dtype):
    x[1] = -INF
    x[3] = -INF


def _pos_inf(x, t, dtype):
    x[0, 3] = INF


def _nan(x, t, dtype):
    x[2, 5] = math.nan


def _near_max(x, t, dtype):
    big = torch.finfo(dtype).max
    x[:, 0] = big
    x[:, 1] = big * 0.999
    x[:, 2] = -big
    x[1, 3] = big


def _subnormal(dtype, g):
    tiny = torch.finfo(dtype).smallest_normal
    x = _random(4, 48, tiny / 8, dtype, g)
    return x, _targets(x, g)


def _single_column(dtype, g):
    x = _random(6, 1, 5.0, dtype, g)
    return x, np.zeros(6, dtype=np.int64)


def _long_rows(dtype, g):
    x = _random(2, 262144, 4.0, dtype, g)
    return x, _targets(x, g)


def _target_on(where):
    def build(dtype, g):
        x = _random(4, 48, 6.0, dtype, g)
        if where == "largest":
            t = x.argmax(1)
        elif where == "smallest":
            t = x.argmin(1)
        else:
            t = _targets(x, g)
            x[np.arange(4), t] = -INF
        return x, t

    return build


def _confident(dtype, g):
    x = _random(4, 48, 1.0, dtype, g)
    t = _targets(x, g)
    x[np.arange(4), t] = [12.0, 18.0, 24.0, 30.0]  # p_t = 1 - r with r from 1e-4 down to 1e-12
    return _rounded(x, dtype), t


CATALOGUE = [
    Case("scale 1e-3", _scaled(lambda d: 1e-3)),
    Case("scale 1", _scaled(lambda d: 1.0)),
    Case("scale 30", _scaled(lambda d: 30.0)),
    Case("scale 1e3", _scaled(lambda d: 1e3)),
    Case("scale 1e4", _scaled(lambda d: 1e4), notes="fp16 clips at 65504"),
    Case("scale 1e30", _scaled(lambda d: 1e30), notes="fp16 clips at 65504"),
    Case("scale max/4", _scaled(lambda d: torch.finfo(d).max / 4), notes="a quarter of the dtype's largest value"),
    Case("near max", _with(_near_max), notes="fp16 65504, bf16 3.39e38, fp32 3.40e38"),
    Case("ties and constant row", _with(_ties)),
    Case("single column", _single_column),
    Case("half masked (-inf)", _with(_masked_half)),
    Case("fully masked rows", _with(_masked_rows), notes="torch's answer is NaN"),
    Case("+inf entry", _with(_pos_inf), notes="torch's answer is NaN"),
    Case("NaN entry", _with(_nan)),
    Case("subnormal logits", _subnormal),
    Case("temperature 0.05, scale max/4", _scaled(lambda d: torch.finfo(d).max / 4), temperature=0.05,
         notes="x / T overflows the dtype; x - max does not"),
    Case("confident rows", _confident, notes="p_t = 1 - r, r down to 1e-12"),
    Case("target on largest", _target_on("largest"), ops=("cross_entropy",)),
    Case("target on smallest", _target_on("smallest"), ops=("cross_entropy",)),
    Case("target on -inf logit", _target_on("-inf"), ops=("cross_entropy",), notes="loss is +inf"),
    Case("long rows 262144", _long_rows, small=False),
]
QUICK = {"scale 1", "scale max/4", "near max", "fully masked rows", "+inf entry", "confident rows",
         "target on -inf logit", "temperature 0.05, scale max/4"} | stability_divergences.QUICK
# Every case's name, the divergences' included (--case takes any of them).
NAMES = [c.name for c in CATALOGUE] + [c.name for c in stability_divergences.CATALOGUE]


# ---------------------------------------------------------------------------------------------
# Exact answers


def _mp_row(x_row, T, t, op, dy_row):
    """Forward and backward of one row in 50-digit arithmetic (NaN/inf rows follow torch's
    formulas; callers only send finite rows here)."""
    z = [mpmath.mpf(float(v)) / T for v in x_row]
    live = [v for v in z if v != -mpmath.inf]
    if not live:
        return None
    m = max(live)
    e = [mpmath.exp(v - m) if v != -mpmath.inf else mpmath.mpf(0) for v in z]
    s = mpmath.fsum(e)
    p = [v / s for v in e]
    lse = m + mpmath.log(s)
    if op == "softmax":
        dot = mpmath.fsum(a * b for a, b in zip(dy_row, p))
        return p, [pi * (g - dot) / T for pi, g in zip(p, dy_row)]
    if op == "log_softmax":
        total = mpmath.fsum(dy_row)
        return [v - lse for v in z], [(g - pi * total) / T for pi, g in zip(p, dy_row)]
    loss = lse - z[t]
    return [loss], [(pi - (1 if j == t else 0)) / T for j, pi in enumerate(p)]


def exact(op, x, t, dy, T, small):
    """(forward, backward) exact answers; forward of cross-entropy is the per-row loss."""
    fwd64, bwd64 = float64_reference(op, x, t, dy, T)
    if not small:
        return fwd64, bwd64
    fwd, bwd = fwd64.copy(), bwd64.copy()
    with mpmath.workdps(EXACT_DIGITS):
        for i in range(x.shape[0]):
            if not np.all(np.isfinite(x[i]) | np.isneginf(x[i])):
                continue  # NaN or +inf: the answer is NaN, as the float64 formula gives
            row = _mp_row(x[i], T, int(t[i]), op, [mpmath.mpf(float(v)) for v in dy[i]])
            if row is None:
                continue  # entirely -inf: NaN (torch), as float64 gives
            f, b = row
            if op == "cross_entropy":
                fwd[i] = float(f[0])
            else:
                fwd[i] = [float(v) for v in f]
            bwd[i] = [float(v) for v in b]
    return fwd, bwd


def float64_reference(op, x, t, dy, T, naive=False):
    if op == "cross_entropy":
        if naive:
            with np.errstate(all="ignore"):
                p = ref.naive_softmax(x, temperature=T)
                rows = np.arange(len(t))
                loss = -np.log(p[rows, t])
                grad = p.copy()
                grad[rows, t] -= 1.0
                return loss, grad / T
        return (ref.cross_entropy(x, t, reduction="none", temperature=T),
                ref.cross_entropy_backward(x, t, np.ones(len(t)), reduction="none", temperature=T))
    fwd = {"softmax": ref.naive_softmax if naive else ref.softmax,
           "log_softmax": ref.naive_log_softmax if naive else ref.log_softmax}[op]
    bwd = {"softmax": ref.softmax_backward, "log_softmax": ref.log_softmax_backward}[op]
    y = fwd(x, temperature=T)
    with np.errstate(all="ignore"):
        return y, bwd(y, dy, temperature=T)


# ---------------------------------------------------------------------------------------------
# Providers: the benchmark's own (bench/providers.py), run through its Inputs (bench/ops.py).

PROVIDERS = ("softlight", "torch")


def run_provider(provider, op, x, t, dy, T):
    """(forward, backward) of a benchmark provider on the case's rows, as tensors in its own output
    dtypes. A provider's cross_entropy is the mean over the rows it gets, so it gets one row at a
    time: that row's loss, and its gradient for an incoming gradient of 1."""
    fn = ops.with_temperature(provider.implementation(op), T)
    if op != "cross_entropy":
        inputs = ops.Inputs(op, x.clone().requires_grad_(), dy=dy)
        out = inputs.call(fn)
        (grad,) = torch.autograd.grad(out, inputs.differentiable, inputs.dy)
        return out.detach(), grad
    losses, grads = [], []
    for i in range(x.shape[0]):
        inputs = ops.Inputs(op, x[i:i + 1].clone().requires_grad_(), target=t[i:i + 1])
        out = inputs.call(fn)
        losses.append(out.detach().reshape(1))
        grads += torch.autograd.grad(out, inputs.differentiable)
    return torch.cat(losses), torch.cat(grads)


# ---------------------------------------------------------------------------------------------
# Measures


def ulp(values, dtype):
    """The spacing of `dtype` at each |value| (its smallest subnormal at 0 and below)."""
    bits = MANTISSA_BITS[dtype]
    min_exp = math.frexp(torch.finfo(dtype).smallest_normal)[1] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.abs(values)))
    e = np.where(np.isfinite(e), np.maximum(e, min_exp), min_exp)
    return np.ldexp(1.0, (e - bits).astype(int))


def measure(out, exact_values, dtype):
    """max/median ulps, relative error and non-finite-where-finite count of `out` (float64
    values of a `dtype` output) against the exact answer."""
    out = np.asarray(out, dtype=np.float64).ravel()
    exact_values = np.asarray(exact_values, dtype=np.float64).ravel()
    best = _rounded(exact_values, dtype)
    same = (out == best) | (np.isnan(out) & np.isnan(best))
    with np.errstate(all="ignore"):
        ulps = np.where(same, 0.0, np.abs(out - exact_values) / ulp(exact_values, dtype))
    ulps = np.where(np.isnan(ulps), INF, ulps)
    bad = int(np.sum(~np.isfinite(out) & np.isfinite(best)))
    finite = np.isfinite(exact_values)
    if np.any(finite):
        rel = ref.relative_error(out[finite], exact_values[finite]) if np.all(np.isfinite(out[finite])) else INF
    else:
        rel = 0.0 if np.all(same) else INF
    return dict(max_ulp=float(np.max(ulps)) if ulps.size else 0.0,
                median_ulp=float(np.median(ulps)) if ulps.size else 0.0,
                rel_error=rel, nonfinite_where_finite=bad)


def run_study(dtypes=None, cases=None, device=None, seed=0):
    """One row per case, op, direction, dtype and provider."""
    device = device or ("cpu" if softlight.INTERPRETED else "cuda")
    records = []
    for case in CATALOGUE:
        if cases is not None and case.name not in cases:
            continue
        for dtype_name in dtypes or DTYPES:
            dtype = DTYPES[dtype_name]
            g = torch.Generator().manual_seed(seed)
            x64, t64 = case.build(dtype, g)
            dy64 = _rounded(torch.randn(x64.shape, generator=g, dtype=torch.float64).numpy(), dtype)
            x = torch.from_numpy(x64).to(dtype).to(device)
            t = torch.from_numpy(np.asarray(t64, dtype=np.int64)).to(device)
            dy = torch.from_numpy(dy64).to(dtype).to(device)
            for op in case.ops:
                exact_fwd, exact_bwd = exact(op, x64, t64, dy64, case.temperature, case.small)
                naive = float64_reference(op, x64, t64, dy64, case.temperature, naive=True)
                stable = float64_reference(op, x64, t64, dy64, case.temperature)
                results = {
                    "naive reference (float64)": [(torch.float64, v) for v in naive],
                    "stable reference (float64)": [(torch.float64, v) for v in stable],
                }
                for name in PROVIDERS:
                    fwd, bwd = run_provider(providers.BUILTIN[name], op, x, t, dy, case.temperature)
                    results[name] = [(fwd.dtype, fwd.double().cpu().numpy()), (bwd.dtype, bwd.double().cpu().numpy())]
                for provider, outputs in results.items():
                    for direction, (out_dtype, values), exact_values in zip(("forward", "backward"), outputs,
                                                                            (exact_fwd, exact_bwd)):
                        m = measure(values, exact_values, out_dtype)
                        records.append(dict(case=case.name, op=op, direction=direction, dtype=dtype_name,
                                            provider=provider, out_dtype=str(out_dtype).removeprefix("torch."),
                                            rows=x64.shape[0], cols=x64.shape[1], temperature=case.temperature,
                                            exact="mpmath" if case.small else "float64", **m, notes=case.notes))
    records += stability_divergences.run_cases(measure, PROVIDERS, {name: DTYPES[name] for name in dtypes or DTYPES},
                                               cases, device, seed, EXACT_DIGITS)
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------------------------
# Report

def _fmt_ulps(v):
    if not np.isfinite(v):
        return "inf"
    return f"{v:.3g}" if v < 1e4 else f"{v:.1e}"


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per op, direction, dtype and provider: worst and median ulps over the catalogue, and how
    many outputs were non-finite where the exact answer is finite."""
    g = df.groupby(["op", "direction", "dtype", "provider"], sort=False)
    out = g.agg(max_ulp=("max_ulp", "max"), median_ulp=("median_ulp", "median"),
                nonfinite_where_finite=("nonfinite_where_finite", "sum")).reset_index()
    return out


def markdown(df: pd.DataFrame, title: str) -> str:
    s = summary(df)
    lines = [f"# {title}", "",
             "Every case of the adversarial catalogue (`softlight stability`) through softlight, torch, and the float64 "
             "reference (stable and naive formulas), against the exact answer (mpmath at 50 digits for the small cases, "
             "the float64 reference for the 262144-column rows). Errors are in ulps of each provider's own output dtype "
             "(softlight's cross-entropy loss is float32; torch's has the logits' dtype); an output equal to the exact "
             "answer rounded to that dtype counts 0. *Non-finite* counts outputs that are inf or NaN where the exact "
             "answer, rounded to the output dtype, is finite. The divergences (`distillation_kl`, `distillation_jsd`: "
             "the `pair ...` cases) are each provider's mean over a case's four rows, against the exact mean, and its "
             "gradient times four against each row's exact gradient; softlight's divergences are float32, and torch's "
             "composition upcasts to float32 too.", "",
             "## Summary: worst case over the catalogue", "",
             "| op | direction | dtype | softlight max ulps | softlight median | softlight non-finite | torch max ulps | torch non-finite |",
             "|---|---|---|---|---|---|---|---|"]
    for (op, direction, dtype), part in s.groupby(["op", "direction", "dtype"], sort=False):
        ours = part[part.provider == "softlight"].iloc[0]
        theirs = part[part.provider == "torch"].iloc[0]
        lines.append(f"| {op} | {direction} | {dtype} | {_fmt_ulps(ours.max_ulp)} | {_fmt_ulps(ours.median_ulp)} | "
                     f"{ours.nonfinite_where_finite} | {_fmt_ulps(theirs.max_ulp)} | {theirs.nonfinite_where_finite} |")
    naive = df[(df.provider == "naive reference (float64)") & (df.nonfinite_where_finite > 0)]
    lines += ["", "## Where the naive formula breaks", "",
              "The textbook `exp(x) / sum(exp(x))` (and `log` of it), in float64, gives inf or NaN for these cases "
              "where the exact answer is finite:", ""]
    if len(naive):
        for case, part in naive.groupby("case", sort=False):
            ops = ", ".join(sorted({f"{r.op} {r.direction}" for r in part.itertuples()}))
            lines.append(f"- {case}: {ops} ({part.nonfinite_where_finite.sum()} outputs)")
    else:
        lines.append("- none in this run")
    lines += ["", "## Every case: worst ulps, softlight / torch", ""]
    for dtype, part in df[df.provider.isin(["softlight", "torch"])].groupby("dtype", sort=False):
        cols = list(dict.fromkeys(f"{r.op} {r.direction}" for r in part.itertuples()))
        lines += [f"### {dtype}", "", "| case | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for case, rows in part.groupby("case", sort=False):
            cells = []
            for col in cols:
                op, direction = col.split(" ")
                pick = rows[(rows.op == op) & (rows.direction == direction)]
                if pick.empty:
                    cells.append("")
                    continue
                ours = pick[pick.provider == "softlight"].iloc[0]
                theirs = pick[pick.provider == "torch"].iloc[0]
                flag = lambda r: "!" if r.nonfinite_where_finite else ""  # noqa: E731
                cells.append(f"{_fmt_ulps(ours.max_ulp)}{flag(ours)} / {_fmt_ulps(theirs.max_ulp)}{flag(theirs)}")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["`!`: some output non-finite where the exact answer is finite.", "",
              "Notes on cases:", ""] + [f"- {c.name}: {c.notes}" for c in CATALOGUE + stability_divergences.CATALOGUE
                                        if c.notes]
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r.op, r.direction) for r in df.itertuples()))
    dtypes = list(dict.fromkeys(df.dtype))
    fig, axes = plt.subplots(len(panels), len(dtypes), figsize=(6 * len(dtypes), 2.6 * len(panels)), squeeze=False)
    cases = list(dict.fromkeys(df.case))
    for i, (op, direction) in enumerate(panels):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            part = df[(df.op == op) & (df.direction == direction) & (df.dtype == dtype)]
            for k, provider in enumerate(("softlight", "torch", "naive reference (float64)")):
                rows = part[part.provider == provider].set_index("case").reindex(cases)
                values = rows.max_ulp.replace(np.inf, 1e18).fillna(0).to_numpy() + 1  # ulps + 1 on a log axis
                ax.bar(np.arange(len(cases)) + (k - 1) * 0.27, values, width=0.27, label=provider)
            ax.set_yscale("log")
            ax.set_title(f"{op} {direction}, {dtype}", fontsize=9)
            ax.set_xticks(np.arange(len(cases)))
            ax.set_xticklabels(cases if i == len(panels) - 1 else [], rotation=70, ha="right", fontsize=7)
            ax.axhline(2, color="grey", lw=0.6, ls=":")
            if j == 0:
                ax.set_ylabel("worst ulps + 1")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " (bars at 1e18: inf or NaN where the exact answer is finite)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


PAGE = "stability.md"


def write_report(df: pd.DataFrame, out_dir: str, title: str):
    """stability.csv, stability.md and stability.png in out_dir."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    df.to_csv(os.path.join(out_dir, "stability.csv"), index=False)
    with open(os.path.join(out_dir, PAGE), "w") as f:
        f.write(markdown(df, title))
    plot(df, os.path.join(out_dir, "stability.png"), title)


def device_label() -> str:
    """Where the kernels ran: "interpreter" (Triton's, on the CPU) or the GPU's name."""
    if softlight.INTERPRETED:
        return "interpreter"
    return torch.cuda.get_device_name()
