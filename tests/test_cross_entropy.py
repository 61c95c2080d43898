"""softlight.cross_entropy against the float64 reference, against torch, and its in-place mode."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softlight
from softlight import launch
from softlight import reference as ref
from support import DTYPES, assert_close, combo_id, incoming_gradient, rounded, split_options, to_numpy
from test_reference_cross_entropy import torch_cross_entropy

LOSS_TOLERANCE = 1e-5  # the loss is fp32 and within this of float64, whatever the logits dtype


def make_inputs(shape, dtype, device, soft=False, ignore_every=0, ignore_index=-100, scale=3.0, weight=False):
    x = (torch.randn(shape, device=device) * scale).to(dtype)
    c = shape[0] if len(shape) == 1 else shape[1]
    if soft:
        target = torch.softmax(torch.randn(shape, device=device) * 2, dim=0 if len(shape) == 1 else 1)
    else:
        target = torch.randint(0, c, shape[:1] + shape[2:] if len(shape) > 1 else (), device=device)
        if ignore_every:
            target.view(-1)[::ignore_every] = ignore_index
    w = torch.rand(c, device=device) + 0.1 if weight else None
    return x, target, w


def check_against_reference(x, target, weight=None, grad_scale=None, **opts):
    """Loss within LOSS_TOLERANCE of the float64 reference on the same (rounded) logits, the
    gradient within the logits dtype's tolerance; returns (loss, grad)."""
    xg = x.detach().clone().requires_grad_()
    loss = softlight.cross_entropy(xg, target, weight, **opts)
    assert loss.dtype == torch.float32
    w = None if weight is None else to_numpy(weight)
    t = to_numpy(target) if target.is_floating_point() else target.cpu().numpy()
    expected = ref.cross_entropy(to_numpy(x), t, w, **opts)
    err = ref.relative_error(to_numpy(loss), expected)
    assert err <= LOSS_TOLERANCE, f"loss relative error {err:.2e}"
    # Incoming gradients of magnitude 0.5 to 2: a tiny one would push an fp16 gradient into the
    # subnormal range, where even the correctly rounded result misses the tolerance.
    sign = torch.randint(0, 2, loss.shape, device=loss.device) * 2 - 1
    grad_out = sign * torch.empty_like(loss).uniform_(0.5, 2.0) if grad_scale is None else torch.full_like(loss, grad_scale)
    loss.backward(grad_out)
    assert xg.grad.dtype == x.dtype and xg.grad.shape == x.shape
    expected_grad = ref.cross_entropy_backward(to_numpy(x), t, to_numpy(grad_out), w, **opts)
    assert_close(xg.grad, expected_grad, what="gradient")
    return loss, xg.grad


COMBINATIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=True, label_smoothing=0.1),
    dict(weight=True, reduction="none", ignore_every=2),
    dict(label_smoothing=0.25, ignore_every=3),
    dict(z_loss=1e-3, softcap=15.0),
    dict(temperature=0.7, z_loss=1e-4, label_smoothing=0.1, weight=True, reduction="sum"),
    dict(softcap=4.0, temperature=1.5, reduction="none", ignore_every=4),
    dict(soft=True),
    dict(soft=True, label_smoothing=0.2, weight=True),
    dict(soft=True, z_loss=1e-3, softcap=10.0, reduction="none"),
]


# Options that shape the inputs rather than being passed to the op.
INPUT_OPTIONS = ("soft", "ignore_every", "weight")


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_options_against_reference(combo, dtype, device):
    make, opts = split_options(combo, INPUT_OPTIONS)
    x, target, w = make_inputs((16, 1000), dtype, device, **make)
    check_against_reference(x, target, w, **opts)


@pytest.mark.parametrize("n_classes", [2, 5, 3001, 50257, 131072, 262144])
@pytest.mark.parametrize("dtype", DTYPES)
def test_vocabulary_sizes(n_classes, dtype, device):
    rows = 8 if n_classes < 10000 else 2
    x, target, _ = make_inputs((rows, n_classes), dtype, device)
    check_against_reference(x, target, label_smoothing=0.1, z_loss=1e-4)


@pytest.mark.parametrize("combo", [dict(), dict(label_smoothing=0.1, weight=True, z_loss=1e-3),
                                   dict(soft=True, softcap=8.0), dict(reduction="none", ignore_every=2)])
