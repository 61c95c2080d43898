"""The benchmark's vocabulary, without torch: ops, directions, dtypes, shapes and the bytes model.

The report and compare commands read results tables with nothing but this module, pandas and
matplotlib, so that a table can be re-rendered on any machine.
"""

import re

__all__ = [
    "OPS",
    "DIRECTIONS",
    "DTYPES",
    "ELEMENT_BYTES",
    "TARGET_BYTES",
    "bytes_moved",
    "dtype_name",
    "parse_shape",
    "slugify",
    "UsageError",
]

OPS = ("softmax", "log_softmax", "cross_entropy")
DIRECTIONS = ("forward", "backward", "forward+backward")
DTYPES = ("bfloat16", "float16", "float32")
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Cross-entropy targets are int64 class indices, one per row.
TARGET_BYTES = 8

class UsageError(ValueError):
    """Bad input from the command line or a file: the CLI prints it without a traceback."""


_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_name(name: str) -> str:
    """The canonical dtype name for `name` (bfloat16/float16/float32, or bf16/fp16/fp32)."""
    canonical = _DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or bf16, fp16, fp32), got {name!r}")
    return canonical


def bytes_moved(op: str, direction: str, rows: int, cols: int, dtype: str) -> int:
    """The fewest bytes `op` must move in `direction` on a (rows, cols) input of `dtype`.

    softmax, log_softmax: forward reads x and writes y (2 N V elements); backward reads y and dy
    and writes dx (3 N V); forward+backward is the two in sequence (5 N V), since y must be
    stored for backward.
    cross_entropy: forward reads the logits and the N targets (N V elements + N targets).
    Backward reads the logits and writes the gradient (2 N V + N targets). Forward+backward
    with the gradient written needs no more than that: a kernel that writes the gradient
    during the forward pass reads the logits once (2 N V + N targets at best).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    elements = rows * cols * ELEMENT_BYTES[dtype_name(dtype)]
    if op == "cross_entropy":
        passes = {"forward": 1, "backward": 2, "forward+backward": 2}[direction]
        return passes * elements + rows * TARGET_BYTES
    passes = {"forward": 2, "backward": 3, "forward+backward": 5}[direction]
    return passes * elements


def parse_shape(text: str) -> tuple[int, int]:
    """'4096x32000' -> (4096, 32000); both sizes must be positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"shape must be ROWSxCOLS with positive integers, e.g. 4096x32000, got {text!r}")
    return int(match[1]), int(match[2])


def slugify(name: str) -> str:
    """A device name as a folder name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not slug:
        raise UsageError(f"device name {name!r} has no letters or digits to name a folder by")
    return slug
