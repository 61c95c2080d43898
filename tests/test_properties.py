"""Properties every input must satisfy, checked on inputs hypothesis draws (HYPOTHESIS_PROFILE=long
for a thorough run)."""

import contextlib

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import softlight
from softlight import launch
from softlight.reference import TOLERANCE, relative_error
from softlight.reference import softmax as softmax_reference
from support import DTYPES, dtype_name, rounded, to_numpy

SCALES = [1e-3, 1.0, 10.0, 300.0]


@st.composite
def logits(draw, max_rows=4, max_cols=300, dtypes=DTYPES):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    scale = draw(st.sampled_from(SCALES))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=g) * scale).to(dtype)
    return x.to("cpu" if softlight.INTERPRETED else "cuda")


@contextlib.contextmanager
def block_limit(limit):
    """Force streaming by lowering the longest row held on chip (a context manager, since
    hypothesis and pytest's function-scoped fixtures do not mix)."""
    with launch.use_policy(row_block_limit=limit, chunk=limit):
        yield


def eps(dtype):
    return torch.finfo(dtype).eps


@given(st.integers(1, 4), st.integers(1, 200), st.sampled_from(DTYPES), st.sampled_from([16.0, 64.0, -128.0]),
       st.integers(0, 2**31 - 1))
def test_shift_invariance_is_exact(rows, cols, dtype, shift, seed):
    """Integer logits and shifts are exact in every dtype, and x - max is computed exactly, so
    adding a constant changes no bit of the output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-16, 17, (rows, cols), generator=g).to(dtype)
    if not softlight.INTERPRETED:
        x = x.cuda()
    for fn in (softlight.softmax, softlight.log_softmax):
        assert torch.equal(fn(x + shift), fn(x))


@given(logits())
def test_rows_sum_to_one_and_log_softmax_is_consistent(x):
    p = softlight.softmax(x)
    logp = softlight.log_softmax(x)
    sums = to_numpy(p).sum(-1)
    cols = x.shape[-1]
    # Each output is rounded once (relative error <= eps/2) on top of a normaliser good to an ulp.
    assert np.all(np.abs(sums - 1) <= 2 * eps(x.dtype) + cols * 1e-9), sums
    assert torch.all(logp <= 0)
    # softmax == exp(log_softmax), up to the rounding of each: log p is off by up to half an ulp
    # of |log p|, which exp turns into a relative error of eps * |log p| / 2.
    lp, pp = to_numpy(logp), to_numpy(p)
    allowed = eps(x.dtype) * (np.abs(lp) + 2) * pp + torch.finfo(x.dtype).tiny
    assert np.all(np.abs(np.exp(lp) - pp) <= allowed)


@given(logits(), st.data())
def test_cross_entropy_is_nonnegative_and_its_gradient_is_softmax_minus_target(x, data):
    rows, cols = x.shape
    target = torch.tensor(data.draw(st.lists(st.integers(0, cols - 1), min_size=rows, max_size=rows)), device=x.device)
    xg = x.clone().requires_grad_()
    loss = softlight.cross_entropy(xg, target, reduction="none")
    assert torch.all(loss >= 0)
    loss.sum().backward()
    g = to_numpy(xg.grad)
    # Each row of softmax - onehot sums to 0, up to one rounding per entry.
    assert np.all(np.abs(g.sum(-1)) <= 2 * eps(x.dtype) * (np.abs(g).sum(-1) + 1))
    expected = softmax_reference(to_numpy(x)) - np.eye(cols)[target.cpu().numpy()]
    assert relative_error(g, rounded(expected, x.dtype)) <= TOLERANCE[dtype_name(x.dtype)]


@given(logits(max_rows=3, max_cols=64, dtypes=[torch.float32]), st.data())
def test_cross_entropy_gradient_with_smoothing_and_weights_sums_as_expected(x, data):
    """With weights the gradient is no longer a difference of distributions; with smoothing
    alone it still sums to zero."""
    rows, cols = x.shape
    target = torch.tensor(data.draw(st.lists(st.integers(0, cols - 1), min_size=rows, max_size=rows)), device=x.device)
    xg = x.clone().requires_grad_()
    softlight.cross_entropy(xg, target, reduction="sum", label_smoothing=0.2).backward()
    assert np.all(np.abs(to_numpy(xg.grad).sum(-1)) <= 1e-5)


@given(st.integers(2, 300), st.integers(0, 2**31 - 1))
def test_temperature_limits(cols, seed):
    g = torch.Generator().manual_seed(seed)
    # Distinct logits a whole unit apart, so the arg-max is unique and clear.
    x = torch.randperm(cols, generator=g).float()[None]
    if not softlight.INTERPRETED:
        x = x.cuda()
    cold = softlight.softmax(x, temperature=1e-3)
    assert cold.argmax().item() == x.argmax().item() and cold.max().item() == 1.0
    hot = softlight.softmax(x, temperature=1e7)
    assert torch.allclose(hot, torch.full_like(hot, 1.0 / cols), rtol=1e-4)


@given(logits())
def test_memory_layout_changes_nothing(x):
    """The same row read through other strides gives the same bits: the kernel's arithmetic per
    row does not depend on where the row lives."""
    transposed = x.t().contiguous().t()
    padded = torch.zeros(x.shape[0], x.shape[1] + 5, dtype=x.dtype, device=x.device)[:, 2:-3]
    padded.copy_(x)
    for fn in (softlight.softmax, softlight.log_softmax):
        expected = fn(x)
        assert torch.equal(fn(transposed), expected) and torch.equal(fn(padded), expected)
        assert torch.equal(fn(x.t(), dim=0).t(), expected)


@given(logits(max_cols=200), st.sampled_from([4, 16, 64]))
def test_block_size_changes_only_rounding(x, limit):
    """Streaming the row in small blocks reorders sums, so results agree within the tolerance."""
    name = dtype_name(x.dtype)
    target = torch.randint(0, x.shape[1], (x.shape[0],), device=x.device)
    single = [softlight.softmax(x), softlight.log_softmax(x), softlight.cross_entropy(x, target, label_smoothing=0.1)]
    with block_limit(limit):
        streamed = [softlight.softmax(x), softlight.log_softmax(x), softlight.cross_entropy(x, target, label_smoothing=0.1)]
    for a, b in zip(single, streamed):
        assert relative_error(to_numpy(b), to_numpy(a)) <= TOLERANCE[name]