def test_split_rows(combo, launch_policy, device):
    """Few rows: each row's vocabulary is split across programs and the partials combined."""
    launch_policy(target_programs=64)
    n_classes = 50257
    cfg = launch.launch_config(n_classes, stream=True)
    assert launch.split_count(3, n_classes, cfg.block, torch.device(device)) > 1
    make, opts = split_options(combo, INPUT_OPTIONS)
    x, target, w = make_inputs((3, n_classes), torch.bfloat16, device, **make)
    check_against_reference(x, target, w, **opts)


def test_split_rows_with_a_block_per_split(launch_policy, device):
    launch_policy(target_programs=1000)
    launch_policy(chunk=64)
    launch_policy(row_block_limit=64)
    x, target, _ = make_inputs((2, 1000), torch.float32, device)
    x[0, :500] = float("-inf")  # whole splits that are all -inf must combine cleanly
    target[0] = 700
    check_against_reference(x, target, label_smoothing=0.0, z_loss=1e-3)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", [(7,), (4, 9, 3), (2, 11, 3, 2)])
def test_input_shapes(shape, soft, device):
    x, target, _ = make_inputs(shape, torch.float32, device, soft=soft)
    loss, _ = check_against_reference(x, target, reduction="none")
    assert loss.shape == (shape[:1] + shape[2:] if len(shape) > 1 else ())
    check_against_reference(x, target, label_smoothing=0.1)


def test_strided_logits_and_targets(device):
    base = torch.randn(40, 6, 300, device=device)
    x = base.transpose(1, 2)[::2]  # (20, 300, 6): classes on dim 1 with stride 1... of 6
    target = torch.randint(0, 300, (6, 20), device=device).t()
    check_against_reference(x, target, label_smoothing=0.1, reduction="none")
    x2 = base[:, 2, ::2]  # rows of 150 classes with column stride 2
    check_against_reference(x2, torch.randint(0, 150, (40,), device=device), weight=torch.rand(150, device=device))
    soft = torch.softmax(torch.randn(300, 20, 6, device=device), 0).permute(1, 0, 2)
    check_against_reference(x, soft, label_smoothing=0.2)


def test_int32_and_uint8_targets(device):
    x, target, _ = make_inputs((6, 50), torch.float32, device)
    expected = softlight.cross_entropy(x, target)
    assert softlight.cross_entropy(x, target.int()) == expected
    assert softlight.cross_entropy(x, target.to(torch.uint8)) == expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype, device):
    x, target, w = make_inputs((32, 513), dtype, device, ignore_every=5, weight=True)
    for opts in (dict(), dict(weight=w, label_smoothing=0.1), dict(reduction="none")):
        xs, xt = x.clone().requires_grad_(), x.clone().float().requires_grad_()
        ours = softlight.cross_entropy(xs, target, **opts)
        theirs = F.cross_entropy(xt, target, **opts)
        assert_close(ours, to_numpy(theirs), dtype=torch.float32 if dtype == torch.float32 else dtype)
        g = incoming_gradient(ours)
        ours.backward(g)
        theirs.backward(g)
        assert_close(xs.grad, to_numpy(xt.grad))


def test_extras_match_torch_composition(device):
    x, target, w = make_inputs((12, 300), torch.float32, device, ignore_every=4, weight=True)
    opts = dict(weight=w, label_smoothing=0.1, temperature=0.8, z_loss=1e-3, softcap=6.0)
    xs, xt = x.clone().requires_grad_(), x.clone().double().requires_grad_()
    ours = softlight.cross_entropy(xs, target, **opts)
    theirs = torch_cross_entropy(xt, target, **{**opts, "weight": w.double()})
    assert ref.relative_error(to_numpy(ours), to_numpy(theirs)) < LOSS_TOLERANCE
    ours.backward()
    theirs.backward()
    assert_close(xs.grad, to_numpy(xt.grad))


def test_non_finite_cases_match_torch(device):
    inf = float("inf")
    x = torch.tensor([[0.0, -inf, 1.0, 2.0], [-inf] * 4, [1.0, 2.0, 3.0, 4.0], [-inf] * 4], device=device)
    target = torch.tensor([1, 0, 2, -100], device=device)
    xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = softlight.cross_entropy(xs, target, reduction="none")
    theirs = F.cross_entropy(xt, target, reduction="none")
    torch.testing.assert_close(ours, theirs, equal_nan=True)  # [inf, nan, finite, 0]
    assert ours[0] == inf and torch.isnan(ours[1]) and ours[3] == 0
    ours.backward(torch.ones(4, device=device))
    theirs.backward(torch.ones(4, device=device))
    torch.testing.assert_close(xs.grad[1:], xt.grad[1:], equal_nan=True)  # NaN rows, as torch


