"""PyTorch's own OpInfo sample inputs (softmax, log_softmax, nn.functional.cross_entropy, every
variant) through softlight, against torch computed in float64: values and gradients.

Each sample is one test, named by what it holds, so a failing sample shows alone. A sample torch
refuses (probability targets with an ignore_index that names a class) must be refused by softlight
too (refused_by_both). The samples are torch's, not ours: shapes from 0-d to 5-d, empty tensors,
dim=0, dtype=, probability targets that need a gradient, negative class weights.
"""

import random

import pytest
import torch

import softlight
from softlight.reference import TOLERANCE, relative_error
from support import dtype_name, incoming_gradient, to_numpy

# PyTorch's test internals import expecttest (the `test` extra installs it); a GPU machine without a
# package index may lack it, and then this module skips rather than stopping the whole run.
pytest.importorskip("expecttest", reason="PyTorch's OpInfo database needs expecttest (pip install expecttest)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
OPINFOS = [op for op in op_db if op.name in ("softmax", "log_softmax", "nn.functional.cross_entropy")]


def describe(sample) -> str:
    def show(v):
        if isinstance(v, torch.Tensor):
            kind = "probabilities" if v.is_floating_point() else "indices"
            return f"{kind}{tuple(v.shape)}" if v.dim() else f"{v.item()}"
        return str(v).removeprefix("torch.")

    parts = [f"input{tuple(sample.input.shape)}", *map(show, sample.args)]
    parts += [f"{k}={'tensor' if k == 'weight' else show(v)}" for k, v in sample.kwargs.items()]
    return ",".join(parts)


def samples(op, device, dtype, requires_grad=False):
    """The OpInfo's samples, drawn from the test's own random state (fresh every run, replayable with
    SOFTLIGHT_SEED). Not through op.sample_inputs, which reseeds every generator with a constant
    before each sample (so every run would see the same numbers) and walks the call stack each
    time (a tenth of a second under pytest)."""
    return list(op.sample_inputs_func(op, device, dtype, requires_grad))


def sample_params():
    params = []
    for op in OPINFOS:
        for dtype in DTYPES:
            with torch.random.fork_rng(devices=[]):  # collection leaves the tests' random numbers alone
                drawn = samples(op, "cpu", dtype)
            for i, sample in enumerate(drawn):
                name = f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}"
                params.append(pytest.param(op, dtype, i, id=f"{name}-{dtype_name(dtype)}-{describe(sample)}"))
    return params


def softlight_call(op, sample):
    """The sample as a call of softlight's function with softlight's signature; unknown keywords
    fail loudly (a new kind of sample must be mapped here, not passed through blindly)."""
    kwargs = dict(sample.kwargs)
    if op.name in ("softmax", "log_softmax"):
        (dim,) = sample.args
        dtype = kwargs.pop("dtype", None)
        assert not kwargs, f"unmapped {op.name} keywords {sorted(kwargs)}"
        fn = getattr(softlight, op.name)
        return lambda x: fn(x, dim, dtype=dtype)
    (target,) = sample.args
    opts = {k: kwargs.pop(k) for k in ("weight", "ignore_index", "reduction", "label_smoothing") if k in kwargs}
    assert not kwargs, f"unmapped cross_entropy keywords {sorted(kwargs)}"
    return lambda x: softlight.cross_entropy(x, target, opts.get("weight"), opts.get("ignore_index", -100),
                                             opts.get("reduction", "mean"), opts.get("label_smoothing", 0.0))


def refused_by_both(op, sample) -> bool:
    """Probability targets with an ignore_index that names a class: torch raises, and so do we."""
    if op.name != "nn.functional.cross_entropy" or not sample.args[0].is_floating_point():
        return False
    if sample.kwargs.get("ignore_index", -100) < 0:
        return False
    with pytest.raises(RuntimeError, match="ignore_index"):
        op.op(sample.input, *sample.args, **sample.kwargs)
    with pytest.raises(ValueError, match="ignore_index"):
        softlight_call(op, sample)(sample.input)
    return True


def float64_twin(t):
    """t exactly, in float64, a leaf that needs a gradient where t does (indices as they are)."""
    if not t.is_floating_point():
        return t
    return t.detach().double().requires_grad_(t.requires_grad)


