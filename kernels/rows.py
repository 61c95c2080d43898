"""One way to normalise shapes: every tensor a kernel meets is seen as rows.

The kernels never see a tensor's shape. They see *rows*: a reduction over ``dim`` of a tensor
of any rank and any strides is a set of independent rows of ``n_cols`` elements. Row ``r`` is
split into an (outer, inner) pair, ``r = outer * n_inner + inner``, and element ``c`` of the row
lives at ``outer * stride_outer + inner * stride_inner + c * stride_col``. Two row strides are
enough for a contiguous tensor reduced over any dim (outer: the dims before it, inner: the dims
after it), and for transposed, sliced or expanded views as long as the dims other than ``dim``
collapse into at most two strided groups; only the rare view that does not is copied first.

Tensors that travel with the rows share that one view: per-element ones (shaped like the input:
outputs, gradients, probability targets) as they are, and per-row ones (the input's shape
without ``dim``: class indices, per-row gradients) through a stride-0 ``dim``.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["RowLayout", "RowViews", "row_layout", "row_views", "row_offset"]


@dataclass(frozen=True)
class RowLayout:
    n_outer: int
    n_inner: int
    n_cols: int
    # (stride_outer, stride_inner, stride_col) of each tensor, in the order they were given.
    strides: tuple

    @property
    def n_rows(self) -> int:
        return self.n_outer * self.n_inner


def row_layout(dim: int, *tensors: torch.Tensor) -> RowLayout | None:
    """The row view shared by tensors of one shape reduced over `dim`, or None when their
    strides do not collapse into two row strides."""
    shape = tensors[0].shape
    dim = dim % max(len(shape), 1)
    n_cols = shape[dim] if len(shape) else 1
    # Dims other than `dim`, each as (size, its stride in every tensor); size-1 dims carry nothing.
    dims = [(shape[d], [t.stride(d) for t in tensors]) for d in range(len(shape)) if d != dim and shape[d] != 1]
    groups = []
    for size, strides in dims:
        # The previous group steps over this dim exactly when, in every tensor, its stride is
        # this dim's stride times this dim's size: then the two are one dim.
        if groups and all(gs == s * size for gs, s in zip(groups[-1][1], strides)):
            groups[-1] = (groups[-1][0] * size, strides)
        else:
            groups.append((size, strides))
    if len(groups) > 2:
        return None
    groups = [(1, [0] * len(tensors))] * (2 - len(groups)) + groups
    (n_outer, outer), (n_inner, inner) = groups
    col = [t.stride(dim) if t.dim() else 1 for t in tensors]
    return RowLayout(n_outer, n_inner, n_cols, tuple(zip(outer, inner, col)))


@dataclass
class RowViews:
    """The rows of x and of the tensors that travel with them: `tensors[name]` is what a kernel
    gets (x itself under "x"; a contiguous copy when the strides forced one) and `strides[name]`
    its (stride_outer, stride_inner, stride_col)."""

    layout: RowLayout
    tensors: dict
    strides: dict

    def __getitem__(self, name):
        return self.tensors[name]

    def args(self, name, n_strides=3) -> tuple:
        """A tensor and its first n_strides row strides, as a kernel takes them."""
        return (self.tensors[name], *self.strides[name][:n_strides])

    def write_back(self, name, out: torch.Tensor) -> None:
        """Copy a per-element result into `out` when the strides forced a contiguous stand-in."""
        if self.tensors[name] is not out:
            out.copy_(self.tensors[name])


def row_views(dim: int, x: torch.Tensor, per_row: dict | None = None, per_element: dict | None = None,
              new: dict | None = None) -> RowViews:
    """One row layout over `dim` for x, `per_row` tensors (x's shape without dim), `per_element`
    tensors (x's shape) and `new` outputs (name -> dtype), allocated like x (keeping its memory
    layout when it is dense). Only when the strides cannot share one layout are the tensors made
    contiguous (and the new outputs allocated contiguous)."""
    per_row, per_element, new = per_row or {}, per_element or {}, new or {}
    dim = dim % max(x.dim(), 1)

    def attempt(x, per_row, per_element, outputs):
        tensors = {"x": x, **per_row, **per_element, **outputs}
        views = [t.unsqueeze(dim).expand(x.shape) if n in per_row else t for n, t in tensors.items()]
        return tensors, row_layout(dim, *views)

    outputs = {n: torch.empty_like(x, dtype=dt) for n, dt in new.items()}
    tensors, layout = attempt(x, per_row, per_element, outputs)
    if layout is None:
        contiguous = {n: t.contiguous() for n, t in {**per_row, **per_element}.items()}
        outputs = {n: torch.empty(x.shape, dtype=dt, device=x.device) for n, dt in new.items()}
        tensors, layout = attempt(x.contiguous(), {n: contiguous[n] for n in per_row},
                                  {n: contiguous[n] for n in per_element}, outputs)
    return RowViews(layout, tensors, dict(zip(tensors, layout.strides)))


@triton.jit
def row_offset(row, n_inner, stride_outer, stride_inner):
    """Offset in elements (int64) of the first element of row `row` of a RowLayout."""
    outer = row // n_inner
    inner = row - outer * n_inner
    return outer.to(tl.int64) * stride_outer + inner.to(tl.int64) * stride_inner