def test_all_ignored_batches(device):
    x = torch.randn(4, 10, device=device, requires_grad=True)
    target = torch.full((4,), -100, device=device)
    loss = softlight.cross_entropy(x, target)
    assert torch.isnan(loss)  # mean over no kept row, as torch
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert softlight.cross_entropy(x, target, reduction="sum") == 0
    w = torch.rand(10, device=device)
    assert torch.isnan(softlight.cross_entropy(x, target, w, label_smoothing=0.1))


def test_empty_batch(device):
    x = torch.empty(0, 7, device=device, requires_grad=True)
    target = torch.empty(0, dtype=torch.long, device=device)
    assert torch.isnan(softlight.cross_entropy(x, target))
    loss = softlight.cross_entropy(x, target, reduction="sum")
    assert loss == 0
    loss.backward()
    assert x.grad.shape == (0, 7)


def test_gradcheck_float64(device):
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([0, 5, -100, 2], device=device)
    w = torch.rand(6, dtype=torch.float64, device=device)
    for opts in (dict(), dict(weight=w, label_smoothing=0.2, z_loss=1e-2, softcap=2.0, temperature=0.7),
                 dict(reduction="none", z_loss=0.1)):
        assert torch.autograd.gradcheck(lambda t: softlight.cross_entropy(t, target, **opts), (x,))
    q = torch.softmax(torch.randn(4, 6, dtype=torch.float64, device=device), 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, p: softlight.cross_entropy(t, p, w, label_smoothing=0.1, reduction="none"), (x, q))


def test_module(device):
    x, target, w = make_inputs((5, 20), torch.float32, device, weight=True)
    module = softlight.CrossEntropyLoss(weight=w, label_smoothing=0.1, z_loss=1e-3)
    assert module(x, target) == softlight.cross_entropy(x, target, w, label_smoothing=0.1, z_loss=1e-3)
    torch.testing.assert_close(softlight.CrossEntropyLoss(w)(x, target), torch.nn.CrossEntropyLoss(w)(x, target))


# ---------------------------------------------------------------------------------------------
# inplace_backward


def logits_from(leaf):
    return leaf * 1.0  # produced by an op, as logits are in a model


def test_inplace_gives_the_same_gradient_in_the_logits_storage(device):
    h = torch.randn(6, 300, device=device, requires_grad=True)
    target = torch.randint(0, 300, (6,), device=device)
    expected = torch.autograd.grad(softlight.cross_entropy(logits_from(h), target, label_smoothing=0.1), h)[0]
    logits = logits_from(h)
    loss = softlight.cross_entropy(logits, target, label_smoothing=0.1, inplace_backward=True)
    loss.backward()
    torch.testing.assert_close(h.grad, expected)
    torch.testing.assert_close(logits.detach(), expected)  # the storage now holds the gradient


def test_out_of_place_by_default_leaves_logits_alone(device):
    h = torch.randn(6, 30, device=device, requires_grad=True)
    logits = logits_from(h)
    before = logits.detach().clone()
    softlight.cross_entropy(logits, torch.randint(0, 30, (6,), device=device)).backward()
    assert torch.equal(logits.detach(), before)