def reduction_condition(op, sample, x64, target64):
    """How much a cross-entropy reduction may amplify rounding: sum |terms| / |sum of terms| over
    the weighted per-class losses, plus the same for a mean's denominator. OpInfo draws class
    weights in [-9, 9], so terms of both signs can cancel, and then any float32 sum (torch's too)
    is only as good as this number; it is 1 (2 for a mean) for weights >= 0."""
    reduction = sample.kwargs.get("reduction", "mean")
    if op.name != "nn.functional.cross_entropy" or reduction == "none":
        return 1.0
    assert x64.dim() >= 2, "a sample without a batch dim: map it here"
    weight = sample.kwargs.get("weight")
    w = torch.ones(x64.shape[1], dtype=torch.float64, device=x64.device) if weight is None else weight.double()
    w = w.reshape([-1 if d == 1 else 1 for d in range(x64.dim())]).expand_as(x64)
    logp = torch.log_softmax(x64.detach(), 1)
    if target64.is_floating_point():
        terms, denominator = -(w * target64.detach() * logp), torch.ones(())  # torch's mean divides by N
    else:
        kept = (target64 != sample.kwargs.get("ignore_index", -100)).unsqueeze(1)
        t = torch.where(kept, target64.unsqueeze(1), 0)
        denominator = torch.gather(w, 1, t) * kept
        terms = -denominator * torch.gather(logp, 1, t)
    condition = float(terms.abs().sum() / terms.sum().abs())
    if reduction == "mean":
        condition += float(denominator.abs().sum() / denominator.sum().abs())
    return condition


@pytest.mark.parametrize("op,dtype,index", sample_params())
def test_sample_matches_torch_in_float64(op, dtype, index, device):
    random.seed(torch.initial_seed())  # the samplers also draw from Python's random
    sample = samples(op, device, dtype, requires_grad=True)[index]
    if refused_by_both(op, sample):
        return
    # torch's float64 answer on the same values: dtype= rounds the input to that dtype first.
    out_dtype = sample.kwargs.get("dtype") or dtype
    x64 = float64_twin(sample.input.to(out_dtype))
    args64 = [float64_twin(a) if isinstance(a, torch.Tensor) else a for a in sample.args]
    kwargs64 = {k: float64_twin(v) if isinstance(v, torch.Tensor) else v for k, v in sample.kwargs.items()
                if k != "dtype"}
    want = op.op(x64, *args64, **kwargs64)
    # What needs a gradient: the input, and a probability target (OpInfo asks for its gradient).
    inputs = [sample.input] + [a for a in sample.args if isinstance(a, torch.Tensor) and a.requires_grad]
    inputs64 = [x64] + [a for a in args64 if isinstance(a, torch.Tensor) and a.requires_grad]

    ours = softlight_call(op, sample)(sample.input)
    torch_own = op.op(sample.input, *sample.args, **sample.kwargs)  # torch in the sample's dtype
    if op.name == "nn.functional.cross_entropy":
        # Difference on purpose (README): the loss is float32 (float64 for float64 logits), where
        # torch rounds it to the logits' dtype; it is held to float32's tolerance, not theirs.
        assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert ours.shape == torch_own.shape
        tolerance = TOLERANCE[dtype_name(ours.dtype)] * reduction_condition(op, sample, x64, args64[0])
    else:
        assert ours.dtype == torch_own.dtype and ours.shape == torch_own.shape
        tolerance = TOLERANCE[dtype_name(ours.dtype)]
    err = relative_error(to_numpy(ours), to_numpy(want))
    assert err <= tolerance, f"forward: relative error {err:.3e} > {tolerance:.1e}"

    if not sample.input.numel():
        return
    grad_out = incoming_gradient(torch_own)  # in torch's output dtype, then exactly in ours
    got = torch.autograd.grad(ours, inputs, grad_out.to(ours.dtype))
    theirs = torch.autograd.grad(torch_own, inputs, grad_out)
    exact = torch.autograd.grad(want, inputs64, grad_out.double())
    coarser = max(dtype, out_dtype, key=lambda t: TOLERANCE[dtype_name(t)])
    for name, g, t, e in zip(("input", "target"), got, theirs, exact):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        # Low-precision gradients start from rounded values (the output, the incoming gradient)
        # whoever computes them: no worse than torch's own by a factor of 2 plus the tolerance.
        err, torch_err = (relative_error(to_numpy(v), to_numpy(e)) for v in (g, t))
        allowed = 2 * torch_err + TOLERANCE[dtype_name(coarser)]
        assert err <= allowed, f"gradient of {name}: relative error {err:.3e} > {allowed:.3e} (torch's {torch_err:.3e})"
