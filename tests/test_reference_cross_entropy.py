"""The NumPy cross-entropy reference against torch in float64, for every option."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softlight import reference as ref
from support import combo_id


def torch_cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                        temperature=1.0, z_loss=0.0, softcap=None):
    """softlight's definition written with torch ops: torch's cross-entropy on cap(x) / T, plus
    z_loss * LSE**2 for each row kept, reduced like the cross-entropy."""
    y = x if softcap is None else softcap * torch.tanh(x / softcap)
    z = y / temperature
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        lse = torch.logsumexp(z, dim=0 if x.dim() == 1 else 1)
        if target.is_floating_point():
            kept = torch.ones_like(lse)
            denom = kept.sum()
        else:
            kept = (target != ignore_index).to(z.dtype)
            w = weight[target.clamp(0)] if weight is not None else torch.ones_like(lse)
            denom = (w * kept).sum()
        zl = z_loss * lse**2 * kept
        loss = loss + {"none": zl, "sum": zl.sum(), "mean": zl.sum() / denom}[reduction]
    return loss


OPTIONS = [
    {},
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=True),
    dict(weight=True, label_smoothing=0.2),
    dict(weight=True, label_smoothing=0.1, reduction="none"),
    dict(label_smoothing=0.3, reduction="sum"),
    dict(temperature=0.6, z_loss=1e-2),
    dict(softcap=3.0, z_loss=1e-3, weight=True),
    dict(softcap=5.0, temperature=2.0, label_smoothing=0.1, z_loss=1e-3, reduction="none"),
    dict(ignore_index=2, weight=True, label_smoothing=0.05),
]


def make_case(shape, soft, opts, rng=np.random.default_rng()):
    x = rng.standard_normal(shape) * 3
    c = shape[0] if len(shape) == 1 else shape[1]
    row_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    if soft:
        target = rng.random(shape)
        target /= target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        target = rng.integers(0, c, size=row_shape)
        if target.ndim:
            target.reshape(-1)[:: 3] = opts.get("ignore_index", -100)
    opts = dict(opts)
    if opts.get("weight"):
        opts["weight"] = rng.random(c) + 0.1
    else:
        opts.pop("weight", None)
    return x, target, opts


@pytest.mark.parametrize("opts", OPTIONS, ids=combo_id)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "probabilities"])
@pytest.mark.parametrize("shape", [(5, 7), (7,), (3, 6, 2, 2)])
def test_reference_matches_torch(shape, soft, opts):
    if soft and "ignore_index" in opts:
        pytest.skip("ignore_index does not apply to probability targets")
    x, target, opts = make_case(shape, soft, opts)
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(target)
    topts = {k: (torch.tensor(v) if k == "weight" else v) for k, v in opts.items()}
    expected = torch_cross_entropy(xt, tt, **topts)
    np.testing.assert_allclose(ref.cross_entropy(x, target, **opts), expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)
    got = ref.cross_entropy_backward(x, target, grad_out.numpy(), **opts)
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_reference_edge_cases_follow_torch():
    inf = np.inf
    x = np.array([[0.0, -inf, 1.0], [-inf, -inf, -inf], [2.0, 1.0, 0.0]])
    rows = ref.cross_entropy(x, np.array([1, 0, -100]), reduction="none")
    assert rows[0] == inf and np.isnan(rows[1]) and rows[2] == 0.0
    assert np.isnan(ref.cross_entropy(x[2:], np.array([-100])))  # mean over no kept row
    assert ref.cross_entropy(x[2:], np.array([-100]), reduction="sum") == 0.0
    assert np.array_equal(ref.cross_entropy_backward(x[2:], np.array([-100])), np.zeros((1, 3)))
    # Probability 0 on a masked class contributes 0 (torch: NaN); smoothing puts mass there: inf.
    q = np.array([[0.5, 0.0, 0.5]])
    assert np.isfinite(ref.cross_entropy(x[:1], q))
    assert ref.cross_entropy(x[:1], q, label_smoothing=0.1) == inf
    with pytest.raises(IndexError):
        ref.cross_entropy(x, np.array([0, 3, 1]))
