"""How each op is run and checked: its inputs, the calls that are timed in each direction, and
the comparison of a provider's results with the float64 reference.

Rows are independent in every op, so outputs are compared with the reference on a sample of
rows (all of them up to 2**22 elements; beyond that the first, the last, whose offsets are the
largest, and random ones between). The cross-entropy loss, a mean over every row, is compared
with the reference over every row: the mean of the reference's float64 log-sum-exp minus the
target logit, which is what the reference's cross_entropy computes without options, at a tenth
of its cost on 2**27 logits.
"""

from dataclasses import dataclass

import numpy as np
import torch

from softlight import reference as ref

from .spec import DIRECTIONS

__all__ = ["TORCH_DTYPES", "Inputs", "Reference", "Verdict", "make_inputs", "verify", "timed_call"]

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SAMPLE_ELEMENTS = 2**22
_FORWARD_REF = {"softmax": ref.softmax, "log_softmax": ref.log_softmax}
_BACKWARD_REF = {"softmax": ref.softmax_backward, "log_softmax": ref.log_softmax_backward}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Inputs:
    """One case's inputs: x (the input, or the logits) and, per op, dy or the targets."""

    op: str
    x: torch.Tensor
    dy: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def call(self, fn, x):
        return fn(x, self.target) if self.op == "cross_entropy" else fn(x)

    def private(self, requires_grad: bool = False) -> "Inputs":
        """Copies of x and dy for one provider: some write a gradient into their input, and
        the next provider must still see the inputs the reference was computed from."""
        x = self.x.detach().clone().requires_grad_(requires_grad)
        return Inputs(self.op, x, None if self.dy is None else self.dy.clone(), self.target)


def make_inputs(op: str, rows: int, cols: int, dtype: str, device, generator: torch.Generator) -> Inputs:
    """Fresh random inputs: logits of standard deviation 4 (sharp rows, as trained models give),
    dy of standard deviation 1, targets uniform over the classes."""
    def randn():
        return torch.randn(rows, cols, generator=generator, device=device).to(TORCH_DTYPES[dtype])

    x = randn().mul_(4)
    if op == "cross_entropy":
        return Inputs(op, x, target=torch.randint(0, cols, (rows,), generator=generator, device=device))
    return Inputs(op, x, dy=randn())


@dataclass(frozen=True)
class Verdict:
    """A result's relative norm error against the reference and the tolerance it is held to."""

    error: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance  # False for NaN

    def worse(self, other: "Verdict") -> "Verdict":
        """The one nearer failing (error relative to tolerance)."""
        def ratio(v):
            return v.error / v.tolerance if v.tolerance > 0 and np.isfinite(v.tolerance) else float("inf")
        return other if not other.ok or ratio(other) > ratio(self) else self


def _tolerance(dtype: torch.dtype, what: str) -> Verdict | float:
    name = _dtype_name(dtype)
    if name not in ref.TOLERANCE:
        return Verdict(float("inf"), float("nan"), f"{what} has dtype {name}, for which there is no tolerance")
    return ref.TOLERANCE[name]


