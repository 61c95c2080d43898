"""The NumPy references of the memory-lean losses against torch in float64 (autograd for gradients)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softlight import reference as ref
from support import combo_id
from test_reference_cross_entropy import torch_cross_entropy

rng = np.random.default_rng()

LINEAR_OPTIONS = [
    {},
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(class_weight=True, label_smoothing=0.1),
    dict(class_weight=True, reduction="none", z_loss=1e-2),
    dict(softcap=3.0, temperature=0.7, z_loss=1e-3, label_smoothing=0.2),
    dict(num_items=11),
    dict(num_items=5.5, class_weight=True, label_smoothing=0.1, softcap=2.0),
    dict(ignore_index=3, bias=False),
]


@pytest.mark.parametrize("opts", LINEAR_OPTIONS, ids=combo_id)
@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_linear_cross_entropy_reference_matches_torch(lead, opts):
    opts = dict(opts)
    h_size, v = 4, 7
    hidden, weight, bias = rng.standard_normal(lead + (h_size,)), rng.standard_normal((v, h_size)), rng.standard_normal(v)
    if not opts.pop("bias", True):
        bias = None
    target = rng.integers(0, v, size=lead)
    target.reshape(-1)[::3] = opts.get("ignore_index", -100)
    if opts.get("class_weight"):
        opts["class_weight"] = rng.random(v) + 0.1
    num_items = opts.pop("num_items", None)

    leaves = [None if a is None else torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias)]
    topts = {("weight" if k == "class_weight" else k): (torch.tensor(a) if k == "class_weight" else a) for k, a in opts.items()}
    if num_items is not None:
        topts["reduction"] = "sum"
    logits = F.linear(*leaves)
    expected = torch_cross_entropy(logits.reshape(-1, v), torch.tensor(target).reshape(-1), **topts)
    if num_items is not None:
        expected = expected / num_items
    elif opts.get("reduction") == "none":
        expected = expected.reshape(lead)
    got = ref.linear_cross_entropy(hidden, weight, target, bias, num_items=num_items, **opts)
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-12, atol=1e-12)

    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)
    grads = ref.linear_cross_entropy_backward(hidden, weight, target, grad_out.numpy(), bias, num_items=num_items, **opts)
    for got_grad, leaf in zip(grads, leaves):
        if leaf is not None:
            np.testing.assert_allclose(got_grad, leaf.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_token_logprobs_reference_matches_torch(temperature):
    x = rng.standard_normal((3, 4, 9)) * 3
    ids = rng.integers(0, 9, size=(3, 4))
    xt = torch.tensor(x, requires_grad=True)
    log_p = torch.log_softmax(xt / temperature, -1)
    logp = log_p.gather(-1, torch.tensor(ids)[..., None])[..., 0]
    entropy = -(log_p.exp() * log_p).sum(-1)
    got_logp, got_entropy = ref.token_logprobs(x, ids, temperature)
    np.testing.assert_allclose(got_logp, logp.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_entropy, entropy.detach().numpy(), rtol=1e-12, atol=1e-12)
    g_logp, g_entropy = torch.randn_like(logp), torch.randn_like(entropy)
    for with_logp, with_entropy in ((True, True), (True, False), (False, True)):
        xt.grad = None
        total = (logp * g_logp).sum() * with_logp + (entropy * g_entropy).sum() * with_entropy
        total.backward(retain_graph=True)
        got = ref.token_logprobs_backward(x, ids, g_logp.numpy() if with_logp else None,
                                          g_entropy.numpy() if with_entropy else None, temperature)
        np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_token_logprobs_reference_matches_torch():
    hidden, weight, bias = rng.standard_normal((2, 5, 4)), rng.standard_normal((8, 4)), rng.standard_normal(8)
    ids = rng.integers(0, 8, size=(2, 5))
    leaves = [torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias)]
    log_p = torch.log_softmax(F.linear(*leaves) / 0.8, -1)
    logp = log_p.gather(-1, torch.tensor(ids)[..., None])[..., 0]
    entropy = -(log_p.exp() * log_p).sum(-1)
    got_logp, got_entropy = ref.linear_token_logprobs(hidden, weight, ids, bias, temperature=0.8)
    np.testing.assert_allclose(got_logp, logp.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_entropy, entropy.detach().numpy(), rtol=1e-12, atol=1e-12)
    g_logp, g_entropy = torch.randn_like(logp), torch.randn_like(entropy)
    ((logp * g_logp).sum() + (entropy * g_entropy).sum()).backward()
    grads = ref.linear_token_logprobs_backward(hidden, weight, ids, g_logp.numpy(), g_entropy.numpy(), bias,
                                               temperature=0.8)
    for got, leaf in zip(grads, leaves):
        np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_token_logprobs_reference_edge_cases():
    inf = np.inf
    x = np.array([[0.0, -inf, 1.0], [-inf, -inf, -inf], [-inf, 2.0, -inf], [0.0, inf, 1.0]])
    logp, entropy = ref.token_logprobs(x, np.array([1, 0, 1, 0]))
    assert logp[0] == -inf and np.isfinite(entropy[0])  # a masked class adds 0 to the entropy
    torch_entropy = torch.special.entr(torch.softmax(torch.tensor(x[:1]), -1)).sum(-1)
    np.testing.assert_allclose(entropy[0], torch_entropy.item(), rtol=1e-12)
    assert np.isnan(logp[1]) and np.isnan(entropy[1])  # all -inf: NaN, as log_softmax
    assert logp[2] == 0.0 and entropy[2] == 0.0  # one live class: certain
    assert np.isnan(logp[3]) and np.isnan(entropy[3])  # +inf: NaN, as log_softmax
    grad = ref.token_logprobs_backward(x[:1], np.array([2]), np.ones(1), np.ones(1))
    assert np.all(np.isfinite(grad)) and grad[0, 1] == 0.0
    with pytest.raises(IndexError):
        ref.token_logprobs(x, np.array([0, 0, 3, 0]))
    with pytest.raises(ValueError, match="num_items"):
        ref.linear_cross_entropy(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), reduction="sum", num_items=2)
