"""What the interpreter hides: writes past the end of a row, and row offsets past 2**31 elements.

The rest of the suite checks values, which neither bug changes on the interpreter. A kernel
storing one element past each row is overwritten by the next row's program (the interpreter runs
them in order; a GPU races), and offsets computed in 32 bits go wrong only past 2**31 elements,
where the GPU-only tests live. Here every kernel that stores writes through views whose rows are
followed by guard columns (tests/guarded.py), and reaches rows placed past 2**31 elements in a
huge, untouched buffer (tests/far_rows.py, in a subprocess: a wrong offset is a wild pointer).
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

import far_rows
import softlight
from guarded import Guards
from softlight import launch
from support import incoming_gradient


def identical(got, want, what):
    """Bit for bit: a row's result must not depend on where the row lives."""
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def random_gradient(shape, device):
    return incoming_gradient(torch.empty(shape, device=device))


def check_writes_stay_in_rows(monkeypatch, run, *kernels, exact=True):
    """run(place) computes outputs and gradients with every input put where `place` says, and every
    tensor softlight allocates in guarded memory. With contiguous inputs (guarded only before and
    after: a plain tensor would let a stray write corrupt the heap) it gives the expected results;
    with guard columns after every input row it must give the same, and either way leave every
    guard as it was and launch `kernels` (name, constexprs): the paths the test means to cover."""
    guards = Guards().install(monkeypatch)
    expected = run(lambda t, per_row=True: guards.copy_of(t, per_row=False, what="contiguous input"))
    got = run(guards.copy_of)
    guards.check()
    for name, constexprs in kernels:
        assert guards.ran(name, **constexprs), f"{name} {constexprs} never ran; launches: {guards.launches}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if exact:
            identical(g, e, f"result {i}")
        else:  # the chunk logits' matmuls meet strided operands, which may change their last bits
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)


# Rows of 45 columns: never a whole number of blocks, so every block mask matters. Short rows share
# a program (single block); the streamed path is forced with a small block limit.
N_ROWS, N_COLS = 5, 45
PATHS = ["single block", "streamed"]


def use_path(launch_policy, path):
    if path == "streamed":
        launch_policy(row_block_limit=16, chunk=16)


def two_row_groups(place, t):
    """t (A, B, cols) placed as a transposed view, whose rows' strides do not merge into one: a
    row index past the last then lands past the tensor, never back on row 0 (as it would with
    a single group of rows, hiding a tile that writes one row too many)."""
    return place(t.transpose(0, 1)).transpose(0, 1)


