"""Where the kernels run: compiled for a GPU, or as Python through Triton's interpreter.

TRITON_INTERPRET=1, set before triton is imported, makes `triton.jit` hand back interpreted
functions that run on CPU tensors. That is how the tests run without a GPU. The interpreter has a
few differences from the GPU's code that would misreport our numerics; the ones that matter are
corrected here, on the interpreter only.
"""

import functools
import warnings

import triton
import triton.language as tl

__all__ = ["INTERPRETED"]


@triton.jit
def _probe():
    pass


# True when triton.jit hands back interpreted functions: TRITON_INTERPRET=1 was set before
# triton was imported, and the kernels run on CPU tensors through Triton's interpreter.
INTERPRETED = not isinstance(_probe, triton.runtime.JITFunction)


def _bf16_bits_nearest_even(f32):
    """bfloat16 bit patterns of float32 values, rounded to nearest even (NaN kept quiet)."""
    import numpy as np

    bits = np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(f32), (bits >> 16) | np.uint32(0x40), rounded).astype(np.uint16)


def _float32_rounded_to_odd(f64):
    """float32 values of float64 ones, rounded to odd: truncated toward zero, with the last bit
    set when anything was dropped. Rounding that to bf16 (16 fewer bits) then rounds as if from
    the float64 value itself, with no double rounding."""
    import numpy as np

    f64 = np.ascontiguousarray(f64, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = f64.astype(np.float32)
        back = f32.astype(np.float64)
    inexact = (back != f64) & np.isfinite(f64)
    bits = f32.view(np.uint32)
    # One step toward zero where float32's own rounding went away from it (inf becomes the
    # largest finite float32, which still rounds to bf16 inf).
    bits = np.where(inexact & (np.abs(back) > np.abs(f64)), bits - np.uint32(1), bits)
    bits = np.where(inexact, bits | np.uint32(1), bits)
    return bits.astype(np.uint32).view(np.float32)


def _fix_interpreter_bf16_casts():
    """Make the interpreter's casts to bfloat16 round as the GPU's cvt.rn does. Interpreter only.

    Triton 3.6's interpreter gets two of them wrong: float32 -> bf16 truncates (costing bf16
    outputs up to a whole ulp that compiled kernels do not lose), and float64 -> bf16 is a NumPy
    `astype(uint16)` of the value, so it returns garbage (softmax(x, dtype=torch.bfloat16) of a
    float64 x gave NaN, and a float64 output's bf16 gradient zeros or NaN). sm_90 converts
    float64 -> bf16 in one rounding (cvt.rn.bf16.f64); the replacement rounds once as well.
    Other casts, and the compiled kernels, are left as they are; nothing is touched unless the
    interpreter's internals are as expected.
    """
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    cast_impl = getattr(builder, "cast_impl", None)
    if cast_impl is None or getattr(cast_impl, "_softlight_bf16", False):
        return

    def cast_to_bf16_nearest(self, src, dst_type):
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar in (tl.float32, tl.float64):
            f32 = src.data if src.dtype.scalar == tl.float32 else _float32_rounded_to_odd(src.data)
            return interpreter.TensorHandle(_bf16_bits_nearest_even(f32), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    cast_to_bf16_nearest._softlight_bf16 = True
    builder.cast_impl = cast_to_bf16_nearest


def _fix_interpreter_index_conversion():
    """Make the interpreter's scalars usable as indices (`range(start, end, BLOCK)` in a kernel)
    under NumPy >= 2.4. Interpreter only.

    The interpreter holds a scalar as a 1-element, 1-d array and converts it with `int(array)`,
    which NumPy 2.x deprecated for arrays with ndim > 0 and NumPy 2.4 refuses ("only 0-dimensional
    arrays can be converted to Python scalars"): every kernel with a loop failed. `.item()` takes
    the one element out whatever the array's ndim, the value `int(array)` gave before. Nothing is
    touched unless the interpreter's internals are as expected.
    """
    from triton.runtime import interpreter

    patch_lang_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_lang_tensor is None or getattr(patch_lang_tensor, "_softlight_index", False):
        return

    @functools.wraps(patch_lang_tensor)
    def patch_lang_tensor_with_index(tensor, scope):
        patch_lang_tensor(tensor, scope)
        # set_attr after the interpreter's own: the scope restores both, newest first.
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor_with_index._softlight_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor_with_index


if INTERPRETED:
    _fix_interpreter_bf16_casts()
    _fix_interpreter_index_conversion()
    # The interpreter computes masked-off lanes as well (log 0, inf - inf there) and NumPy warns
    # about them; those lanes are never stored, so the warnings say nothing about any result.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