def test_inplace_raises_when_graph_is_kept(device):
    h = torch.randn(4, 30, device=device, requires_grad=True)
    loss = softlight.cross_entropy(logits_from(h), torch.randint(0, 30, (4,), device=device), inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_raises_when_another_op_still_needs_the_logits(device):
    h = torch.randn(4, 30, device=device, requires_grad=True)
    target = torch.randint(0, 30, (4,), device=device)
    logits = logits_from(h)
    other = (logits * logits).sum()  # saves the logits; its backward runs after cross-entropy's
    loss = softlight.cross_entropy(logits, target, inplace_backward=True) + other
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_is_right_when_the_other_op_has_run_first(device):
    h = torch.randn(4, 30, device=device, requires_grad=True)
    target = torch.randint(0, 30, (4,), device=device)

    def total(inplace):
        logits = logits_from(h)
        ce = softlight.cross_entropy(logits, target, inplace_backward=inplace)
        return ce + (logits * logits).sum()  # created after: its backward runs first

    expected = torch.autograd.grad(total(False), h)[0]
    torch.testing.assert_close(torch.autograd.grad(total(True), h)[0], expected)


def test_inplace_refuses_a_leaf(device):
    x = torch.randn(3, 5, device=device, requires_grad=True)
    with pytest.raises(ValueError, match="inplace_backward"):
        softlight.cross_entropy(x, torch.tensor([0, 1, 2], device=device), inplace_backward=True)


@pytest.mark.gpu
def test_out_of_range_target_gives_nan_on_gpu():
    x = torch.randn(4, 10, device="cuda", requires_grad=True)
    loss = softlight.cross_entropy(x, torch.tensor([0, 10, 3, -5], device="cuda"), reduction="none")
    assert torch.isnan(loss[1]) and torch.isnan(loss[3]) and torch.isfinite(loss[[0, 2]]).all()


@pytest.mark.gpu
def test_cross_entropy_offsets_past_2_31():
    x = torch.randn(8200, 262144, device="cuda", dtype=torch.bfloat16)  # 2.15e9 elements
    target = torch.randint(0, 262144, (8200,), device="cuda")
    loss = softlight.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(loss[-4:], F.cross_entropy(x[-4:].float(), target[-4:], reduction="none"))


def test_all_ignored_zero_option(device):
    x = torch.randn(4, 10, device=device, requires_grad=True)
    ignored = torch.full((4,), -100, device=device)
    loss = softlight.cross_entropy(x, ignored, all_ignored="zero")
    assert loss == 0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    target = torch.tensor([1, -100, 3, 4], device=device)
    assert softlight.cross_entropy(x, target, all_ignored="zero") == softlight.cross_entropy(x, target)


@pytest.mark.parametrize("dtype", DTYPES)
def test_confident_rows_keep_their_tiny_loss(dtype, device):
    """With the target far above every other logit the loss is log(1 + r) for a tiny r: it must
    come out as r, not 0 (torch gives 0), and the target's gradient as -r, not 0."""
    x = torch.tensor([[20.0, 0.0, -1.0, 3.0], [40.0, 10.0, 5.0, 1.0]], device=device).to(dtype)
    target = torch.tensor([0, 0], device=device)
    exact = [sum(np.exp(float(v) - float(row[0])) for v in row[1:]) for row in x.cpu()]  # log1p(r) ~ r here
    xg = x.clone().requires_grad_()
    loss = softlight.cross_entropy(xg, target, reduction="none")
    loss.sum().backward()
    for i in range(2):
        assert abs(loss[i].item() - exact[i]) <= 2e-7 * exact[i]
        # The gradient is -r in the logits dtype: correctly rounded, give or take an ulp (fp16's
        # -4.4e-8 is subnormal, so its ulp is the smallest subnormal).
        best = rounded(-exact[i], dtype).item()
        ulp = max(torch.finfo(dtype).eps * abs(best), torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps)
        assert abs(xg.grad[i, 0].item() - best) <= ulp


# ---------------------------------------------------------------------------------------------
# A mean whose denominator is 0, and probability targets with ignore_index (issue 13)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("inplace", [False, True])
def test_mean_over_zero_class_weight_matches_torch(label_smoothing, inplace, device):
    """Class weights 0 on every kept target: torch's mean is 0/0 = NaN even when smoothing makes
    the sum positive, and its gradient NaN on the kept rows, 0 on the ignored one."""
    h = torch.randn(4, 5, device=device, requires_grad=True)
    target = torch.tensor([0, 1, 0, -100], device=device)
    w = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], device=device)
    loss = softlight.cross_entropy(logits_from(h), target, w, label_smoothing=label_smoothing, inplace_backward=inplace)
    expected = F.cross_entropy(logits_from(h), target, w, label_smoothing=label_smoothing)
    assert torch.isnan(loss) and torch.isnan(expected)
    (grad,) = torch.autograd.grad(loss, h)
    (expected_grad,) = torch.autograd.grad(expected, h)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)
    assert grad[:3].isnan().all() and torch.equal(grad[3], torch.zeros_like(grad[3]))
    expected_np = ref.cross_entropy(to_numpy(h), target.cpu().numpy(), to_numpy(w), label_smoothing=label_smoothing)
    assert np.isnan(expected_np)
    assert softlight.cross_entropy(h, target, w, label_smoothing=label_smoothing, all_ignored="zero") == 0


