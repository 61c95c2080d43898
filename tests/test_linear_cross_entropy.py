"""softlight.linear_cross_entropy against the float64 reference and the unfused composition."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softlight
from softlight import reference as ref
from support import DTYPES, assert_close, combo_id, split_options, to_numpy

LOSS_TOLERANCE = 1e-5  # the loss is fp32 and within this of float64, whatever the dtype


def make_inputs(n, h, v, dtype, device, lead=None, bias=True, ignore_every=0, class_weight=False):
    """hidden (n, h) (or lead + (h,)), weight (v, h), bias, target, class weights; values scaled
    so the logits spread over a few units, as a trained model's do."""
    lead = lead or (n,)
    hidden = torch.randn(*lead, h, device=device).to(dtype)
    weight = (torch.randn(v, h, device=device) * (2.0 / h**0.5)).to(dtype)
    b = (torch.randn(v, device=device) * 0.5).to(dtype) if bias else None
    target = torch.randint(0, v, lead, device=device)
    if ignore_every:
        target.view(-1)[::ignore_every] = -100
    cw = torch.rand(v, device=device) + 0.1 if class_weight else None
    return hidden, weight, b, target, cw


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def check_against_reference(hidden, weight, bias, target, grad_scale=None, num_items=None, chunk_size=None, **opts):
    """Loss within LOSS_TOLERANCE of the reference on the logits the unfused composition holds
    (F.linear in the inputs' dtype), gradients of hidden, weight and bias within the dtype's
    tolerance. Returns the loss."""
    h, w, b = leaves(hidden, weight, bias)
    loss = softlight.linear_cross_entropy(h, w, target, b, num_items=num_items, chunk_size=chunk_size, **opts)
    assert loss.dtype == (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    ref_opts = {k: (to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    ref_items = to_numpy(num_items) if isinstance(num_items, torch.Tensor) else num_items
    args = (to_numpy(hidden), to_numpy(weight), target.cpu().numpy())
    logits = to_numpy(F.linear(hidden, weight, bias))
    bias_np = None if bias is None else to_numpy(bias)
    expected = ref.linear_cross_entropy(*args, bias_np, num_items=ref_items, logits=logits, **ref_opts)
    err = ref.relative_error(to_numpy(loss), expected)
    assert err <= LOSS_TOLERANCE, f"loss relative error {err:.2e}"
    # Incoming gradients of magnitude 0.5 to 2 with random signs (per token for "none").
    sign = torch.randint(0, 2, loss.shape, device=loss.device) * 2 - 1
    grad_out = sign * torch.empty_like(loss).uniform_(0.5, 2.0) if grad_scale is None else torch.full_like(loss, grad_scale)
    loss.backward(grad_out)
    expected_grads = ref.linear_cross_entropy_backward(*args, to_numpy(grad_out), bias_np, num_items=ref_items,
                                                       logits=logits, **ref_opts)
    for name, got, want, like in zip(("hidden", "weight", "bias"), (h, w, b), expected_grads, (hidden, weight, bias)):
        if got is None:
            continue
        assert got.grad.dtype == like.dtype and got.grad.shape == like.shape, name
        assert_close(got.grad, want, what=f"d {name}")
    return loss


COMBINATIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(class_weight=True, label_smoothing=0.1, ignore_every=3),
    dict(class_weight=True, reduction="none", ignore_every=2, z_loss=1e-3),
    dict(temperature=0.7, softcap=5.0, z_loss=1e-4, label_smoothing=0.2, reduction="sum"),
    dict(softcap=3.0, ignore_every=4, num_items=40),
    dict(bias=False, temperature=1.5, reduction="none", label_smoothing=0.05),
]


# Options that shape the inputs rather than being passed to the op.
INPUT_OPTIONS = ("ignore_every", "class_weight", "bias")


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_options_against_reference(combo, dtype, device):
    make, opts = split_options(combo, INPUT_OPTIONS)
    hidden, weight, b, target, cw = make_inputs(24, 32, 389, dtype, device, **make)
    # chunks of 10 rows: two full ones and a short one.
    check_against_reference(hidden, weight, b, target, class_weight=cw, chunk_size=10, **opts)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_chunk_sizes_give_the_same_result(chunk_size, device):
    hidden, weight, b, target, _ = make_inputs(17, 16, 101, torch.float32, device, ignore_every=5)
    check_against_reference(hidden, weight, b, target, chunk_size=chunk_size, label_smoothing=0.1)
    check_against_reference(hidden, weight, b, target, chunk_size=chunk_size, reduction="none")


def test_long_rows_are_streamed(device):
    """A vocabulary longer than a block (the kernels' streamed path), odd-sized, bf16."""
    hidden, weight, b, target, _ = make_inputs(3, 16, 50257, torch.bfloat16, device)
    check_against_reference(hidden, weight, b, target, chunk_size=2, z_loss=1e-4, label_smoothing=0.1)


def test_leading_dims_and_strided_hidden(device):
    hidden, weight, b, target, _ = make_inputs(0, 24, 77, torch.float32, device, lead=(3, 5))
    loss = check_against_reference(hidden, weight, b, target, reduction="none", chunk_size=4)
    assert loss.shape == (3, 5)
    transposed = hidden.transpose(0, 1)  # (5, 3, 24), not contiguous
    check_against_reference(transposed, weight, b, target.t(), chunk_size=4)
    check_against_reference(hidden[0, 0], weight, b, target[0, 0])  # one token: hidden (H,), target ()


def test_matches_the_unfused_torch_composition(device):
    """Against what training code runs today: F.linear then F.cross_entropy, with autograd."""
    for dtype in DTYPES:
        hidden, weight, b, target, cw = make_inputs(20, 32, 300, dtype, device, ignore_every=4, class_weight=True)
        opts = dict(ignore_index=-100, label_smoothing=0.1)
        ours = leaves(hidden, weight, b)
        theirs = leaves(hidden, weight, b)
        loss = softlight.linear_cross_entropy(*ours[:2], target, ours[2], class_weight=cw, chunk_size=8, **opts)
        expected = F.cross_entropy(F.linear(*theirs[:2], theirs[2]).float(), target, weight=cw, **opts)
        assert ref.relative_error(to_numpy(loss), to_numpy(expected)) < LOSS_TOLERANCE
        loss.backward()
        expected.backward()
        for got, want in zip(ours, theirs):
            assert_close(got.grad, to_numpy(want.grad), what=str(dtype))


def test_per_token_gradient_of_reduction_none(device):
    """reduction "none" with a different incoming gradient per token: backward recomputes the
    logits; equal to the unfused composition's gradient."""
    hidden, weight, b, target, _ = make_inputs(13, 16, 90, torch.float32, device, ignore_every=3)
    ours, theirs = leaves(hidden, weight, b), leaves(hidden, weight, b)
    per_token = torch.randn(13, device=device)
    loss = softlight.linear_cross_entropy(*ours[:2], target, ours[2], reduction="none", z_loss=1e-3, chunk_size=4)
    expected = softlight.cross_entropy(F.linear(*theirs[:2], theirs[2]), target, reduction="none", z_loss=1e-3)
    torch.testing.assert_close(loss, expected)
    (loss * per_token).sum().backward()
    (expected * per_token).sum().backward()
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation: num_items


def test_num_items_makes_micro_batches_add_up_to_the_batch_mean(device):
    hidden, weight, b, target, _ = make_inputs(24, 16, 97, torch.float32, device, ignore_every=5)
    whole = leaves(hidden, weight, b)
    full = softlight.linear_cross_entropy(*whole[:2], target, whole[2], label_smoothing=0.1)
    full.backward()
    n_items = (target != -100).sum()  # a 0-d tensor, as a trainer counts it
    parts = leaves(hidden, weight, b)
    total = 0.0
    for rows in (slice(0, 10), slice(10, 24)):
        loss = softlight.linear_cross_entropy(parts[0][rows], parts[1], target[rows], parts[2],
                                              label_smoothing=0.1, num_items=n_items)
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach())
    for got, want in zip(parts, whole):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_items", [7, 12.5, "tensor"])
def test_num_items_against_reference(num_items, device):
    hidden, weight, b, target, cw = make_inputs(12, 16, 50, torch.float32, device, ignore_every=3, class_weight=True)
    if num_items == "tensor":
        num_items = torch.tensor(31, device=device)
    check_against_reference(hidden, weight, b, target, num_items=num_items, class_weight=cw, z_loss=1e-3,
                            chunk_size=5, grad_scale=0.25)


def test_num_items_tensor_of_zero_gives_nan_loss_and_gradients(device):
    """A denominator of 0 is 0/0 wherever it comes from (torch's mean gives NaN there too)."""
    hidden, weight, b, target, _ = make_inputs(4, 8, 10, torch.float32, device)
    h, w = leaves(hidden, weight)
    loss = softlight.linear_cross_entropy(h, w, target, num_items=torch.tensor(0, device=device))
    assert torch.isnan(loss)
    loss.backward()
    assert h.grad.isnan().all() and w.grad.isnan().any()


# ---------------------------------------------------------------------------------------------
# Edge cases and autograd


def test_all_ignored_and_empty_batches(device):
    hidden, weight, b, target, _ = make_inputs(6, 8, 11, torch.float32, device)
    target[:] = -100
    h, w, bb = leaves(hidden, weight, b)
    loss = softlight.linear_cross_entropy(h, w, target, bb)
    assert torch.isnan(loss)  # a mean over no kept target, as torch
    loss.backward()
    for t in (h, w, bb):
        assert torch.equal(t.grad, torch.zeros_like(t))
    assert softlight.linear_cross_entropy(hidden, weight, target, b, reduction="sum") == 0
    h0 = torch.empty(0, 8, device=device, requires_grad=True)
    empty_target = torch.empty(0, dtype=torch.long, device=device)
    assert torch.isnan(softlight.linear_cross_entropy(h0, weight, empty_target))
    loss = softlight.linear_cross_entropy(h0, w, empty_target, reduction="sum")
    loss.backward()
    assert loss == 0 and h0.grad.shape == (0, 8)


def test_only_the_inputs_that_need_gradients_get_them(device):
    hidden, weight, b, target, _ = make_inputs(9, 8, 30, torch.float32, device)
    h = hidden.clone().requires_grad_()  # frozen output projection (weight and bias plain tensors)
    softlight.linear_cross_entropy(h, weight, target, b, chunk_size=4).backward()
    h2 = hidden.clone().requires_grad_()
    F.cross_entropy(F.linear(h2, weight, b), target).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    with torch.no_grad():  # no gradient wanted: forward only, same loss
        no_grad = softlight.linear_cross_entropy(h, weight, target, b)
    assert not no_grad.requires_grad
    torch.testing.assert_close(no_grad, F.cross_entropy(F.linear(hidden, weight, b), target))


def test_backward_through_a_retained_graph_runs_twice(device):
    """The gradients forward computes for a scalar loss stay intact through backward."""
    hidden, weight, b, target, _ = make_inputs(5, 8, 20, torch.float32, device)
    for reduction in ("mean", "none"):
        h, w = leaves(hidden, weight)
        loss = softlight.linear_cross_entropy(h, w, target, reduction=reduction).sum()
        loss.backward(retain_graph=True)
        first = h.grad.clone(), w.grad.clone()
        loss.backward(torch.tensor(0.5, device=device))
        torch.testing.assert_close(h.grad, 1.5 * first[0])
        torch.testing.assert_close(w.grad, 1.5 * first[1])


def test_gradcheck_float64(device):
    hidden, weight, b, target, _ = make_inputs(4, 2, 5, torch.float64, device)
    target[1] = -100
    cw = torch.rand(5, dtype=torch.float64, device=device) + 0.1
    # Full Jacobians for one option set; random projections (fast_mode) for the rest, to keep the
    # interpreter's time down.
    for fast, opts in ((False, dict(label_smoothing=0.2, z_loss=1e-2, softcap=2.0, temperature=0.7, class_weight=cw)),
                       (True, dict(reduction="sum")),
                       (True, dict(reduction="none", class_weight=cw, label_smoothing=0.1)),
                       (True, dict(num_items=3, z_loss=1e-2))):
        assert torch.autograd.gradcheck(
            lambda h, w, bb: softlight.linear_cross_entropy(h, w, target, bb, chunk_size=3, **opts),
            tuple(leaves(hidden, weight, b)), fast_mode=fast)


def test_module(device):
    hidden, weight, b, target, cw = make_inputs(7, 8, 25, torch.float32, device, class_weight=True)
    criterion = softlight.LinearCrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3, class_weight=cw)
    expected = softlight.linear_cross_entropy(hidden, weight, target, b, label_smoothing=0.1, z_loss=1e-3,
                                              class_weight=cw)
    assert criterion(hidden, weight, target, b) == expected
    assert criterion(hidden, weight, target, b, num_items=3) == softlight.linear_cross_entropy(
        hidden, weight, target, b, label_smoothing=0.1, z_loss=1e-3, class_weight=cw, num_items=3)
    assert "class_weight" in dict(criterion.named_buffers())


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_rejected(device):
    hidden, weight, b, target, _ = make_inputs(4, 8, 10, torch.float32, device)
    lce = softlight.linear_cross_entropy
    cases = [
        (TypeError, "hidden must be a floating-point", lambda: lce(hidden.long(), weight, target)),
        (TypeError, "weight must be a torch.Tensor", lambda: lce(hidden, [[1.0]], target)),
        (ValueError, "hidden must be .* 0-d", lambda: lce(torch.tensor(1.0, device=device), weight, target)),
        (ValueError, "weight must be the output projection", lambda: lce(hidden, weight[0], target)),
        (ValueError, "weight has hidden size 7", lambda: lce(hidden, weight[:, :7], target)),
        (ValueError, "vocabulary is empty", lambda: lce(hidden, weight[:0], target)),
        (TypeError, "weight has dtype torch.float16", lambda: lce(hidden, weight.half(), target)),
        (ValueError, "bias must have shape", lambda: lce(hidden, weight, target, b[:9])),
        (TypeError, "bias has dtype", lambda: lce(hidden, weight, target, b.double())),
        (TypeError, "target must hold class indices", lambda: lce(hidden, weight, target.float())),
        (TypeError, "target must hold class indices", lambda: lce(hidden, weight, target.bool())),
        (ValueError, "target must have shape \\(4,\\)", lambda: lce(hidden, weight, target[:3])),
        (IndexError, "target 10 is out of bounds", lambda: lce(hidden, weight, torch.tensor([0, 10, 1, 2], device=device))),
        (IndexError, "target -3 is out of bounds", lambda: lce(hidden, weight, torch.tensor([0, -3, 1, 2], device=device))),
        (ValueError, "reduction", lambda: lce(hidden, weight, target, reduction="avg")),
        (ValueError, "label_smoothing", lambda: lce(hidden, weight, target, label_smoothing=1.5)),
        (ValueError, "temperature", lambda: lce(hidden, weight, target, temperature=0.0)),
        (ValueError, "softcap", lambda: lce(hidden, weight, target, softcap=-1.0)),
        (ValueError, "z_loss", lambda: lce(hidden, weight, target, z_loss=-1.0)),
        (TypeError, "ignore_index", lambda: lce(hidden, weight, target, ignore_index=None)),
        (ValueError, "class_weight must have shape", lambda: lce(hidden, weight, target, class_weight=torch.rand(9, device=device))),
        (TypeError, "class_weight must be a floating-point", lambda: lce(hidden, weight, target, class_weight=torch.ones(10, dtype=torch.long, device=device))),
        (ValueError, "num_items replaces the denominator", lambda: lce(hidden, weight, target, reduction="sum", num_items=4)),
        (ValueError, "num_items must be finite and > 0", lambda: lce(hidden, weight, target, num_items=0)),
        (TypeError, "num_items must be a number", lambda: lce(hidden, weight, target, num_items=torch.ones(2, device=device))),
        (TypeError, "num_items must be a number", lambda: lce(hidden, weight, target, num_items="8")),
        (ValueError, "chunk_size must be >= 1", lambda: lce(hidden, weight, target, chunk_size=0)),
        (TypeError, "chunk_size must be an int", lambda: lce(hidden, weight, target, chunk_size=2.0)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_autocast_does_not_change_the_dtype_of_the_matmuls(device):
    hidden, weight, b, target, _ = make_inputs(6, 8, 40, torch.float32, device)
    ours, plain = leaves(hidden, weight, b), leaves(hidden, weight, b)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = softlight.linear_cross_entropy(*ours[:2], target, ours[2], reduction="none", chunk_size=4)
    expected = softlight.linear_cross_entropy(*plain[:2], target, plain[2], reduction="none", chunk_size=4)
    torch.testing.assert_close(loss, expected)
    g = torch.randn_like(loss)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss.backward(g)
    expected.backward(g)
    for got, want in zip(ours, plain):
        assert got.grad.dtype == torch.float32
        torch.testing.assert_close(got.grad, want.grad)


# ---------------------------------------------------------------------------------------------
# A mean whose denominator is 0, return_lse and return_z_loss (issue 13)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mean_over_zero_class_weight_matches_torch(label_smoothing, device):
    """Class weights 0 on every kept target: NaN loss and NaN gradients, as the unfused torch
    composition gives (its mean is 0/0)."""
    hidden, weight, b, target, _ = make_inputs(4, 8, 5, torch.float32, device)
    target[:] = torch.tensor([0, 1, 0, -100])
    cw = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], device=device)
    h, w = leaves(hidden, weight)
    loss = softlight.linear_cross_entropy(h, w, target, class_weight=cw, label_smoothing=label_smoothing, chunk_size=3)
    h2, w2 = leaves(hidden, weight)
    expected = F.cross_entropy(F.linear(h2, w2), target, cw, label_smoothing=label_smoothing)
    assert torch.isnan(loss) and torch.isnan(expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(h.grad, h2.grad, equal_nan=True)  # NaN on kept tokens, 0 on the ignored one
    assert torch.equal(h.grad[3], torch.zeros_like(h.grad[3])) and w.grad.isnan().any()


def check_linear_extra_outputs(hidden, weight, bias, target, num_items=None, chunk_size=None, **opts):
    """linear_cross_entropy with return_lse and return_z_loss: the loss as without them, the LSE
    and the z-loss term against the reference on the logits F.linear makes, and the gradients of
    a sum using all three against the reference."""
    h, w, b = leaves(hidden, weight, bias)
    loss, lse, z_term = softlight.linear_cross_entropy(h, w, target, b, num_items=num_items, chunk_size=chunk_size,
                                                       return_lse=True, return_z_loss=True, **opts)
    plain = softlight.linear_cross_entropy(hidden, weight, target, bias, num_items=num_items, chunk_size=chunk_size,
                                           **opts)
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    assert lse.shape == target.shape and lse.dtype == torch.float32
    logits = to_numpy(F.linear(hidden, weight, bias)).reshape(-1, weight.shape[0])
    lse_ref = ref.cross_entropy_lse(logits, opts.get("temperature", 1.0), opts.get("softcap")).reshape(target.shape)
    assert ref.relative_error(to_numpy(lse), lse_ref) <= LOSS_TOLERANCE
    ref_opts = {k: (to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    kept = target.cpu().numpy() != opts.get("ignore_index", -100)
    z_rows = np.where(kept, opts.get("z_loss", 0.0) * lse_ref**2, 0.0)
    reduction = opts.get("reduction", "mean")
    denominator = 1.0
    if reduction == "mean":
        cw = ref_opts.get("class_weight")
        t = target.cpu().numpy()
        denominator = num_items or (kept.sum() if cw is None else np.where(kept, cw[np.where(kept, t, 0)], 0).sum())
    z_ref = z_rows if reduction == "none" else z_rows.sum() / denominator
    assert np.allclose(to_numpy(z_term), z_ref, rtol=LOSS_TOLERANCE, atol=1e-12)

    g_loss = torch.empty_like(loss).uniform_(0.5, 2.0)
    g_lse = torch.empty_like(lse).uniform_(-2.0, 2.0)
    g_z = torch.empty_like(z_term).uniform_(0.5, 2.0)
    torch.autograd.backward([loss, lse, z_term], [g_loss, g_lse, g_z])
    g_z_rows = to_numpy(g_z) * np.ones(lse_ref.shape) / denominator
    g_lse_total = to_numpy(g_lse) + np.where(kept, g_z_rows * 2 * opts.get("z_loss", 0.0) * lse_ref, 0.0)
    expected = ref.linear_cross_entropy_backward(
        to_numpy(hidden), to_numpy(weight), target.cpu().numpy(), to_numpy(g_loss),
        None if bias is None else to_numpy(bias), num_items=num_items, logits=logits.reshape(*target.shape, -1),
        grad_lse=g_lse_total.reshape(-1), **ref_opts)
    for name, got, want in zip(("hidden", "weight", "bias"), (h, w, b), expected):
        if got is not None:
            assert_close(got.grad, want, what=f"d {name} through loss, LSE and z-loss term")


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_return_lse_and_z_loss_with_every_option(combo, device):
    make, opts = split_options(combo, INPUT_OPTIONS)
    hidden, weight, b, target, cw = make_inputs(13, 16, 40, torch.float32, device, **make)
    if cw is not None:
        opts["class_weight"] = cw
    check_linear_extra_outputs(hidden, weight, b, target, chunk_size=5, **{"z_loss": 1e-3, **opts})


def test_lse_alone_gets_gradients_and_the_module_returns_both(device):
    hidden, weight, b, target, _ = make_inputs(6, 8, 20, torch.float32, device, lead=(2, 3))
    h, w = leaves(hidden, weight)
    _, lse = softlight.linear_cross_entropy(h, w, target, b, return_lse=True, chunk_size=4)
    lse.sum().backward()  # the loss is not used: only the LSE's gradient flows
    h2, w2 = leaves(hidden, weight)
    torch.logsumexp(F.linear(h2, w2, b), -1).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    criterion = softlight.LinearCrossEntropyLoss(z_loss=1e-3, return_lse=True, return_z_loss=True)
    loss, lse, z_term = criterion(hidden, weight, target, b)
    assert lse.shape == (2, 3) and z_term.shape == () and loss > z_term > 0
