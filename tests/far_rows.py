"""Rows past 2**31 elements, on the CPU: `python far_rows.py CASE...` runs the named cases and
prints `start CASE`, then `pass CASE` or `fail CASE: why`, for test_out_of_bounds.py, which runs it
in a subprocess because a wrong offset there is a wild pointer that may kill the process.

A kernel that computes a row's offset (row index times row stride) in 32 bits is right until the
offset passes 2**31 elements, which only a GPU-sized tensor reaches. Here the rows are views into
large torch.empty buffers (4 GiB of address space each) whose pages are never touched except near
the rows themselves (the operating system backs untouched pages with nothing), so a few MiB of
real memory reach offsets past 2**31. The row stride S fits in 32 bits, as kernels receive it,
but 2 S does not: row 2 of a view is in the right place only if the kernel's arithmetic is
64-bit. Each case puts a few short rows at 0, S and 2 S (through the outer or the inner stride of
the row layout, or as the stride between a row's own elements), makes softlight's
torch.empty_like place its outputs the same way, and checks every value against the same op on
compact copies, bit for bit, and that the elements around each row still hold the sentinel
written there.
"""

import contextlib
import itertools
import math
import os
import sys
from functools import partial

if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: CPU tensors, the interpreter

import torch  # noqa: E402

import softlight  # noqa: E402
from softlight import cross_entropy_op, rows, token_logprobs_op  # noqa: E402

S = 2**30 + 4096  # < 2**31, but 2 * S is not
NEAR = 64  # the stride of a row layout's other group, which stays small
WINDOW = 2048  # elements kept as sentinel from each of 0, S and 2 S, but where tensors are placed
SLOT = 128  # columns of the window each tensor gets
SENTINEL = -99


class FarMemory:
    """Huge never-touched buffers in which tensors are placed at far offsets: the inputs share one
    per dtype; every output gets its own (a custom op's outputs may not share storage with its
    inputs)."""

    def __init__(self):
        self.buffers = []  # [flat tensor, element offsets of the tensors placed in it]
        self.shared = {}
        self.slots = 0

    def _buffer(self, dtype, fresh):
        if fresh or dtype not in self.shared:
            flat = torch.empty(2 * S + WINDOW, dtype=dtype)
            for start in (0, S, 2 * S):
                flat[start:start + WINDOW].fill_(SENTINEL)
            self.buffers.append((flat, set()))
            if not fresh:
                self.shared[dtype] = self.buffers[-1]
            return self.buffers[-1]
        return self.shared[dtype]

    def view(self, shape, strides, dtype, values=None):
        """A view of `shape` and `strides` at the next free slot: an input holding `values`, or,
        without them, an output in a buffer of its own, holding NaN."""
        base = self.slots * SLOT
        self.slots += 1
        assert base + SLOT + NEAR <= WINDOW, "out of slots"
        flat, used = self._buffer(dtype, fresh=values is None)
        t = flat.as_strided(shape, strides, base)
        if values is None:
            t.fill_(math.nan if dtype.is_floating_point else 0)
        else:
            t.copy_(values)
        indices = itertools.product(*map(range, shape))
        used.update(base + sum(i * s for i, s in zip(index, strides)) for index in indices)
        return t

    def is_far(self, t):
        return any(t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for flat, _ in self.buffers)

    def check_guards(self):
        for flat, used in self.buffers:
            for start in (0, S, 2 * S):
                window = flat[start:start + WINDOW]
                written = (window != SENTINEL).nonzero().flatten().tolist()
                changed = [start + i for i in written if start + i not in used]
                assert not changed, f"{flat.dtype} elements written beside the rows, at offsets {changed[:6]}"


class _FarTorch:
    """torch, but torch.empty_like of a far tensor places its result far too, with the same strides
    (how softlight allocates outputs shaped like the input)."""

    def __init__(self, memory):
        self._memory = memory

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty_like(self, like, *, dtype=None, **kwargs):
        if self._memory.is_far(like):
            return self._memory.view(like.shape, like.stride(), dtype or like.dtype)
        return torch.empty_like(like, dtype=dtype, **kwargs)


@contextlib.contextmanager
def far_outputs(memory):
    """Within the block, softlight's torch.empty_like places the outputs of far inputs far too."""
    modules = (rows, cross_entropy_op, token_logprobs_op)
    for module in modules:
        module.torch = _FarTorch(memory)
    try:
        yield
    finally:
        for module in modules:
            module.torch = torch


def same(got, want, what):
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


# (shape, strides) of rows of `cols` elements S apart: through the row layout's outer group of rows,
# or its inner group.
def layouts(cols):
    return {
        "outer": ((3, 2, cols), (S, NEAR, 1)),
        "inner": ((2, 3, cols), (NEAR, S, 1)),
    }