@pytest.mark.parametrize("path", [*PATHS, "columns strided"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_writes_stay_in_rows(op, path, monkeypatch, launch_policy, device):
    use_path(launch_policy, path)
    fn = getattr(softlight, op)
    shape, dim = ((N_COLS, N_ROWS), 0) if path == "columns strided" else ((2, 3, N_COLS), -1)
    x0, dy0 = torch.randn(shape, device=device) * 3, torch.randn(shape, device=device)

    def run(place):
        # Over dim 0 the rows have stride 1 and their elements are a buffer row apart.
        put = place if dim == 0 else (lambda t: two_row_groups(place, t))
        leaf = x0.clone().requires_grad_()
        y = fn(put(leaf), dim)
        (dx,) = torch.autograd.grad(y, leaf, put(dy0))
        return y, dx

    single = path != "streamed"
    check_writes_stay_in_rows(monkeypatch, run, ("softmax_forward_kernel", dict(SINGLE_BLOCK=single)),
                              ("softmax_backward_kernel", dict(SINGLE_BLOCK=single)))


CE_CASES = {
    "single block": dict(label_smoothing=0.1, weight=True, reduction="none"),
    "streamed": dict(label_smoothing=0.1, z_loss=1e-3, reduction="none", path="streamed"),
    "probabilities": dict(soft=True, label_smoothing=0.2, weight=True, reduction="sum"),
    "probabilities streamed": dict(soft=True, path="streamed"),
    "split rows": dict(label_smoothing=0.1, weight=True, split=True, reduction="none"),
    "in place": dict(label_smoothing=0.1, inplace_backward=True, reduction="none"),
    "in place streamed": dict(weight=True, inplace_backward=True, path="streamed"),
    "classes on dim 1 of 3": dict(label_smoothing=0.1, shape=(2, N_COLS, 3), reduction="none"),
}


@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_writes_stay_in_rows(case, monkeypatch, launch_policy, device):
    opts = dict(CE_CASES[case])
    use_path(launch_policy, opts.pop("path", "single block"))
    if opts.pop("split", False):  # few rows: each row's classes split over programs, then combined
        launch_policy(target_programs=64, chunk=16)
    shape = opts.pop("shape", (N_ROWS, N_COLS))
    soft, weighted = opts.pop("soft", False), opts.pop("weight", False)
    x0 = torch.randn(shape, device=device) * 3
    row_shape = shape[:1] + shape[2:]
    if soft:
        target0 = torch.softmax(torch.randn(shape, device=device), 1)
    else:
        target0 = torch.randint(0, N_COLS, row_shape, device=device)
    weight0 = torch.rand(N_COLS, device=device) + 0.1 if weighted else None
    grad0 = random_gradient(row_shape if opts.get("reduction") == "none" else (), device)
    inplace = opts.get("inplace_backward", False)

    def run(place):
        leaf = x0.clone().requires_grad_()
        x = place(leaf * 1.0 if inplace else leaf)  # in place needs logits that are not a leaf
        weight = None if weight0 is None else place(weight0, per_row=False)
        target = place(target0, per_row=soft)
        loss = softlight.cross_entropy(x, target, weight, **opts)
        (dx,) = torch.autograd.grad(loss, leaf, place(grad0, per_row=False))
        return loss, dx

    split = case == "split rows"
    kernels = [("cross_entropy_forward_kernel", dict(SPLIT=split, SOFT_TARGET=soft)),
               ("cross_entropy_backward_kernel", dict(SOFT_TARGET=soft))]
    if split:
        kernels.append(("cross_entropy_combine_kernel", {}))
    check_writes_stay_in_rows(monkeypatch, run, *kernels)


@pytest.mark.parametrize("outputs", ["logp", "logp and entropy", "entropy alone"])
@pytest.mark.parametrize("path", PATHS)
def test_token_logprobs_writes_stay_in_rows(path, outputs, monkeypatch, launch_policy, device):
    use_path(launch_policy, path)
    x0 = torch.randn(N_ROWS, N_COLS, device=device) * 3
    ids0 = torch.randint(0, N_COLS, (N_ROWS,), device=device)
    g_logp, g_entropy = random_gradient((N_ROWS,), device), random_gradient((N_ROWS,), device)
    entropy = outputs != "logp"

    def run(place):
        leaf = x0.clone().requires_grad_()
        out = softlight.token_logprobs(place(leaf), place(ids0, per_row=False), return_entropy=entropy)
        logp, ent = out if entropy else (out, None)
        used = {"logp": [logp], "entropy alone": [ent], "logp and entropy": [logp, ent]}[outputs]
        grads = {"logp": [g_logp], "entropy alone": [g_entropy], "logp and entropy": [g_logp, g_entropy]}[outputs]
        (dx,) = torch.autograd.grad(used, leaf, [place(g, per_row=False) for g in grads])
        return (logp, dx) if ent is None else (logp, ent, dx)

    check_writes_stay_in_rows(
        monkeypatch, run, ("token_logprobs_forward_kernel", dict(ENTROPY=entropy)),
        ("token_logprobs_backward_kernel", dict(LOGP_GRAD=outputs != "entropy alone", ENTROPY_GRAD=entropy)))


# The memory-lean losses hold their chunk logits internally; the tests route them through guarded
# memory (Guards.install), with the per-row statistics, so the row kernels that make each row's
# loss and then overwrite the logits with their gradient write through guard columns too. (The
# streamed paths of those kernels are covered above; here the chunking is what is new.)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_writes_stay_in_rows(reduction, monkeypatch, launch_policy, device):
    hidden0, weight0 = torch.randn(7, 8, device=device), torch.randn(N_COLS, 8, device=device) * 0.7
    bias0 = torch.randn(N_COLS, device=device) * 0.5
    target0 = torch.randint(0, N_COLS, (7,), device=device)
    target0[2] = -100
    grad0 = random_gradient((7,) if reduction == "none" else (), device)

    def run(place):
        leaves = [t.clone().requires_grad_() for t in (hidden0, weight0, bias0)]
        loss = softlight.linear_cross_entropy(*leaves[:2], place(target0, per_row=False), leaves[2],
                                              reduction=reduction, label_smoothing=0.1, z_loss=1e-3, chunk_size=3)
        return loss, *torch.autograd.grad(loss, leaves, place(grad0, per_row=False))

    check_writes_stay_in_rows(monkeypatch, run, ("cross_entropy_forward_kernel", {}),
                              ("cross_entropy_backward_kernel", {}), exact=False)


def test_linear_token_logprobs_writes_stay_in_rows(monkeypatch, launch_policy, device):
    hidden0, weight0 = torch.randn(7, 8, device=device), torch.randn(N_COLS, 8, device=device) * 0.7
    ids0 = torch.randint(0, N_COLS, (7,), device=device)
    g_logp, g_entropy = random_gradient((7,), device), random_gradient((7,), device)

    def run(place):
        leaves = [t.clone().requires_grad_() for t in (hidden0, weight0)]
        logp, entropy = softlight.linear_token_logprobs(*leaves, place(ids0, per_row=False), return_entropy=True,
                                                        chunk_size=3)
        return logp, entropy, *torch.autograd.grad((logp, entropy), leaves, (g_logp, g_entropy))

    check_writes_stay_in_rows(monkeypatch, run, ("token_logprobs_forward_kernel", dict(ENTROPY=True)),
                              ("token_logprobs_backward_kernel", dict(ENTROPY_GRAD=True)), exact=False)


def test_guards_see_a_write_past_a_row():
    """The guards themselves: a store one past the end of each row is reported, with where."""
    guards = Guards()
    view = guards.empty((3, 4), torch.float32, "cpu")
    view.as_strided((3,), (view.stride(0),), view.storage_offset() + 4).fill_(1.0)  # column 4 of every row
    with pytest.raises(AssertionError, match="3 guard element.*row 0, column 4"):
        guards.check()


# ---------------------------------------------------------------------------------------------
# Offsets past 2**31 elements.


def test_rows_past_2_31_elements_are_read_and_written_in_place():
    """Every case of far_rows.py, in a subprocess that is started again after a case that
    crashed, so that each case reports."""
    seed = int(torch.randint(0, 2**31 - 1, ()))  # replayable: drawn from the test's own seed
    env = {**os.environ, "TRITON_INTERPRET": "1", "SOFTLIGHT_SEED": str(seed)}
    results, remaining = {}, list(far_rows.CASES)
    while remaining:
        proc = subprocess.run([sys.executable, far_rows.__file__, *remaining], capture_output=True, text=True,
                              env=env, timeout=600)
        if proc.stdout.startswith("skip:"):
            pytest.skip(proc.stdout.strip())
        started = None
        for line in proc.stdout.splitlines():
            verdict, _, rest = line.partition(" ")
            if verdict == "start":
                started = rest
            elif verdict in ("pass", "fail"):
                name, _, why = rest.partition(": ")
                results[name] = why or "pass"
                started = None
        if started is not None or proc.returncode != 0:
            crashed = started or ("on exit" if results else "before any case")
            how = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit status {proc.returncode}"
            results[crashed] = f"crashed ({how}): {proc.stderr.strip()[-300:]}"
            if started is None:
                break
        remaining = [name for name in remaining if name not in results]
    failed = {name: why for name, why in results.items() if why != "pass"}
    assert not failed and len(results) == len(far_rows.CASES), "\n".join(f"{k}: {v}" for k, v in failed.items())
