"""How far a result is from the reference, and how far it may be: the numerics contract in one place.

Both the tests and ``softlight check`` judge a kernel's output by its relative norm error against
the float64 reference, ||out - ref|| / ||ref||, with the tolerances below (about one ulp of the
output dtype, with room for the accumulation in fp32).
"""

import numpy as np

__all__ = ["TOLERANCE", "relative_error"]

# Relative norm error allowed per output dtype (keyed by name so that this module needs no torch).
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| over the entries where the reference is finite.

    Non-finite entries must match exactly: NaN where the reference is NaN, the same infinity
    where it is infinite. Any mismatch there, or a non-finite output where the reference is
    finite, makes the error infinite, so NaN never passes by accident. When the reference is
    zero everywhere the absolute norm error is returned.
    """
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {out.shape} vs ref {ref.shape}")
    finite = np.isfinite(ref)
    same_nonfinite = (np.isnan(out) & np.isnan(ref)) | (out == ref)
    if not np.all(same_nonfinite[~finite]) or not np.all(np.isfinite(out[finite])):
        return float("inf")
    diff = np.linalg.norm(out[finite] - ref[finite])
    scale = np.linalg.norm(ref[finite])
    return float(diff / scale) if scale > 0 else float(diff)
