"""Every argument check of the public functions, one check per kind of argument.

Each check names the function (`fn`, e.g. "softlight.cross_entropy") and the argument, raises
the exception the README's table gives, and returns the value as the kernels take it. They run
before any kernel, so a rejected call leaves the caller's tensors untouched.

Values that only the data can tell (a class index out of range) are checked by `index_range`
where reading them costs nothing: on CPU tensors, inside the op (never in code torch.compile
traces, where reading a value would break the graph). On a GPU such rows give NaN instead.
"""

import math
from numbers import Real

import torch

from .interpreter import INTERPRETED

__all__ = [
    "FLOAT_DTYPES",
    "float_tensor",
    "device",
    "same_device",
    "same_shape",
    "dim",
    "output_dtype",
    "temperature",
    "number",
    "choice",
    "flag",
    "class_weight",
    "class_indices",
    "index_range",
    "logits",
    "integer",
    "cross_entropy_target",
    "linear",
    "chunk_size",
    "num_items",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def float_tensor(fn: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be a floating-point tensor of dtype float16, bfloat16, float32 or "
            f"float64, got {t.dtype}"
        )


def device(fn: str, name: str, t: torch.Tensor) -> None:
    """The compiled kernels run on CUDA (and ROCm, which torch also calls "cuda") tensors;
    the interpreter runs on CPU tensors."""
    if t.device.type == "cuda" or (INTERPRETED and t.device.type == "cpu"):
        return
    if t.device.type == "cpu":
        raise RuntimeError(
            f"{fn}: {name} is on the CPU, and the Triton kernels need a CUDA device. To run them "
            "on the CPU through Triton's interpreter (slow, for testing), set the environment "
            "variable TRITON_INTERPRET=1 before softlight or triton is imported."
        )
    raise RuntimeError(f"{fn}: {name} is on device {t.device}, which the Triton kernels cannot run on")


def same_device(fn: str, name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if t.device != other.device:
        raise RuntimeError(f"{fn}: {name} is on {t.device} but {other_name} is on {other.device}")


def same_shape(fn: str, name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if t.shape != other.shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)} but {other_name} has {tuple(other.shape)}; "
                         "they must match")


def dim(fn: str, value, ndim: int) -> int:
    """torch's rule and message for a dim argument: an int in [-ndim, ndim) (0-d counts as 1-d)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: dim must be an int, got {type(value).__name__}")
    rank = max(ndim, 1)
    if not -rank <= value < rank:
        raise IndexError(
            f"{fn}: Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {value})"
        )
    return value % rank


def output_dtype(fn: str, value, default: torch.dtype) -> torch.dtype:
    """torch's `dtype=` of softmax: None (the input's) or a floating dtype."""
    if value is None:
        return default
    if value not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: dtype must be None or one of float16, bfloat16, float32, float64, got {value}")
    return value


def temperature(fn: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{fn}: temperature must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: temperature must be finite and > 0, got {value}")
    return value


def number(fn: str, name: str, value, low: float, low_inclusive: bool = True, allow_none: bool = False,
           high: float | None = None):
    """A finite real number >= low (> low unless low_inclusive) and <= high, as a float; None if
    allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < low or (value == low and not low_inclusive):
        bound = f">= {low}" if low_inclusive else f"> {low}"
        raise ValueError(f"{fn}: {name} must be finite and {bound}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{fn}: {name} must be between {low} and {high}, got {value}")
    return value


def integer(fn: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    return value


def choice(fn: str, name: str, value, choices: tuple):
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {choices}, got {value!r}")
    return value


def flag(fn: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")
    return value


def class_weight(fn: str, name: str, weight, n_classes: int, input_name: str, on: torch.device):
    """torch's per-class weight: None, or a floating (C,) tensor on the input's device that needs
    no gradient; returned contiguous."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {got}")
    if weight.shape != (n_classes,):
        raise ValueError(f"{fn}: {name} must have shape ({n_classes},), one per class, got {tuple(weight.shape)}")
    if weight.device != on:
        raise RuntimeError(f"{fn}: {name} is on {weight.device} but {input_name} is on {on}")
    if weight.requires_grad:
        raise NotImplementedError(f"{fn}: the gradient with respect to {name} is not implemented (nor in torch)")
    return weight.contiguous()


def class_indices(fn: str, name: str, ids, shape, on: torch.device, what: str) -> None:
    """Class indices (any integer dtype) of shape `shape` on device `on`; `what` says which shape
    that is, for the message."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor of class indices, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must hold class indices (an integer dtype), got {ids.dtype}")
    if ids.shape != shape:
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)} ({what}), got {tuple(ids.shape)}")
    if ids.device != on:
        raise RuntimeError(f"{fn}: {name} is on {ids.device} but the input is on {on}")