def test_all_ignored_keeps_a_zero_gradient_whatever_the_incoming_one(device):
    """reduction="none" with every row ignored: an ignored row's loss is the constant 0, so even a
    NaN incoming gradient gives it 0 (as torch's nll_loss does)."""
    x = torch.randn(3, 6, device=device, requires_grad=True)
    target = torch.tensor([-100, 2, -100], device=device)
    loss = softlight.cross_entropy(x, target, reduction="none", label_smoothing=0.2)
    loss.backward(torch.tensor([float("nan"), 1.0, float("inf")], device=device))
    assert torch.equal(x.grad[[0, 2]], torch.zeros_like(x.grad[[0, 2]])) and x.grad[1].isfinite().all()


@pytest.mark.parametrize("ignore_index", [0, 3])
def test_probability_targets_reject_a_class_ignore_index(ignore_index, device):
    x, q, _ = make_inputs((3, 5), torch.float32, device, soft=True)
    with pytest.raises(RuntimeError):
        F.cross_entropy(x, q, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=f"ignore_index={ignore_index} does not apply to class-probability targets"):
        softlight.cross_entropy(x, q, ignore_index=ignore_index)
    # A negative one can name no class: torch accepts it, and so do we.
    assert softlight.cross_entropy(x, q, ignore_index=-1) == softlight.cross_entropy(x, q)


# ---------------------------------------------------------------------------------------------
# return_lse and return_z_loss (issue 13)


def check_extra_outputs(x, target, weight=None, inplace=False, **opts):
    """cross_entropy with return_lse and return_z_loss: the loss as without them, the LSE and the
    z-loss term against the reference, and the gradient of a sum that uses all three (so the LSE's
    own gradient and the z-loss term's reach the logits) against the reference."""
    h = x.detach().clone().requires_grad_()
    loss, lse, z_term = softlight.cross_entropy(logits_from(h) if inplace else h, target, weight, return_lse=True,
                                                return_z_loss=True, inplace_backward=inplace, **opts)
    plain = softlight.cross_entropy(x, target, weight, **opts)
    torch.testing.assert_close(loss, plain, rtol=0, atol=0, equal_nan=True)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert lse.dtype == z_term.dtype == acc and lse.shape == (x.shape[:1] + x.shape[2:] if x.dim() > 1 else ())

    t = to_numpy(target) if target.is_floating_point() else target.cpu().numpy()
    w = None if weight is None else to_numpy(weight)
    reduction, z_loss = opts.get("reduction", "mean"), opts.get("z_loss", 0.0)
    lse_ref = ref.cross_entropy_lse(to_numpy(x), opts.get("temperature", 1.0), opts.get("softcap"))
    assert ref.relative_error(to_numpy(lse), lse_ref) <= LOSS_TOLERANCE
    kept = np.ones(lse_ref.shape, bool) if target.is_floating_point() else t != opts.get("ignore_index", -100)
    z_rows = np.where(kept, z_loss * lse_ref**2, 0.0)
    if reduction == "none":
        z_ref = z_rows
    elif reduction == "sum":
        z_ref = z_rows.sum()
    else:  # the loss's own denominator: the kept targets' weights, or the rows for probabilities
        soft_or_unweighted = w is None or target.is_floating_point()
        counted = kept if soft_or_unweighted else np.where(kept, w[np.where(kept, t, 0)], 0.0)
        z_ref = z_rows.sum() / counted.sum() if counted.sum() else np.nan
    assert np.allclose(to_numpy(z_term), z_ref, rtol=LOSS_TOLERANCE, atol=1e-12, equal_nan=True)

    # One backward through loss, LSE and z-loss term, each with its own incoming gradient.
    g_loss = torch.empty_like(loss).uniform_(0.5, 2.0)
    g_lse = torch.empty_like(lse).uniform_(-2.0, 2.0)
    g_z = torch.empty_like(z_term).uniform_(0.5, 2.0)
    torch.autograd.backward([loss, lse, z_term], [g_loss, g_lse, g_z])
    # The z-loss term's gradient is the LSE's, times 2 z_loss LSE on each kept row.
    g_z_rows = to_numpy(g_z) * np.ones(lse_ref.shape)
    if reduction == "mean":
        g_z_rows = g_z_rows / counted.sum() if counted.sum() else np.full(lse_ref.shape, np.nan)
    g_lse_total = to_numpy(g_lse) + np.where(kept, g_z_rows * 2 * z_loss * lse_ref, 0.0)
    expected = ref.cross_entropy_backward(to_numpy(x), t, to_numpy(g_loss), w, grad_lse=g_lse_total, **opts)
    assert_close(h.grad, expected, dtype=x.dtype, what="gradient through loss, LSE and z-loss term")


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_return_lse_and_z_loss_with_every_option(combo, dtype, device):
    make, opts = split_options(combo, INPUT_OPTIONS)
    x, target, w = make_inputs((16, 300), dtype, device, **make)
    check_extra_outputs(x, target, w, **{"z_loss": 1e-3, **opts})


