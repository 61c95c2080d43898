"""softlight.token_logprobs and linear_token_logprobs against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

import softlight
from softlight import launch
from softlight import reference as ref
from support import DTYPES, assert_close, to_numpy

OUTPUT_TOLERANCE = 1e-5  # logp and entropy are fp32, within this of float64 whatever the dtype


def random_gradient(like):
    """Incoming gradients of magnitude 0.5 to 2 with random signs (a tiny one would push an fp16
    gradient into the subnormal range, where even the correctly rounded result misses)."""
    sign = torch.randint(0, 2, like.shape, device=like.device) * 2 - 1
    return sign * torch.empty_like(like).uniform_(0.5, 2.0)


def check_against_reference(logits, ids, temperature=1.0, entropy=True, grads=("logp", "entropy")):
    """Outputs within OUTPUT_TOLERANCE of the reference on the same logits, the gradient within the
    logits dtype's tolerance, for the incoming gradients named in `grads`."""
    x = logits.detach().clone().requires_grad_()
    out = softlight.token_logprobs(x, ids, temperature=temperature, return_entropy=entropy)
    logp, ent = out if entropy else (out, None)
    assert logp.dtype == (torch.float64 if logits.dtype == torch.float64 else torch.float32)
    assert logp.shape == ids.shape
    want_logp, want_entropy = ref.token_logprobs(to_numpy(logits), ids.cpu().numpy(), temperature)
    for name, got, want in (("logp", logp, want_logp), ("entropy", ent, want_entropy)):
        if got is not None:
            err = ref.relative_error(to_numpy(got), want)
            assert err <= OUTPUT_TOLERANCE, f"{name} relative error {err:.2e}"
    g_logp = random_gradient(logp) if "logp" in grads else None
    g_entropy = random_gradient(ent) if entropy and "entropy" in grads else None
    total = sum((out_ * g).sum() for out_, g in ((logp, g_logp), (ent, g_entropy)) if g is not None)
    total.backward()
    assert x.grad.dtype == logits.dtype and x.grad.shape == logits.shape
    expected = ref.token_logprobs_backward(to_numpy(logits), ids.cpu().numpy(),
                                           None if g_logp is None else to_numpy(g_logp),
                                           None if g_entropy is None else to_numpy(g_entropy), temperature)
    assert_close(x.grad, expected, what="gradient")
    return out


def make_logits(shape, dtype, device, scale=3.0):
    logits = (torch.randn(shape, device=device) * scale).to(dtype)
    return logits, torch.randint(0, shape[-1], shape[:-1], device=device)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_against_reference(dtype, temperature, device):
    logits, ids = make_logits((4, 6, 517), dtype, device)
    check_against_reference(logits, ids, temperature)


@pytest.mark.parametrize("n_vocab", [2, 5, 3001, 50257])
def test_vocabulary_sizes(n_vocab, device):
    rows = 6 if n_vocab < 10000 else 2
    logits, ids = make_logits((rows, n_vocab), torch.bfloat16, device)
    check_against_reference(logits, ids, temperature=1.3)


def test_streamed_rows_whose_max_grows_block_after_block(launch_policy, device):
    """Small blocks, so A and d are rescaled many times; logits rising along the row move the max
    in every block, and a large offset checks that nothing cancels."""
    launch_policy(chunk=64)
    logits = torch.linspace(-20, 20, 1000, device=device).repeat(3, 1) + torch.randn(3, 1000, device=device)
    logits[1] += 5000.0
    logits[2, :700] = float("-inf")
    ids = torch.tensor([999, 3, 800], device=device)
    check_against_reference(logits, ids, temperature=0.9)


@pytest.mark.parametrize("grads", [("logp",), ("entropy",)])
def test_one_output_alone(grads, device):
    logits, ids = make_logits((5, 300), torch.float32, device)
    check_against_reference(logits, ids, grads=grads)
    if grads == ("logp",):
        check_against_reference(logits, ids, entropy=False)


