"""Guarded memory: tensors whose rows are followed by guard columns, for the tests that check every
kernel writes only inside its rows.

Why the rest of the suite cannot see such a bug: the interpreter runs a launch's programs one
after another, so on a contiguous tensor a kernel that writes one element past each row puts the
stray element at the start of the next row, whose own program then overwrites it with the right
value. Every output is right; only the last row's stray write lands outside the tensor, where it
corrupts the heap and crashes somewhere unrelated, if at all. On a GPU the same writes race with
the next row's.

Here every tensor a kernel writes is a view into a larger buffer: each row is followed by GUARD
elements, and as much guard as the tensor spans comes before and after it. Guards hold a known
bit pattern (NaN in copies of inputs, so that reading past a row poisons the result too; a finite
sentinel in outputs) and `Guards.check` finds any that changed. Outputs are allocated inside
softlight by torch.empty / torch.empty_like; `Guards.install` makes those calls, in softlight's
modules that allocate for kernels only, return guarded views, and wraps launch.run (through
which every kernel launch goes) so that whatever a kernel wrote must lie in guarded buffers (a test that silently stopped guarding would otherwise
pass forever).
"""

import inspect
import math
from dataclasses import dataclass, field

import torch

from softlight import (
    cross_entropy_op,
    cross_entropy_rows,
    launch,
    linear_cross_entropy_op,
    linear_token_logprobs_op,
    rows,
    token_logprobs_op,
    token_logprobs_rows,
)

GUARD = 8  # guard elements after every row
OUTPUT_GUARD = -4242.0  # written into the guards of allocated outputs, whose rows start as NaN
INDEX_GUARD = 12345  # the guards of integer tensors (an out-of-range class if ever read)

# Modules whose torch.empty / torch.empty_like allocate what the kernels write.
ALLOCATING_MODULES = (rows, cross_entropy_rows, cross_entropy_op, token_logprobs_rows, token_logprobs_op,
                      linear_cross_entropy_op)