def softmax_case(op, layout):
    fn = getattr(softlight, op)
    memory = FarMemory()
    if layout == "columns":  # reduced over dim 0, whose elements are S apart
        shape, strides, dim = (3, 4), (S, 1), 0
    else:
        (shape, strides), dim = layouts(5)[layout], -1
    x0, dy0 = torch.randn(shape).mul(3).half(), torch.randn(shape).half()
    x = memory.view(shape, strides, torch.float16, x0).requires_grad_()
    dy = memory.view(shape, strides, torch.float16, dy0)
    with far_outputs(memory):
        y = fn(x, dim)
        (dx,) = torch.autograd.grad(y, x, dy)
    assert memory.is_far(y) and memory.is_far(dx), "the outputs were not placed far: this case tests nothing"
    xc = x0.clone().requires_grad_()
    yc = fn(xc, dim)
    (dxc,) = torch.autograd.grad(yc, xc, dy0)
    same(y, yc, f"{op} forward")
    same(dx, dxc, f"{op} backward")
    memory.check_guards()


def cross_entropy_case(layout, inplace=False):
    memory = FarMemory()
    n_classes = 3 if layout == "columns" else 6
    if layout == "columns":  # the classes are S apart
        shape, strides, t_shape, t_strides = (4, n_classes), (1, S), (4,), (1,)
    else:
        # (N, C, d) with classes on dim 1: the row groups are N and d.
        (lead, lead_strides) = {"outer": ((3, 2), (S, NEAR)), "inner": ((2, 3), (NEAR, S))}[layout]
        shape, strides = (lead[0], n_classes, lead[1]), (lead_strides[0], 1, lead_strides[1])
        t_shape, t_strides = lead, lead_strides
    x0 = torch.randn(shape).mul(3).half()
    t0 = torch.randint(0, n_classes, t_shape, dtype=torch.uint8)
    leaf = memory.view(shape, strides, torch.float16, x0).requires_grad_()
    target = memory.view(t_shape, t_strides, torch.uint8, t0)
    opts = dict(label_smoothing=0.1, reduction="sum", inplace_backward=inplace)
    with far_outputs(memory):
        x = leaf.view_as(leaf) if inplace else leaf  # in place needs logits that are not a leaf
        loss = softlight.cross_entropy(x, target, **opts)
        (dx,) = torch.autograd.grad(loss, leaf, torch.tensor(0.75))
    assert inplace or memory.is_far(dx), "the gradient was not placed far: this case tests nothing"
    xc = x0.clone().requires_grad_()
    loss_c = softlight.cross_entropy(xc * 1 if inplace else xc, t0, **opts)
    (dxc,) = torch.autograd.grad(loss_c, xc, torch.tensor(0.75))
    same(loss, loss_c, "cross_entropy loss")
    same(dx, dxc, "cross_entropy gradient")
    if inplace:
        same(leaf.detach(), dxc, "cross_entropy gradient written in place")
    memory.check_guards()


def token_logprobs_case(layout):
    memory = FarMemory()
    if layout == "columns":  # the vocabulary's entries are S apart
        shape, strides, ids_shape, ids_strides = (4, 3), (1, S), (4,), (1,)
    else:
        shape, strides = layouts(7)[layout]
        ids_shape, ids_strides = shape[:-1], strides[:-1]
    x0 = torch.randn(shape).mul(3).half()
    ids0 = torch.randint(0, shape[-1], ids_shape, dtype=torch.uint8)
    x = memory.view(shape, strides, torch.float16, x0).requires_grad_()
    ids = memory.view(ids_shape, ids_strides, torch.uint8, ids0)
    g_logp, g_entropy = torch.rand(ids_shape) + 0.5, torch.rand(ids_shape) - 1.5  # away from 0, as in the suite
    with far_outputs(memory):
        logp, entropy = softlight.token_logprobs(x, ids, return_entropy=True)
        (dx,) = torch.autograd.grad((logp, entropy), x, (g_logp, g_entropy))
    assert memory.is_far(dx), "the gradient was not placed far: this case tests nothing"
    xc = x0.clone().requires_grad_()
    logp_c, entropy_c = softlight.token_logprobs(xc, ids0, return_entropy=True)
    (dxc,) = torch.autograd.grad((logp_c, entropy_c), xc, (g_logp, g_entropy))
    same(logp, logp_c, "token_logprobs logp")
    same(entropy, entropy_c, "token_logprobs entropy")
    same(dx, dxc, "token_logprobs gradient")
    memory.check_guards()


LAYOUTS = ("outer", "inner", "columns")
CASES = {
    **{f"{op} {layout}": partial(softmax_case, op, layout) for op in ("softmax", "log_softmax") for layout in LAYOUTS},
    **{f"cross_entropy {layout}": partial(cross_entropy_case, layout) for layout in LAYOUTS},
    "cross_entropy in place": partial(cross_entropy_case, "inner", inplace=True),
    **{f"token_logprobs {layout}": partial(token_logprobs_case, layout) for layout in LAYOUTS},
}


def main(names):
    seed = int(os.environ.get("SOFTLIGHT_SEED") or 0)
    try:
        FarMemory()._buffer(torch.float16, fresh=True)
    except RuntimeError as e:  # no address space for it: nothing can be tested here
        print(f"skip: cannot reserve {2 * S * 2 / 2**30:.0f} GiB of address space ({e})", flush=True)
        return
    for name in names:
        print(f"start {name}", flush=True)
        torch.manual_seed(seed)  # each case's numbers whatever ran before it (a crash restarts the rest)
        try:
            CASES[name]()
        except AssertionError as e:
            print(f"fail {name}: " + " ".join(str(e).split()), flush=True)
        else:
            print(f"pass {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
