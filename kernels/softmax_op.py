"""softmax and log_softmax as torch ops: registration, autograd, the public functions, the modules.

    y = softlight.softmax(x, dim=-1)                       # like torch.softmax
    logp = softlight.log_softmax(x, temperature=0.7)       # log_softmax(x / 0.7)

The ops softlight::softmax and softlight::log_softmax take the input and the encoded
SoftmaxOptions; their backward ops softlight::softmax_backward and ::log_softmax_backward take the
saved output and the incoming gradient.
"""

import warnings

import torch

from . import checks, launch
from .registry import register_op
from .softmax_rows import SoftmaxOptions, backward_in_torch, backward_rows, forward_rows

__all__ = ["softmax", "log_softmax", "Softmax", "LogSoftmax", "kernel_launches"]

MASKED_ROWS = ("nan", "zero")


def _forward(input: torch.Tensor, options: str) -> torch.Tensor:
    return forward_rows(input, SoftmaxOptions.decode(options))


def _backward(output: torch.Tensor, grad: torch.Tensor, options: str) -> torch.Tensor:
    return backward_rows(output, grad, SoftmaxOptions.decode(options))


softmax_op = register_op("softmax")(_forward)
log_softmax_op = register_op("log_softmax")(_forward)
softmax_backward_op = register_op("softmax_backward")(_backward)
log_softmax_backward_op = register_op("log_softmax_backward")(_backward)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.options = inputs[1]


def _autograd_backward(ctx, dy):
    (y,) = ctx.saved_tensors
    o = SoftmaxOptions.decode(ctx.options)
    if torch.is_grad_enabled():  # create_graph=True: a backward that can be differentiated again
        return backward_in_torch(y, dy, o), None
    backward_op = log_softmax_backward_op if o.log else softmax_backward_op
    return backward_op(y, dy, ctx.options), None


softmax_op.register_autograd(_autograd_backward, setup_context=_setup_context)
log_softmax_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _options(fn, input, dim, dtype, temperature, masked_rows, log) -> SoftmaxOptions:
    checks.float_tensor(fn, "input", input)
    return SoftmaxOptions(
        dim=checks.dim(fn, dim, input.dim()),
        dtype=checks.output_dtype(fn, dtype, input.dtype),
        input_dtype=input.dtype,
        inv_temperature=1.0 / checks.temperature(fn, temperature),
        log=log,
        masked_zero=checks.choice(fn, "masked_rows", masked_rows, MASKED_ROWS) == "zero",
    )


def _apply(fn, input, dim, dtype, temperature, masked_rows, log):
    o = _options(fn, input, dim, dtype, temperature, masked_rows, log)
    checks.device(fn, "input", input)
    return (log_softmax_op if log else softmax_op)(input, o.encode())


def softmax(input: torch.Tensor, dim: int = -1, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
            masked_rows: str = "nan"):
    """softmax(input / temperature) over `dim`, like torch.softmax.

    dtype: if given, the input is cast to it first and the output has it (torch's meaning).
    masked_rows: what a row whose entries are all -inf gives: "nan" (torch's answer, the
    default) or "zero" (probability 0 everywhere, with zero gradient: the "safe softmax" of
    attention and masked-vocabulary code).
    Accumulates in fp32 (fp64 for float64); differentiable.
    """
    return _apply("softlight.softmax", input, dim, dtype, temperature, masked_rows, log=False)


def log_softmax(input: torch.Tensor, dim: int = -1, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
                masked_rows: str = "nan"):
    """log_softmax(input / temperature) over `dim`, like torch.log_softmax, computed as
    z - LSE(z), never as log(softmax(z)). Same arguments as `softmax`; with masked_rows="zero"
    an all -inf row gives -inf (log 0) everywhere, with zero gradient."""
    return _apply("softlight.log_softmax", input, dim, dtype, temperature, masked_rows, log=True)


def kernel_launches(shape, dtype: torch.dtype, dim: int = -1, log: bool = False, **options) -> list:
    """The kernel launches of a forward and a backward of softmax (log_softmax with log=True) on
    an input of `shape` and `dtype`, with softmax's keyword options: for the compile report."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    fn = "softlight.log_softmax" if log else "softlight.softmax"
    o = _options(fn, x, dim, options.get("dtype"), options.get("temperature", 1.0),
                 options.get("masked_rows", "nan"), log)
    with launch.recording() as launches:
        y = forward_rows(x, o)
        backward_rows(y, torch.empty_like(y), o)
    return launches


def _module_dim(dim, ndim, name):
    if dim is not None:
        return dim
    # torch.nn.Softmax(dim=None)'s legacy choice, with its warning.
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(torch.nn.Module):
    """Drop-in for torch.nn.Softmax, with softlight's `dtype`, `temperature` and `masked_rows` options."""

    def _get_name(self):  # the repr says whose module this is
        return f"softlight.{type(self).__name__}"

    def __init__(self, dim: int | None = None, *, dtype: torch.dtype | None = None, temperature: float = 1.0,
                 masked_rows: str = "nan"):
        super().__init__()
        self.dim, self.dtype, self.temperature, self.masked_rows = dim, dtype, temperature, masked_rows

    def forward(self, input):
        dim = _module_dim(self.dim, input.dim(), "softmax")
        return softmax(input, dim, dtype=self.dtype, temperature=self.temperature, masked_rows=self.masked_rows)

    def extra_repr(self):
        return f"dim={self.dim}" + (f", temperature={self.temperature}" if self.temperature != 1.0 else "")


class LogSoftmax(Softmax):
    """Drop-in for torch.nn.LogSoftmax, with softlight's `dtype`, `temperature` and `masked_rows` options."""

    def forward(self, input):
        dim = _module_dim(self.dim, input.dim(), "log_softmax")
        return log_softmax(input, dim, dtype=self.dtype, temperature=self.temperature, masked_rows=self.masked_rows)