# Modules that make the linear losses' chunk logits with linear_chunks.linear.
LINEAR_MODULES = (linear_cross_entropy_op, linear_token_logprobs_op)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as same-sized integers, to compare bit for bit (NaN included)."""
    if t.dtype.is_floating_point:
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


@dataclass
class Buffer:
    what: str
    flat: torch.Tensor  # the whole buffer, guards included
    view: torch.Tensor  # what the caller gets
    row_len: int  # elements per buffer row (the view's last dim plus GUARD), or 0 for a flat layout
    lead: int  # guard elements before the view
    guard: torch.Tensor = field(init=False)  # True where the buffer is guard
    expected: torch.Tensor = field(init=False)  # the guards' bits as written

    def __post_init__(self):
        inside = torch.zeros(self.flat.shape, dtype=torch.bool, device=self.flat.device)
        inside.as_strided(self.view.shape, self.view.stride(), self.view.storage_offset()).fill_(True)
        self.guard = ~inside
        self.expected = _bits(self.flat)[self.guard].clone()

    def contains(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() == self.flat.untyped_storage().data_ptr()

    def damage(self) -> str | None:
        """Where the guards no longer hold what was written into them, or None."""
        changed = (_bits(self.flat)[self.guard] != self.expected).nonzero().flatten()
        if not len(changed):
            return None
        where = self.guard.nonzero().flatten()[changed][:6].tolist()
        if self.row_len:
            spots = [f"row {(i - self.lead) // self.row_len}, column {(i - self.lead) % self.row_len}" for i in where]
        else:
            spots = [f"element {i - self.lead}" for i in where]
        return f"{self.what}: {len(changed)} guard element(s) overwritten, at " + "; ".join(spots)


class Guards:
    """A registry of guarded buffers: allocate, install into softlight, check."""

    def __init__(self):
        self.buffers: list[Buffer] = []
        self.launches: list[tuple[str, dict, list]] = []  # kernel, constexprs, tensors written

    def empty(self, shape, dtype, device, per_row=True, what="tensor") -> torch.Tensor:
        """An uninitialised-looking tensor (NaN, or -1 for integers) of `shape` inside a guarded
        buffer: with per_row, GUARD elements follow each row (its last dim); either way guards
        come before and after."""
        shape = tuple(shape)
        cols = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if shape else 1
        row_len = cols + GUARD if per_row else cols
        # As much guard before and after as the tensor spans: a tile that goes one row too far
        # steps a whole group of rows past the end when the rows' strides form two groups.
        margin = (rows + 2) * row_len + GUARD
        fill = math.nan if dtype.is_floating_point else -1
        flat = torch.full((margin + rows * row_len + margin,), OUTPUT_GUARD if dtype.is_floating_point else INDEX_GUARD,
                          dtype=dtype, device=device)
        strides = tuple(math.prod(shape[i + 1:-1]) * row_len for i in range(len(shape) - 1)) + ((1,) if shape else ())
        view = flat.as_strided(shape, strides, margin)
        view.fill_(fill)
        self.buffers.append(Buffer(f"{what} {shape} {dtype}", flat, view, row_len if per_row and shape else 0, margin))
        return view

    def copy_of(self, t: torch.Tensor, per_row=True, what="input") -> torch.Tensor:
        """t's values (differentiably, when t requires grad) in a guarded view whose guards hold NaN,
        so that a kernel reading past a row reads NaN."""
        view = self.empty(t.shape, t.dtype, t.device, per_row, what)
        buf = self.buffers[-1]
        if t.dtype.is_floating_point:
            buf.flat.masked_fill_(buf.guard, math.nan)
            buf.expected = _bits(buf.flat)[buf.guard].clone()
        view.copy_(t)
        return view

    def owner(self, t: torch.Tensor) -> Buffer | None:
        return next((b for b in self.buffers if b.contains(t)), None)

    def check(self):
        damage = [d for d in (b.damage() for b in self.buffers) if d]
        assert not damage, "a kernel wrote outside its rows:\n" + "\n".join(damage)

    def ran(self, kernel: str, **constexprs) -> bool:
        """Whether `kernel` was launched (with these constexpr values) and wrote something."""
        return any(name == kernel and written and all(args.get(k) == v for k, v in constexprs.items())
                   for name, args, written in self.launches)

    # -----------------------------------------------------------------------------------------
    # Installing into softlight.

    def install(self, monkeypatch):
        """Route softlight's allocations through this registry, and check each kernel launch."""
        for module in ALLOCATING_MODULES:
            monkeypatch.setattr(module, "torch", _GuardedTorch(self))
        for module in LINEAR_MODULES:
            monkeypatch.setattr(module, "linear", self._linear(module.linear))
        monkeypatch.setattr(launch, "run", _CheckedRun(self, launch.run))
        return self

    def _linear(self, linear):
        """The memory-lean losses' chunk logits, made in a guarded buffer: the row kernels overwrite
        them with their gradient in place."""

        def guarded(hidden, weight, bias):
            logits = linear(hidden, weight, bias)
            return self.empty(logits.shape, logits.dtype, logits.device, what="chunk logits").copy_(logits)

        return guarded


class _GuardedTorch:
    """Stands in for the torch module inside softlight's kernel modules: torch.empty_like (how they
    allocate outputs strided like the input, written through row strides) gives views with guard
    columns; torch.empty (per-row statistics, indexed as contiguous) gives contiguous views with
    guards before and after. Everything else is torch's."""

    def __init__(self, guards: Guards):
        self._guards = guards

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty_like(self, like, *, dtype=None, device=None, **_):
        return self._guards.empty(like.shape, dtype or like.dtype, device or like.device, what="empty_like")

    def empty(self, *size, dtype=None, device=None, **_):
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        return self._guards.empty(shape, dtype or torch.get_default_dtype(), device or "cpu", per_row=False,
                                  what="empty")


class _CheckedRun:
    """launch.run whose launches record their constexprs and what they wrote, and fail unless every
    tensor the kernel wrote to lies in a guarded buffer (a test whose outputs escaped the guards
    would otherwise pass whatever the kernel does)."""

    def __init__(self, guards: Guards, run):
        self.guards, self.run = guards, run

    def __call__(self, kernel, grid, *args, num_warps, **constexprs):
        name = kernel.__name__
        bound = inspect.signature(kernel.fn).bind_partial(*args, **constexprs).arguments
        tensors = {k: v for k, v in bound.items() if isinstance(v, torch.Tensor)}
        before = {k: _bits(v).clone() for k, v in tensors.items()}
        self.run(kernel, grid, *args, num_warps=num_warps, **constexprs)
        written = [k for k, v in tensors.items() if not torch.equal(_bits(v), before[k])]
        for arg in written:
            assert self.guards.owner(tensors[arg]) is not None, (
                f"{name} wrote {arg}, which is not in a guarded buffer: this test cannot see writes past it")
        self.guards.launches.append((name, {k: v for k, v in bound.items() if k.isupper()}, written))