def index_range(fn: str, name: str, ids: torch.Tensor, n_classes: int, ignore_index=None) -> None:
    """IndexError for an index outside [0, n_classes) that is not ignore_index, as torch raises:
    only where reading the values costs no host-device synchronisation (CPU tensors)."""
    if not (INTERPRETED or ids.device.type == "cpu"):
        return
    bad = (ids < 0) | (ids >= n_classes)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        value, where = int(ids[bad].flatten()[0]), tuple(int(i) for i in bad.nonzero()[0])
        valid = f"0 to {n_classes - 1}" + (f", or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise IndexError(f"{fn}: {name} {value} is out of bounds for {n_classes} classes (at {name}[{where}]; "
                         f"valid: {valid})")


def logits(fn: str, name: str, t, class_dim: int) -> int:
    """Logits the kernels can run on, with a non-empty class dim `class_dim` (1 or -1); a 1-d
    tensor is one row. Returns the number of classes."""
    float_tensor(fn, name, t)
    device(fn, name, t)
    if t.dim() == 0:
        what = "a class dimension" if class_dim == 1 else "the vocabulary last, (..., V)"
        raise ValueError(f"{fn}: {name} must have {what}; got a 0-d tensor")
    dim = class_dim if t.dim() > 1 else 0
    if t.shape[dim] == 0:
        raise ValueError(f"{fn}: {name} has no classes (dim {dim % t.dim()} is empty): an empty vocabulary")
    return t.shape[dim]


def cross_entropy_target(fn: str, target, input: torch.Tensor) -> None:
    """Class indices shaped like input without its class dim (dim 1), or class probabilities
    shaped like input."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != input.device:
        raise RuntimeError(f"{fn}: target is on {target.device} but input is on {input.device}")
    row_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()
    if target.is_floating_point():
        if target.shape == row_shape:
            raise TypeError(f"{fn}: target has shape {tuple(target.shape)}, the shape of class indices, but dtype "
                            f"{target.dtype}: class indices must be an integer dtype (class probabilities would "
                            f"have the input's shape {tuple(input.shape)})")
        if target.shape != input.shape:
            raise ValueError(f"{fn}: class-probability target must have the input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)} (class indices, an integer dtype, would have shape "
                             f"{tuple(row_shape)})")
        if target.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{fn}: class-probability target must be float16, bfloat16, float32 or float64, "
                            f"got {target.dtype}")
        return
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{fn}: target must hold class indices (an integer dtype) or class probabilities "
                        f"(a floating dtype), got {target.dtype}")
    if target.shape != row_shape:
        if target.shape == input.shape:
            raise TypeError(f"{fn}: target has the input's shape, as class probabilities do, but dtype "
                            f"{target.dtype}; probabilities must be floating point")
        raise ValueError(f"{fn}: class-index target must have shape {tuple(row_shape)} for input of shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")


def linear(fn: str, hidden, weight, bias, names=("hidden", "weight", "bias")) -> int:
    """hidden (..., H), weight (V, H) and bias (V,) or None, of one floating dtype on one device
    the kernels run on (`names`: what the function calls the three). Returns V."""
    h, w, b = names
    float_tensor(fn, h, hidden)
    device(fn, h, hidden)
    float_tensor(fn, w, weight)
    if hidden.dim() == 0:
        raise ValueError(f"{fn}: {h} must be (..., H), with the hidden size last; got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{fn}: {w} must be the output projection (V, H), got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{fn}: {w} has hidden size {weight.shape[1]} (shape {tuple(weight.shape)}) but {h} has "
                         f"{hidden.shape[-1]} (shape {tuple(hidden.shape)})")
    if weight.shape[0] == 0:
        raise ValueError(f"{fn}: {w} has no rows: the vocabulary is empty")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{fn}: {w} has dtype {weight.dtype} but {h} has {hidden.dtype}; they must match")
    same_device(fn, w, weight, h, hidden)
    if bias is not None:
        float_tensor(fn, b, bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"{fn}: {b} must have shape ({weight.shape[0]},), one per row of {w}, "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"{fn}: {b} has dtype {bias.dtype} but {h} has {hidden.dtype}; they must match")
        same_device(fn, b, bias, h, hidden)
    return weight.shape[0]


def chunk_size(fn: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: chunk_size must be an int (rows per chunk) or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{fn}: chunk_size must be >= 1, got {value}")
    return value


def num_items(fn: str, value, reduction: str, on: torch.device):
    """num_items as a float, or as a 0-d float tensor on the inputs' device (a 0-d tensor on the
    CPU beside GPU inputs is read on the host, which needs no synchronisation with the GPU)."""
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(f"{fn}: num_items replaces the denominator of reduction='mean'; got reduction={reduction!r}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{fn}: num_items must be a number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        if value.device == on:  # stays a tensor: its value is never read on the host
            return value.detach().to(torch.float64 if value.dtype == torch.float64 else torch.float32)
        if value.device.type != "cpu":
            raise RuntimeError(f"{fn}: num_items is on {value.device} but hidden is on {on}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{fn}: num_items must be a number or a 0-d real tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: num_items must be finite and > 0, got {value}")
    return float(value)
