"""The benchmark's vocabulary, without torch: ops, directions, dtypes, shapes, and the work
model of each op (the fewest bytes it must move, or for a matmul-bound op its flops).

The report and compare commands read results tables with nothing but this module, pandas and
matplotlib, so that a table can be re-rendered on any machine.

Two kinds of op. The row ops (softmax, log_softmax, cross_entropy, token_logprobs, and the
divergences distillation_kl and distillation_jsd of a student's logits from a teacher's) take
given (rows, cols) logits and are bound by memory bandwidth: their rate is GB/s against the copy
ceiling. The linear ops (linear_cross_entropy, linear_distillation_jsd) start from hidden states,
logits = hidden @ weight.T, so their shape has a third size, the hidden size H, and their work is
matmuls: their rate is TFLOP/s, and no percent of the copy ceiling applies to them.
"""

import re

__all__ = [
    "OPS",
    "ROW_OPS",
    "LINEAR_OPS",
    "LEAN_OPS",
    "DISTILLATION_OPS",
    "DIRECTIONS",
    "DTYPES",
    "ELEMENT_BYTES",
    "TARGET_BYTES",
    "bytes_moved",
    "matmul_flops",
    "is_linear",
    "dtype_name",
    "parse_shape",
    "slugify",
    "UsageError",
]

# The divergences between a student's and a teacher's logits: forward KL and the JSD (beta 0.5),
# on given logits and from hidden states (distillation_loss, linear_distillation_loss).
DISTILLATION_OPS = ("distillation_kl", "distillation_jsd")
ROW_OPS = ("softmax", "log_softmax", "cross_entropy", "token_logprobs") + DISTILLATION_OPS
LINEAR_OPS = ("linear_cross_entropy", "linear_distillation_jsd")
OPS = ROW_OPS + LINEAR_OPS
# The memory-lean losses: the report gives them a section of their own (peak memory first).
LEAN_OPS = ("token_logprobs", "linear_cross_entropy") + DISTILLATION_OPS + ("linear_distillation_jsd",)
DIRECTIONS = ("forward", "backward", "forward+backward")
DTYPES = ("bfloat16", "float16", "float32")
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Cross-entropy targets and token ids are int64 indices, one per row.
TARGET_BYTES = 8
# token_logprobs returns float32 log-probabilities, so its incoming gradient is float32 too.
LOGPROB_BYTES = 4

class UsageError(ValueError):
    """Bad input from the command line or a file: the CLI prints it without a traceback."""


_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_name(name: str) -> str:
    """The canonical dtype name for `name` (bfloat16/float16/float32, or bf16/fp16/fp32)."""
    canonical = _DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or bf16, fp16, fp32), got {name!r}")
    return canonical


def is_linear(op: str) -> bool:
    """Whether `op` takes a hidden size and is measured in flops rather than bytes."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return op in LINEAR_OPS


def _check_work_args(op, direction, sizes):
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def bytes_moved(op: str, direction: str, rows: int, cols: int, dtype: str) -> int:
    """The fewest bytes row op `op` must move in `direction` on a (rows, cols) input of `dtype`.

    softmax, log_softmax: forward reads x and writes y (2 N V elements); backward reads y and dy
    and writes dx (3 N V); forward+backward is the two in sequence (5 N V), since y must be
    stored for backward.
    cross_entropy: forward reads the logits and the N targets (N V elements + N targets).
    Backward reads the logits and writes the gradient (2 N V + N targets). Forward+backward
    with the gradient written needs no more than that: a kernel that writes the gradient
    during the forward pass reads the logits once (2 N V + N targets at best).
    token_logprobs: forward reads the logits and the N ids and writes N float32 log-probabilities
    (N V elements + 12 N bytes); backward reads the logits, the ids and the N float32 incoming
    gradients and writes the gradient (2 N V elements + 12 N bytes). Forward+backward is the two
    in sequence (3 N V elements + 24 N bytes): unlike a mean loss's, the incoming gradient is one
    per row and arrives only after forward, so the logits must be read twice.
    distillation_kl, distillation_jsd: forward reads both (rows, cols) logits (2 N V elements);
    backward reads them and writes the student's gradient (3 N V); forward+backward needs no more
    than that (a kernel writing the gradient during its forward pass: 3 N V at best). softlight's
    exact forward reads both rows twice and its backward is a pass of its own: 7 N V in all.
    The linear ops have no bytes model: see matmul_flops.
    """
    _check_work_args(op, direction, dict(rows=rows, cols=cols))
    if op in LINEAR_OPS:
        raise ValueError(f"{op} is matmul-bound and measured in flops (matmul_flops), not bytes")
    elements = rows * cols * ELEMENT_BYTES[dtype_name(dtype)]
    if op == "cross_entropy":
        passes = {"forward": 1, "backward": 2, "forward+backward": 2}[direction]
        return passes * elements + rows * TARGET_BYTES
    if op in DISTILLATION_OPS:
        return {"forward": 2, "backward": 3, "forward+backward": 3}[direction] * elements
    if op == "token_logprobs":
        per_row = TARGET_BYTES + LOGPROB_BYTES
        passes, row_passes = {"forward": (1, 1), "backward": (2, 1), "forward+backward": (3, 2)}[direction]
        return passes * elements + row_passes * rows * per_row
    passes = {"forward": 2, "backward": 3, "forward+backward": 5}[direction]
    return passes * elements


def matmul_flops(op: str, direction: str, rows: int, cols: int, hidden: int) -> int:
    """The matmul flops linear op `op` needs in `direction`: N = rows tokens, V = cols classes,
    H = hidden, each matmul of N x H by H x V being 2 N H V flops.

    linear_cross_entropy (a mean loss): forward one matmul (the logits); backward two (the
    gradients of hidden and of weight); forward+backward the three, the fewest any
    implementation needs (recomputing the logits in backward would make it four). The
    cross-entropy on the logits, O(N V), is left out: it is small beside O(N H V).
    linear_distillation_jsd (student and teacher of hidden size H, the teacher without gradient):
    forward 2 (both models' logits), backward 2 (the student's d hidden and d weight),
    forward+backward 4.
    """
    _check_work_args(op, direction, dict(rows=rows, cols=cols, hidden=hidden))
    if op not in LINEAR_OPS:
        raise ValueError(f"{op} is bandwidth-bound and measured in bytes (bytes_moved), not flops")
    matmuls = {"forward": 1, "backward": 2, "forward+backward": 3}[direction]
    if op == "linear_distillation_jsd":
        matmuls = {"forward": 2, "backward": 2, "forward+backward": 4}[direction]
    return matmuls * 2 * rows * hidden * cols


def parse_shape(text: str) -> tuple[int, ...]:
    """'4096x32000' -> (4096, 32000); '8192x128256x4096' -> (8192, 128256, 4096), the third size
    being the hidden size of a linear op. Every size must be a positive integer."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    sizes = tuple(int(g) for g in match.groups() if g is not None) if match else ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"shape must be ROWSxCOLS (or ROWSxCOLSxHIDDEN for linear_cross_entropy) with positive "
                         f"integers, e.g. 4096x32000, got {text!r}")
    return sizes


def slugify(name: str) -> str:
    """A device name as a folder name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not slug:
        raise UsageError(f"device name {name!r} has no letters or digits to name a folder by")
    return slug
