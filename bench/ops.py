"""How each op is run and checked: its inputs, the calls that are timed in each direction, and
the comparison of a provider's results with the float64 reference.

Rows are independent in every row op, so outputs are compared with the reference on a sample of
rows (all of them up to 2**22 elements; beyond that the first, the last, whose offsets are the
largest, and random ones between). The cross-entropy loss, a mean over every row, is compared
with the reference over every row: the mean of the reference's float64 log-sum-exp minus the
target logit, which is what the reference's cross_entropy computes without options, at a tenth
of its cost on 2**27 logits.

linear_cross_entropy (a mean loss of logits = hidden @ weight.T) is checked the same way, on the
logits as the unfused composition holds them: `F.linear` in the run's dtype on the benchmark's
device, which is how softlight's chunks and torch's path make them too (the float64 reference
would otherwise charge every provider the rounding of bf16 logits, several times bf16's
tolerance; reference/linear_cross_entropy.py takes its `logits` argument for the same reason).
From there everything is float64 NumPy:

- the loss over every row, by the log-sum-exp trick above, in blocks of rows;
- the gradient of hidden on a sample of rows: the reference's cross-entropy gradient of those
  rows times the whole weight (d hidden = d logits @ weight);
- the gradient of weight on a sample of vocabulary rows, which needs every row's log-sum-exp (kept
  from the loss's pass): d weight[v] = sum over rows of (softmax(z)[v] - [target = v]) hidden / N.
  The sample holds the first and the last class and the targets of sampled rows, so the -hidden
  term of the one-hot is exercised at a vocabulary of 262144 too.

At the grid's largest point that is 2**32 logits read in float64, so the blocks of rows go to a
pool of threads (NumPy's ufuncs and torch's copies release the GIL).

The distillation ops (distillation_kl, distillation_jsd: a student's logits against a teacher's,
mean over rows; linear_distillation_jsd from both models' hidden states) are checked the same way:
the mean divergence over every row by the float64 reference (reference/distillation.py), the
student's gradient on sampled rows (and for the linear op d hidden on sampled rows and d weight on
sampled classes, from each block of rows' full d logits). The teacher needs no gradient.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from softlight import reference as ref

from .spec import DIRECTIONS, DISTILLATION_OPS, LINEAR_OPS, OPS

__all__ = ["TORCH_DTYPES", "Inputs", "Reference", "Verdict", "make_inputs", "verify", "with_temperature", "timed_call"]

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SAMPLE_ELEMENTS = 2**22
# A linear op's reference makes its logits in blocks of at least this many rows: a matmul that
# small could take another cuBLAS kernel than the providers' large ones and round differently.
MIN_LINEAR_BLOCK_ROWS = 256
_WORKERS = min(8, os.cpu_count() or 1)
_FORWARD_REF = {"softmax": ref.softmax, "log_softmax": ref.log_softmax}
_BACKWARD_REF = {"softmax": ref.softmax_backward, "log_softmax": ref.log_softmax_backward}
# Ops whose output is one number: a mean loss.
_SCALAR_OPS = ("cross_entropy", "linear_cross_entropy", "linear_distillation_jsd") + DISTILLATION_OPS
# The divergence each distillation op measures, and the JSD's beta.
DIVERGENCE = {"distillation_kl": "kl", "distillation_jsd": "jsd", "linear_distillation_jsd": "jsd"}
JSD_BETA = 0.5


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Inputs:
    """One case's inputs.

    x: the input of softmax and log_softmax, the logits (rows, cols) of cross_entropy,
    token_logprobs and the student of the distillation ops, the hidden states (rows, hidden) of
    the linear ops (the student's for linear_distillation_jsd). weight: the (cols, hidden) output
    projection of the linear ops. target: int64 class indices or token ids, one per row. teacher,
    teacher_weight: the teacher's logits (rows, cols) of the distillation ops, its hidden states and
    output projection for linear_distillation_jsd; they need no gradient. dy: the incoming gradient
    of the output; None for a mean loss, whose gradient is 1.
    """

    op: str
    x: torch.Tensor
    dy: torch.Tensor | None = None
    target: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    teacher: torch.Tensor | None = None
    teacher_weight: torch.Tensor | None = None

    def args(self) -> tuple:
        """What a provider's function receives, in order."""
        if self.op == "linear_cross_entropy":
            return self.x, self.weight, self.target
        if self.op == "linear_distillation_jsd":
            return self.x, self.weight, self.teacher, self.teacher_weight
        if self.op in ("cross_entropy", "token_logprobs"):
            return self.x, self.target
        if self.op in DISTILLATION_OPS:
            return self.x, self.teacher
        return (self.x,)

    @property
    def differentiable(self) -> tuple:
        """The inputs whose gradients are checked and timed."""
        return (self.x, self.weight) if self.op in LINEAR_OPS else (self.x,)

    def call(self, fn):
        return fn(*self.args())

    def private(self, requires_grad: bool = False) -> "Inputs":
        """Copies of the tensors for one provider: some write a gradient into their input, and
        the next provider must still see the inputs the reference was computed from."""
        def copy(t):
            return None if t is None else t.detach().clone().requires_grad_(requires_grad)

        return Inputs(self.op, copy(self.x), None if self.dy is None else self.dy.clone(), self.target,
                      copy(self.weight), self.teacher, self.teacher_weight)


def make_inputs(op: str, rows: int, cols: int, dtype: str, device, generator: torch.Generator,
                hidden: int = 0) -> Inputs:
    """Fresh random inputs: logits of standard deviation 4 (sharp rows, as trained models give),
    dy of standard deviation 1 (token_logprobs: magnitude 0.5 to 2, either sign), targets uniform
    over the classes; for the distillation ops a teacher's logits drawn the same way. The linear
    ops: hidden states of standard deviation 1 and a weight of standard deviation 4 / sqrt(hidden),
    so that their logits have standard deviation 4 too (the teacher of linear_distillation_jsd
    likewise, of the same hidden size)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if op in LINEAR_OPS and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"{op} needs a hidden size, a positive int; got {hidden!r}")
    if op not in LINEAR_OPS and hidden:
        raise ValueError(f"a hidden size applies only to {', '.join(LINEAR_OPS)}; {op} got hidden={hidden!r}")
    torch_dtype = TORCH_DTYPES[dtype]

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    def targets():
        return torch.randint(0, cols, (rows,), generator=generator, device=device)

    if op == "linear_cross_entropy":
        weight = randn(cols, hidden).mul_(4 / hidden**0.5).to(torch_dtype)
        return Inputs(op, randn(rows, hidden).to(torch_dtype), target=targets(), weight=weight)
    if op == "linear_distillation_jsd":
        weights = [randn(cols, hidden).mul_(4 / hidden**0.5).to(torch_dtype) for _ in range(2)]
        hiddens = [randn(rows, hidden).to(torch_dtype) for _ in range(2)]
        return Inputs(op, hiddens[0], weight=weights[0], teacher=hiddens[1], teacher_weight=weights[1])
    x = randn(rows, cols).mul_(4).to(torch_dtype)
    if op in DISTILLATION_OPS:
        return Inputs(op, x, teacher=randn(rows, cols).mul_(4).to(torch_dtype))
    if op == "cross_entropy":
        return Inputs(op, x, target=targets())
    if op == "token_logprobs":
        # One incoming gradient per row, of the float32 log-probabilities, of magnitude 0.5 to 2:
        # with one row, a tiny one scaled a whole float16 gradient into the subnormal range, where
        # the correctly rounded answer missed the tolerance (about 1 run of `check` in 500).
        sign = torch.randint(0, 2, (rows,), generator=generator, device=device) * 2 - 1
        dy = sign * torch.rand(rows, generator=generator, device=device).mul_(1.5).add_(0.5)
        return Inputs(op, x, dy=dy, target=targets())
    return Inputs(op, x, dy=randn(rows, cols).to(torch_dtype))


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

    Each output is held to the tolerance of its own dtype (the README's Numerics section): a
    bf16 loss to bf16's, softlight's float32 loss to float32's.
    """

    def __init__(self, inputs: Inputs, generator: torch.Generator | None = None):
        self.inputs = inputs
        if inputs.op in LINEAR_OPS:
            self._linear(generator)
            return
        rows, cols = inputs.x.shape
        self.rows = _sample_rows(rows, cols, generator)
        index = torch.as_tensor(self.rows, device=inputs.x.device)
        x = _numpy(inputs.x[index])
        if inputs.op == "cross_entropy":
            target = inputs.target[index].cpu().numpy()
            self.loss = _mean_cross_entropy(inputs.x, inputs.target)
            # The gradient of the mean over all rows, on the sampled rows.
            self.grads = (ref.cross_entropy_backward(x, target, grad_output=1.0 / rows, reduction="sum"),)
        elif inputs.op in DISTILLATION_OPS:
            divergence = DIVERGENCE[inputs.op]
            self.loss = _mean_divergence(inputs.x, inputs.teacher, divergence)
            teacher = _numpy(inputs.teacher[index])
            self.grads = (ref.distillation_backward(x, teacher, 1.0 / rows, divergence, JSD_BETA,
                                                                 reduction="sum")[0],)
        elif inputs.op == "token_logprobs":
            ids = inputs.target[index].cpu().numpy()
            self.y = ref.token_logprobs(x, ids)[0]
            self.grads = (ref.token_logprobs_backward(x, ids, grad_logp=_numpy(inputs.dy[index])),)
        else:
            self.y = _FORWARD_REF[inputs.op](x)
            self.dy = _numpy(inputs.dy[index])
        self._index = index

    def _linear(self, generator):
        if self.inputs.op == "linear_distillation_jsd":
            self._linear_distillation(generator)
            return
        h, weight, target = self.inputs.x, self.inputs.weight, self.inputs.target
        rows, cols = h.shape[0], weight.shape[0]
        self.rows = _sample_rows(rows, cols, generator)
        targets = target.cpu().numpy()
        self.vocab = _sample_vocab(cols, rows, targets[self.rows], generator)
        sampled = self.rows

        def block(rows_):
            z = _numpy(torch.nn.functional.linear(h[rows_], weight))
            t = targets[rows_]
            lse = ref.logsumexp(z, axis=-1)
            picked = sampled[(sampled >= rows_.start) & (sampled < rows_.stop)] - rows_.start
            return lse, float(np.sum(lse - z[np.arange(len(t)), t])), z[:, self.vocab], z[picked]

        parts = _over_row_blocks(rows, cols, block, min_rows=MIN_LINEAR_BLOCK_ROWS)
        lse = np.concatenate([p[0] for p in parts])
        self.loss = np.array(sum(p[1] for p in parts) / rows)
        # d hidden on the sampled rows: their cross-entropy gradient, then times the whole weight.
        dz = ref.cross_entropy_backward(np.concatenate([p[3] for p in parts]), targets[sampled],
                                        grad_output=1.0 / rows, reduction="sum")
        grad_hidden = np.zeros((len(sampled), weight.shape[1]))
        step = max(1, SAMPLE_ELEMENTS // weight.shape[1])
        for start in range(0, cols, step):
            grad_hidden += dz[:, start:start + step] @ _numpy(weight[start:start + step])
        # d weight on the sampled classes, from every row's log-sum-exp.
        z_vocab = np.concatenate([p[2] for p in parts])
        dz_vocab = (np.exp(z_vocab - lse[:, None]) - (targets[:, None] == self.vocab[None, :])) / rows
        self.grads = (grad_hidden, dz_vocab.T @ _numpy(h))
        device = h.device
        self._index = torch.as_tensor(sampled, device=device)
        self._grad_index = (self._index, torch.as_tensor(self.vocab, device=device))

    def _linear_distillation(self, generator):
        """As _linear, for the JSD of the student's logits from the teacher's: the loss over every
        row, the student's d hidden on sampled rows and d weight on sampled classes, each row's
        d logits from the reference's JSD gradient of its two rows of logits (made as `F.linear`
        makes them in the run's dtype)."""
        inputs = self.inputs
        h, weight = inputs.x, inputs.weight
        rows, cols = h.shape[0], weight.shape[0]
        self.rows = _sample_rows(rows, cols, generator)
        self.vocab = _sample_vocab(cols, rows, np.zeros(0, dtype=np.int64), generator)
        sampled = self.rows

        def block(rows_):
            zs = _numpy(torch.nn.functional.linear(h[rows_], weight))
            zt = _numpy(torch.nn.functional.linear(inputs.teacher[rows_], inputs.teacher_weight))
            loss = float(np.sum(ref.divergence_rows(zs, zt, "jsd", JSD_BETA)))
            dz = ref.distillation_backward(zs, zt, 1.0 / rows, "jsd", JSD_BETA, reduction="sum")[0]
            picked = sampled[(sampled >= rows_.start) & (sampled < rows_.stop)] - rows_.start
            return loss, dz[:, self.vocab], dz[picked]

        parts = _over_row_blocks(rows, cols, block, min_rows=MIN_LINEAR_BLOCK_ROWS)
        self.loss = np.array(sum(p[0] for p in parts) / rows)
        dz = np.concatenate([p[2] for p in parts])
        grad_hidden = np.zeros((len(sampled), weight.shape[1]))
        step = max(1, SAMPLE_ELEMENTS // weight.shape[1])
        for start in range(0, cols, step):
            grad_hidden += dz[:, start:start + step] @ _numpy(weight[start:start + step])
        self.grads = (grad_hidden, np.concatenate([p[1] for p in parts]).T @ _numpy(h))
        self._index = torch.as_tensor(sampled, device=h.device)
        self._grad_index = (self._index, torch.as_tensor(self.vocab, device=h.device))

    def _expected_shape(self) -> tuple | None:
        """The output's shape; None for a mean loss (any shape of one element)."""
        if self.inputs.op in _SCALAR_OPS:
            return None
        if self.inputs.op == "token_logprobs":
            return tuple(self.inputs.x.shape[:1])
        return tuple(self.inputs.x.shape)

    def has_expected_shape(self, out: torch.Tensor) -> bool:
        expected = self._expected_shape()
        return out.numel() == 1 if expected is None else tuple(out.shape) == expected

    def output(self, out) -> Verdict:
        if not isinstance(out, torch.Tensor):
            return Verdict(float("inf"), float("nan"), f"output is a {type(out).__name__}, not a tensor")
        tol = _tolerance(out.dtype, "output")
        if isinstance(tol, Verdict):
            return tol
        if not self.has_expected_shape(out):
            expected = self._expected_shape() or ()
            return Verdict(float("inf"), tol, f"output has shape {tuple(out.shape)}; expected {expected}")
        if self.inputs.op in _SCALAR_OPS:
            return Verdict(ref.relative_error(np.array(float(out.detach())), self.loss), tol)
        return Verdict(ref.relative_error(_numpy(out[self._index]), self.y), tol)

    def gradient(self, grads, out) -> Verdict:
        """The gradients of the differentiable inputs (Inputs.differentiable), the worst of
        them; for softmax ops the reference backward takes the provider's own output, so that
        the rounding of its forward is not charged to its backward."""
        names = ("hidden", "weight") if self.inputs.op in LINEAR_OPS else ("x",)
        verdict = None
        for i, (name, grad, wrt) in enumerate(zip(names, grads, self.inputs.differentiable)):
            if grad is None:
                return Verdict(float("inf"), float("nan"), f"no gradient of {name}: the output does not depend on it "
                                                           "differentiably")
            if grad.shape != wrt.shape:
                return Verdict(float("inf"), float("nan"),
                               f"gradient of {name} has shape {tuple(grad.shape)}; expected {tuple(wrt.shape)}")
            tol = _tolerance(grad.dtype, f"gradient of {name}")
            if isinstance(tol, Verdict):
                return tol
            if self.inputs.op in LINEAR_OPS:
                expected = self.grads[i]
                got = _numpy(grad[self._grad_index[i]])
            elif self.inputs.op in _BACKWARD_REF:
                got = _numpy(grad[self._index])
                expected = _BACKWARD_REF[self.inputs.op](_numpy(out[self._index]), self.dy)
            else:
                got, expected = _numpy(grad[self._index]), self.grads[i]
            this = Verdict(ref.relative_error(got, expected), tol)
            if not this.ok and len(names) > 1:
                this = Verdict(this.error, tol, f"gradient of {name}: error {this.error:.3g} > tolerance {tol:.0e}: "
                                                "not timed")
            verdict = this if verdict is None else verdict.worse(this)
        return verdict


def _seed(generator) -> int:
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def _sample_rows(rows, cols, generator) -> np.ndarray:
    budget = max(2, SAMPLE_ELEMENTS // cols)
    if rows <= budget:
        return np.arange(rows)
    middle = np.random.default_rng(_seed(generator)).choice(np.arange(1, rows - 1), size=budget - 2, replace=False)
    return np.sort(np.concatenate([[0, rows - 1], middle]))


def _sample_vocab(cols, rows, sampled_targets, generator) -> np.ndarray:
    """Classes whose weight gradient is checked: all of them while the logits of every row at
    those classes take at most SAMPLE_ELEMENTS; else the first, the last, up to half the budget
    of sampled rows' targets, and random ones to fill it."""
    budget = max(2, SAMPLE_ELEMENTS // rows)
    if cols <= budget:
        return np.arange(cols)
    chosen = set([0, cols - 1]) | set(int(t) for t in sampled_targets[:budget // 2])
    rng = np.random.default_rng(_seed(generator))
    while len(chosen) < budget:
        chosen |= set(int(v) for v in rng.integers(0, cols, size=budget - len(chosen)))
    return np.array(sorted(chosen))


def _over_row_blocks(rows, cols, work, min_rows=1) -> list:
    """work(block) for consecutive slices of rows of about SAMPLE_ELEMENTS logits each (at least
    min_rows rows), on a pool of threads; the results in order of the rows."""
    step = max(min_rows, SAMPLE_ELEMENTS // cols, 1)
    blocks = [slice(start, min(start + step, rows)) for start in range(0, rows, step)]
    if len(blocks) == 1 or _WORKERS == 1:
        return [work(b) for b in blocks]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(work, blocks))


def _mean_cross_entropy(x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """The reference mean loss over every row, a few rows at a time to bound host memory."""
    rows, cols = x.shape
    targets = target.cpu().numpy()

    def block(rows_):
        logits, t = _numpy(x[rows_]), targets[rows_]
        return float(np.sum(ref.logsumexp(logits, axis=-1) - logits[np.arange(len(t)), t]))

    return np.array(sum(_over_row_blocks(rows, cols, block)) / rows)


def _mean_divergence(student: torch.Tensor, teacher: torch.Tensor, divergence: str) -> np.ndarray:
    """The reference mean divergence over every row, a few rows at a time."""
    rows, cols = student.shape

    def block(rows_):
        return float(np.sum(ref.divergence_rows(_numpy(student[rows_]), _numpy(teacher[rows_]),
                                                             divergence, JSD_BETA)))

    return np.array(sum(_over_row_blocks(rows, cols, block)) / rows)


def verify(inputs: Inputs, reference: Reference, fn) -> dict[str, Verdict]:
    """A provider's results in each direction against the reference.

    forward: the output of fn on inputs that do not require grad (what forward times);
    backward: the gradients through fn; forward+backward: the worse of the output with grad
    and those gradients.
    """
    plain = inputs.private()
    forward = reference.output(plain.call(fn))
    mine = inputs.private(requires_grad=True)
    out = mine.call(fn)
    with_grad = reference.output(out)
    problem = None
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        problem = "output is not differentiable (no grad_fn)"
    elif not reference.has_expected_shape(out):
        problem = f"no gradient checked: output has shape {tuple(out.shape)}"
    if problem:
        missing = Verdict(float("inf"), float("nan"), problem)
        return {"forward": forward, "backward": missing, "forward+backward": missing}
    # allow_unused: an input the output does not depend on gets None, reported as wrong, not raised.
    grads = torch.autograd.grad(out, mine.differentiable, mine.dy, allow_unused=True)
    backward = reference.gradient(grads, out)
    return {"forward": forward, "backward": backward, "forward+backward": with_grad.worse(backward)}


def with_temperature(impl, temperature: float):
    """impl's function on logits / temperature: through its own `temperature` option when it
    takes one (Impl.options), else by dividing the logits first, in their dtype, as a user of
    that provider would write it."""
    if temperature == 1.0:
        return impl.fn
    if "temperature" in impl.options:
        return lambda *args: impl.fn(*args, temperature=temperature)
    return lambda x, *rest: impl.fn(x / temperature, *rest)


def timed_call(inputs: Inputs, fn, direction: str):
    """The function of no arguments to time for `direction`.

    forward: fn on inputs without grad. backward: the gradients through an output computed
    once beforehand (the graph is kept). forward+backward: both. torch.autograd.grad returns
    the gradients instead of accumulating them into .grad, which would add a read and a write.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    mine = inputs.private(requires_grad=direction != "forward")
    if direction == "forward":
        return lambda: mine.call(fn)
    if direction == "backward":
        out = mine.call(fn)
        return lambda: torch.autograd.grad(out, mine.differentiable, mine.dy, retain_graph=True)
    return lambda: torch.autograd.grad(mine.call(fn), mine.differentiable, mine.dy)