@pytest.mark.parametrize("combo", [dict(), dict(ignore_every=3, label_smoothing=0.1, weight=True),
                                   dict(soft=True, reduction="none", softcap=5.0)], ids=combo_id)
def test_return_lse_and_z_loss_in_place_split_and_shapes(combo, launch_policy, device):
    make, opts = split_options(combo, INPUT_OPTIONS)
    x, target, w = make_inputs((4, 9, 3), torch.float32, device, **make)
    check_extra_outputs(x, target, w, inplace=True, z_loss=1e-2, **opts)
    launch_policy(target_programs=64)  # each row split across programs, then combined
    x, target, w = make_inputs((3, 5000), torch.float32, device, **make)
    check_extra_outputs(x, target, w, z_loss=1e-2, **opts)
    x, target, w = make_inputs((7,), torch.float32, device, **make)
    check_extra_outputs(x, target, w, z_loss=1e-2, **opts)


def test_return_options_one_at_a_time_and_module(device):
    x, target, w = make_inputs((6, 40), torch.float32, device, ignore_every=2, weight=True)
    loss, lse = softlight.cross_entropy(x, target, w, z_loss=1e-3, return_lse=True)
    loss2, z_term = softlight.cross_entropy(x, target, w, z_loss=1e-3, return_z_loss=True)
    assert loss == loss2 and lse.shape == (6,) and z_term.shape == ()
    module = softlight.CrossEntropyLoss(w, z_loss=1e-3, return_lse=True, return_z_loss=True)
    out = module(x, target)
    assert len(out) == 3 and out[0] == loss and torch.equal(out[1], lse) and out[2] == z_term
    assert "return_lse=True" in repr(module)
    # Without z_loss the term is an exact 0, whatever the LSE.
    assert softlight.cross_entropy(x, target, return_z_loss=True)[1] == 0
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        softlight.cross_entropy(x, target, return_lse=1)


def test_return_lse_costs_no_extra_kernel_launch(monkeypatch, device):
    """The LSE and the z-loss term come from the forward kernel's own pass over the logits."""
    kernels = []
    run = launch.run

    def counting(kernel, *args, **kwargs):
        kernels.append(kernel.__name__)
        run(kernel, *args, **kwargs)

    monkeypatch.setattr(launch, "run", counting)
    x, target, _ = make_inputs((8, 100), torch.float32, device)
    softlight.cross_entropy(x, target, z_loss=1e-3)
    assert kernels == ["cross_entropy_forward_kernel"]
    softlight.cross_entropy(x, target, z_loss=1e-3, return_lse=True, return_z_loss=True)
    assert kernels == ["cross_entropy_forward_kernel"] * 2


def test_return_lse_under_torch_compile(device):
    x, target, w = make_inputs((6, 40), torch.float32, device, ignore_every=3, weight=True)

    def step(h):
        loss, lse, z_term = softlight.cross_entropy(h, target, w, z_loss=1e-3, softcap=8.0, return_lse=True,
                                                    return_z_loss=True)
        return loss + 0.1 * lse.sum() + z_term

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    h1, h2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(compiled(h1), step(h2))
    compiled(h1).backward()
    step(h2).backward()
    torch.testing.assert_close(h1.grad, h2.grad)


def test_lse_gradient_in_float64_gradcheck(device):
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([0, 5, -100, 2], device=device)

    def outputs(t):
        return softlight.cross_entropy(t, target, z_loss=0.05, softcap=3.0, temperature=0.8, return_lse=True,
                                       return_z_loss=True)

    assert torch.autograd.gradcheck(outputs, (x,))
    assert torch.autograd.gradgradcheck(outputs, (x,))