class Reference:
    """The float64 reference on one case's inputs, computed once and shared by every provider.

    Each output is held to the tolerance of its own dtype (numerics contract in DESIGN.md): a
    bf16 loss to bf16's, softlight's float32 loss to float32's.
    """

    def __init__(self, inputs: Inputs, generator: torch.Generator | None = None):
        self.inputs = inputs
        rows, cols = inputs.x.shape
        self.rows = _sample_rows(rows, cols, generator)
        index = torch.as_tensor(self.rows, device=inputs.x.device)
        x = _numpy(inputs.x[index])
        if inputs.op == "cross_entropy":
            target = inputs.target[index].cpu().numpy()
            self.loss = _mean_cross_entropy(inputs.x, inputs.target)
            # The gradient of the mean over all rows, on the sampled rows.
            self.grad = ref.cross_entropy_backward(x, target, grad_output=1.0 / rows, reduction="sum")
        else:
            self.y = _FORWARD_REF[inputs.op](x)
            self.dy = _numpy(inputs.dy[index])
        self._index = index

    def has_expected_shape(self, out: torch.Tensor) -> bool:
        if self.inputs.op == "cross_entropy":
            return out.numel() == 1
        return out.shape == self.inputs.x.shape

    def output(self, out) -> Verdict:
        if not isinstance(out, torch.Tensor):
            return Verdict(float("inf"), float("nan"), f"output is a {type(out).__name__}, not a tensor")
        tol = _tolerance(out.dtype, "output")
        if isinstance(tol, Verdict):
            return tol
        if not self.has_expected_shape(out):
            expected = "()" if self.inputs.op == "cross_entropy" else tuple(self.inputs.x.shape)
            return Verdict(float("inf"), tol, f"output has shape {tuple(out.shape)}; expected {expected}")
        if self.inputs.op == "cross_entropy":
            return Verdict(ref.relative_error(np.array(float(out.detach())), self.loss), tol)
        return Verdict(ref.relative_error(_numpy(out[self._index]), self.y), tol)

    def gradient(self, grad, out) -> Verdict:
        """The gradient of x; for softmax ops the reference backward takes the provider's own
        output, so that the rounding of its forward is not charged to its backward."""
        if grad is None or grad.shape != self.inputs.x.shape:
            shape = None if grad is None else tuple(grad.shape)
            return Verdict(float("inf"), float("nan"), f"gradient has shape {shape}; expected {tuple(self.inputs.x.shape)}")
        tol = _tolerance(grad.dtype, "gradient")
        if isinstance(tol, Verdict):
            return tol
        g = _numpy(grad[self._index])
        if self.inputs.op == "cross_entropy":
            return Verdict(ref.relative_error(g, self.grad), tol)
        expected = _BACKWARD_REF[self.inputs.op](_numpy(out[self._index]), self.dy)
        return Verdict(ref.relative_error(g, expected), tol)


def _sample_rows(rows, cols, generator) -> np.ndarray:
    budget = max(2, SAMPLE_ELEMENTS // cols)
    if rows <= budget:
        return np.arange(rows)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)) if generator else 0
    middle = np.random.default_rng(seed).choice(np.arange(1, rows - 1), size=budget - 2, replace=False)
    return np.sort(np.concatenate([[0, rows - 1], middle]))


def _mean_cross_entropy(x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """The reference mean loss over every row, a few rows at a time to bound host memory."""
    rows, cols = x.shape
    step = max(1, SAMPLE_ELEMENTS // cols)
    total = 0.0
    for start in range(0, rows, step):
        logits = _numpy(x[start:start + step])
        t = target[start:start + step].cpu().numpy()
        total += float(np.sum(ref.logsumexp(logits, axis=-1) - logits[np.arange(len(t)), t]))
    return np.array(total / rows)


def verify(inputs: Inputs, reference: Reference, fn) -> dict[str, Verdict]:
    """A provider's results in each direction against the reference.

    forward: the output of fn on an input that does not require grad (what forward times);
    backward: the gradient through fn; forward+backward: the worse of the output with grad
    and that gradient.
    """
    plain = inputs.private()
    forward = reference.output(plain.call(fn, plain.x))
    mine = inputs.private(requires_grad=True)
    out = mine.call(fn, mine.x)
    with_grad = reference.output(out)
    problem = None
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        problem = "output is not differentiable (no grad_fn)"
    elif not reference.has_expected_shape(out):
        problem = f"no gradient checked: output has shape {tuple(out.shape)}"
    if problem:
        missing = Verdict(float("inf"), float("nan"), problem)
        return {"forward": forward, "backward": missing, "forward+backward": missing}
    (grad,) = torch.autograd.grad(out, mine.x, mine.dy)
    backward = reference.gradient(grad, out)
    return {"forward": forward, "backward": backward, "forward+backward": with_grad.worse(backward)}


def timed_call(inputs: Inputs, fn, direction: str):
    """The function of no arguments to time for `direction`.

    forward: fn on an input without grad. backward: the gradient through an output computed
    once beforehand (the graph is kept). forward+backward: both. torch.autograd.grad returns
    the gradient instead of accumulating it into x.grad, which would add a read and a write.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    mine = inputs.private(requires_grad=direction != "forward")
    if direction == "forward":
        return lambda: mine.call(fn, mine.x)
    if direction == "backward":
        out = mine.call(fn, mine.x)
        return lambda: torch.autograd.grad(out, mine.x, mine.dy, retain_graph=True)
    return lambda: torch.autograd.grad(mine.call(fn, mine.x), mine.x, mine.dy)