def test_masked_logits_add_nothing_to_the_entropy(device):
    inf = float("inf")
    logits, ids = make_logits((4, 50), torch.float32, device)
    logits[0, 10:] = -inf  # a row of 10 live tokens
    logits[1, :49] = -inf  # one live token: entropy 0, logp 0
    ids[:2] = torch.tensor([3, 49])
    check_against_reference(logits, ids)
    logp, entropy = softlight.token_logprobs(logits, ids, return_entropy=True)
    assert logp[1] == 0 and entropy[1] == 0
    # torch.special.entr is the torch spelling that also gives 0 for p = 0.
    expected = torch.special.entr(torch.softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(entropy, expected)
    # The chosen token itself masked: log-probability -inf, as torch.
    logp = softlight.token_logprobs(logits[:1], torch.tensor([20], device=device))
    assert logp[0] == -inf


def test_non_finite_rows_match_torch(device):
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor([[-inf] * 4, [0.0, inf, 1.0, 2.0], [0.0, nan, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]], device=device)
    ids = torch.tensor([0, 2, 0, 3], device=device)
    x, xt = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    logp, entropy = softlight.token_logprobs(x, ids, return_entropy=True)
    log_p = torch.log_softmax(xt, -1)
    expected = log_p.gather(-1, ids[:, None])[:, 0]
    torch.testing.assert_close(logp, expected, equal_nan=True)  # NaN, NaN, NaN, finite
    assert torch.isnan(logp[:3]).all() and torch.isnan(entropy[:3]).all() and torch.isfinite(entropy[3])
    logp.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(x.grad, xt.grad, equal_nan=True)


def test_strided_logits_are_read_in_place(device):
    base = torch.randn(6, 200, 4, device=device)
    logits = base.transpose(1, 2)  # (6, 4, 200) with the vocabulary at stride 4
    ids = torch.randint(0, 200, (4, 6), device=device).t()  # a transposed view too
    out = check_against_reference(logits, ids)
    assert out[0].shape == (6, 4)
    check_against_reference(base[:, ::3, 1], torch.randint(0, 67, (6,), device=device))


def test_matches_torch(device):
    for dtype in DTYPES:
        logits, ids = make_logits((3, 7, 301), dtype, device)
        x, xt = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        logp, entropy = softlight.token_logprobs(x, ids, temperature=0.8, return_entropy=True)
        log_p = torch.log_softmax(xt.float() / 0.8, -1)
        expected_logp = log_p.gather(-1, ids[..., None])[..., 0]
        expected_entropy = -(log_p.exp() * log_p).sum(-1)
        assert ref.relative_error(to_numpy(logp), to_numpy(expected_logp)) < OUTPUT_TOLERANCE
        assert ref.relative_error(to_numpy(entropy), to_numpy(expected_entropy)) < OUTPUT_TOLERANCE
        (logp - 0.1 * entropy).sum().backward()
        (expected_logp - 0.1 * expected_entropy).sum().backward()
        assert_close(x.grad, to_numpy(xt.grad))


def test_empty_and_gradcheck(device):
    empty = torch.empty(0, 5, 9, device=device, requires_grad=True)
    logp, entropy = softlight.token_logprobs(empty, torch.empty(0, 5, dtype=torch.long, device=device),
                                             return_entropy=True)
    assert logp.shape == entropy.shape == (0, 5)
    x = torch.randn(3, 2, 6, dtype=torch.float64, device=device, requires_grad=True)
    ids = torch.randint(0, 6, (3, 2), device=device)
    assert torch.autograd.gradcheck(lambda t: softlight.token_logprobs(t, ids, temperature=0.7, return_entropy=True), (x,))
    assert torch.autograd.gradcheck(lambda t: softlight.token_logprobs(t, ids), (x,))


# ---------------------------------------------------------------------------------------------
# linear_token_logprobs


def check_linear_against_reference(hidden, weight, bias, ids, temperature=1.0, chunk_size=None):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    logp, entropy = softlight.linear_token_logprobs(leaves[0], leaves[1], ids, leaves[2], temperature=temperature,
                                                    return_entropy=True, chunk_size=chunk_size)
    assert logp.shape == entropy.shape == ids.shape
    args = (to_numpy(hidden), to_numpy(weight), ids.cpu().numpy())
    bias_np = None if bias is None else to_numpy(bias)
    logits = to_numpy(F.linear(hidden, weight, bias))  # as the unfused composition holds them
    want_logp, want_entropy = ref.linear_token_logprobs(*args, bias_np, temperature, logits=logits)
    assert ref.relative_error(to_numpy(logp), want_logp) <= OUTPUT_TOLERANCE
    assert ref.relative_error(to_numpy(entropy), want_entropy) <= OUTPUT_TOLERANCE
    g_logp, g_entropy = random_gradient(logp), random_gradient(entropy)
    ((logp * g_logp).sum() + (entropy * g_entropy).sum()).backward()
    expected = ref.linear_token_logprobs_backward(*args, to_numpy(g_logp), to_numpy(g_entropy), bias_np, temperature,
                                                  logits=logits)
    for name, got, want in zip(("hidden", "weight", "bias"), leaves, expected):
        if got is not None:
            assert_close(got.grad, want, what=f"d {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_against_reference(dtype, device):
    hidden = torch.randn(2, 9, 32, device=device).to(dtype)
    weight = (torch.randn(211, 32, device=device) * 0.35).to(dtype)
    bias = (torch.randn(211, device=device) * 0.5).to(dtype)
    ids = torch.randint(0, 211, (2, 9), device=device)
    check_linear_against_reference(hidden, weight, bias, ids, temperature=0.9, chunk_size=7)
    check_linear_against_reference(hidden, weight, None, ids)


def test_linear_matches_token_logprobs_of_the_logits(device):
    hidden = torch.randn(11, 16, device=device, requires_grad=True)
    weight = torch.randn(40, 16, device=device, requires_grad=True)
    ids = torch.randint(0, 40, (11,), device=device)
    fused = softlight.linear_token_logprobs(hidden, weight, ids, chunk_size=4)
    unfused = softlight.token_logprobs(hidden @ weight.t(), ids)
    torch.testing.assert_close(fused, unfused)
    g = torch.randn(11, device=device)
    grads = torch.autograd.grad((fused * g).sum(), (hidden, weight))
    expected = torch.autograd.grad((unfused * g).sum(), (hidden, weight))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_linear_gradcheck(device):
    hidden = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    ids = torch.randint(0, 6, (5,), device=device)
    assert torch.autograd.gradcheck(
        lambda h, w, b: softlight.linear_token_logprobs(h, w, ids, b, temperature=1.4, return_entropy=True, chunk_size=2),
        (hidden, weight, bias))


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_rejected(device):
    logits = torch.randn(4, 10, device=device)
    ids = torch.tensor([0, 1, 2, 9], device=device)
    tlp = softlight.token_logprobs
    hidden, weight = torch.randn(4, 8, device=device), torch.randn(10, 8, device=device)
    ltlp = softlight.linear_token_logprobs
    cases = [
        (TypeError, "logits must be a floating-point", lambda: tlp(logits.long(), ids)),
        (ValueError, "0-d", lambda: tlp(torch.tensor(1.0, device=device), ids)),
        (ValueError, "empty vocabulary", lambda: tlp(logits[:, :0], ids)),
        (TypeError, "ids must hold class indices", lambda: tlp(logits, ids.float())),
        (TypeError, "ids must be a torch.Tensor", lambda: tlp(logits, [0, 1, 2, 3])),
        (ValueError, "ids must have shape \\(4,\\)", lambda: tlp(logits, ids[:2])),
        (IndexError, "ids 10 is out of bounds", lambda: tlp(logits, torch.tensor([0, 10, 1, 2], device=device))),
        (IndexError, "ids -1 is out of bounds", lambda: tlp(logits, torch.tensor([0, 1, -1, 2], device=device))),
        (ValueError, "temperature", lambda: tlp(logits, ids, temperature=-1.0)),
        (TypeError, "return_entropy must be a bool", lambda: tlp(logits, ids, return_entropy="yes")),
        (ValueError, "weight has hidden size 8", lambda: ltlp(torch.randn(4, 6, device=device), weight, ids)),
        (TypeError, "weight has dtype", lambda: ltlp(hidden, weight.double(), ids)),
        (ValueError, "bias must have shape", lambda: ltlp(hidden, weight, ids, torch.randn(11, device=device))),
        (ValueError, "ids must have shape \\(4,\\)", lambda: ltlp(hidden, weight, ids[None])),
        (IndexError, "ids 10 is out of bounds", lambda: ltlp(hidden, weight, torch.tensor([0, 10, 1, 2], device=device))),
        (ValueError, "chunk_size must be >= 1", lambda: ltlp(hidden, weight, ids, chunk_size=-2)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.gpu
def test_out_of_range_id_gives_nan_on_gpu():
    logits = torch.randn(3, 10, device="cuda")
    logp = softlight.token_logprobs(logits, torch.tensor([0, 10, -4], device="cuda"))
    assert torch.isfinite(logp[0]) and torch.isnan(logp[1:]).all()


@pytest.mark.parametrize("linear", [False, True])
def test_ignored_positions_give_zero_and_no_gradient(linear, device):
    """ids equal to ignore_index (prompt and padding positions) give 0 for log p and the entropy
    and no gradient; the other rows are exactly what they are without any ignored."""
    hidden = torch.randn(2, 5, 8, device=device)
    weight = torch.randn(60, 8, device=device)
    ids = torch.randint(0, 60, (2, 5), device=device)
    for ignore_index in (-100, 7):
        masked = torch.where(ids == ignore_index, 0, ids)
        masked[0, :3] = ignore_index
        masked[1, 4] = ignore_index
        ignored = masked == ignore_index

        def run(ids_):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            if linear:
                out = softlight.linear_token_logprobs(h, w, ids_, return_entropy=True, chunk_size=3,
                                                      ignore_index=ignore_index)
            else:
                out = softlight.token_logprobs(h @ w.T, ids_, return_entropy=True, ignore_index=ignore_index)
            (out[0] * 2 + out[1]).sum().backward()
            return out, h.grad

        (logp, entropy), grad = run(masked)
        (logp_all, entropy_all), _ = run(torch.where(ignored, ids, masked))
        assert torch.equal(logp[ignored], torch.zeros_like(logp[ignored]))
        assert torch.equal(entropy[ignored], torch.zeros_like(entropy[ignored]))
        assert torch.equal(logp[~ignored], logp_all[~ignored]) and torch.equal(entropy[~ignored], entropy_all[~ignored])
        assert torch.equal(grad[ignored].abs(), torch.zeros_like(grad[ignored]))
        assert grad[~ignored].abs().sum() > 0


def test_out_of_range_message_gives_value_position_and_valid_range(device):
    logits = torch.randn(2, 3, 10, device=device)
    ids = torch.tensor([[0, 1, 2], [3, 70, 4]], device=device)
    with pytest.raises(IndexError, match=r"ids 70 is out of bounds for 10 classes \(at ids\[\(1, 1\)\]; "
                                         r"valid: 0 to 9, or ignore_index=-100\)"):
        softlight.token_logprobs(logits, ids)
