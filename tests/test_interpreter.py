"""The interpreter's corrections (kernels/interpreter.py) that do not concern numerics: NumPy 2.4
refuses `int()` of a 1-element array that is not 0-d, which Triton 3.6's interpreter used for
every scalar index (`range(start, end, BLOCK)` in a kernel), so every kernel with a loop failed
with "only 0-dimensional arrays can be converted to Python scalars"."""

import operator

import numpy as np
import pytest
import triton.language as tl

import softlight

pytestmark = pytest.mark.skipif(not softlight.INTERPRETED, reason="the interpreter's corrections")


class NumPy24Array(np.ndarray):
    """An array that converts to int as NumPy >= 2.4 does, whatever NumPy is installed."""

    def __int__(self):
        if self.ndim:
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
        return super().__int__()


def _index(patch_lang_tensor, value):
    """operator.index of an interpreter scalar holding `value` as NumPy 2.4 would hold it, with
    tl.tensor patched by `patch_lang_tensor` as a kernel's run patches it."""
    from triton.runtime import interpreter

    data = np.array([value], dtype=np.int32).view(NumPy24Array)
    scalar = tl.core.tensor(interpreter.TensorHandle(data, tl.int32), tl.int32)
    scope = interpreter._LangPatchScope()
    patch_lang_tensor(tl.core.tensor, scope)
    try:
        return operator.index(scalar), list(range(scalar))
    finally:
        scope.restore()


def test_scalar_indices_under_numpy_2_4():
    from triton.runtime import interpreter

    patched = interpreter._patch_lang_tensor
    assert _index(patched, 5) == (5, [0, 1, 2, 3, 4])
    # Triton's own conversion fails on the same array: the simulation is the failure NumPy 2.4 gives.
    with pytest.raises(TypeError, match="only 0-dimensional arrays"):
        _index(patched.__wrapped__, 5)
    assert not hasattr(tl.core.tensor, "__index__")  # restored after the run, as Triton restores its own


def test_kernels_with_loops_run_with_the_installed_numpy():
    """A row longer than a block loops in the kernel (range over blocks): with NumPy >= 2.4 that
    failed before the correction. (CI installs the newest NumPy, so this is NumPy >= 2.4 there.)"""
    import torch

    x = torch.randn(3, 5000)
    target = torch.randint(0, 5000, (3,))
    with softlight.use_policy(row_block_limit=1024):
        loss = softlight.cross_entropy(x, target)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(x, target), rtol=1e-5, atol=1e-6)
