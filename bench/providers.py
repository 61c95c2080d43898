"""Providers: the implementations the benchmark runs side by side.

A provider is a callable that takes an op name ("softmax", "log_softmax", "cross_entropy",
"token_logprobs", "linear_cross_entropy", "distillation_kl", "distillation_jsd" or
"linear_distillation_jsd") and returns the function computing that op, or None
when it does not implement it:

    def provider(op: str) -> Callable | Impl | None

It is called once per op and shape, before that shape is checked and timed, so it may build
per-shape state (torch.compile does). If it raises ImportError, the provider is reported as
unavailable with the message, never timed. The function it returns receives tensors on the
benchmark's device and returns a tensor that torch autograd can differentiate:

    softmax, log_softmax:  fn(x) -> y          x: (rows, cols) contiguous, of the run's dtype;
                                               y: softmax (log_softmax) over the last dim,
                                               shape of x, dtype of x
    cross_entropy:         fn(logits, target) -> loss
                                               logits: (rows, cols) of the run's dtype;
                                               target: (rows,) int64 class indices in [0, cols);
                                               loss: the mean over rows, a 0-d tensor of any
                                               float dtype
    token_logprobs:        fn(logits, ids) -> logp
                                               logits: (rows, cols) of the run's dtype;
                                               ids: (rows,) int64 token ids in [0, cols);
                                               logp: (rows,) log_softmax(logits)[ids] per row,
                                               of any float dtype (the incoming gradient is
                                               float32, one per row)
    linear_cross_entropy:  fn(hidden, weight, target) -> loss
                                               hidden: (rows, H) and weight: (cols, H), both of
                                               the run's dtype; target: (rows,) int64 class
                                               indices in [0, cols); loss: the mean over rows
                                               of cross_entropy(hidden @ weight.T, target), a
                                               0-d tensor of any float dtype, differentiable in
                                               hidden and weight (no bias)
    distillation_kl,       fn(student, teacher) -> loss
    distillation_jsd                           student, teacher: (rows, cols) logits of the run's
                                               dtype, the teacher without grad; loss: the mean
                                               over rows of KL(p_t || p_s) (distillation_kl) or of
                                               0.5 KL(p_t || m) + 0.5 KL(p_s || m), m = (p_t + p_s)/2
                                               (distillation_jsd), p = softmax of the logits, a
                                               0-d tensor of any float dtype
    linear_distillation_jsd:  fn(hidden, weight, teacher_hidden, teacher_weight) -> loss
                                               the distillation_jsd loss of hidden @ weight.T
                                               against teacher_hidden @ teacher_weight.T (all of
                                               the run's dtype, (rows, H) and (cols, H); no bias),
                                               differentiable in hidden and weight

Wrap the function in Impl to exclude directions it cannot be timed in alone (for example a
backward pass that only rescales a gradient computed during forward), to add a note, or to say
which keyword options it takes natively (`options=("temperature",)`: fn(..., temperature=T)
computes the op on logits / T; without it the stability study divides the logits first, as a
user of that provider would).

Built-in providers: softlight, torch (eager), torch.compile, liger (Liger-Kernel: also its KL,
JSD and fused linear JSD for the distillation ops) and quack, the last two only when importable.
Other providers come from `--provider MODULE:ATTR` (or NAME=MODULE:ATTR) and from the entry
point group "softlight.providers" of installed packages.
"""

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable

from .spec import DIRECTIONS, OPS, UsageError

__all__ = ["Impl", "Provider", "BUILTIN", "ENTRY_POINT_GROUP", "registered", "resolve", "load_spec"]

ENTRY_POINT_GROUP = "softlight.providers"


@dataclass(frozen=True)
class Impl:
    """A provider's function for one op, with the directions it may be timed in."""

    fn: Callable
    directions: tuple[str, ...] = DIRECTIONS
    note: str = ""
    options: tuple[str, ...] = ()  # keyword options fn takes natively: "temperature"

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Impl.fn must be callable, got {type(self.fn).__name__}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad:
            raise ValueError(f"Impl.directions must be among {DIRECTIONS}, got {bad}")


@dataclass(frozen=True)
class Provider:
    name: str
    make: Callable  # op -> Callable | Impl | None
    origin: str

    def implementation(self, op: str) -> Impl | None:
        """The provider's Impl of `op`, or None. ImportError propagates: it means unavailable."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        made = self.make(op)
        if made is None or isinstance(made, Impl):
            return made
        if callable(made):
            return Impl(made)
        raise TypeError(f"provider {self.name!r} returned {type(made).__name__} for {op!r}; "
                        "expected a function, an Impl or None")


# A mean loss whose gradients are computed during forward has a backward that only multiplies
# them by the incoming gradient: timing it alone would time a rescale, not the op's backward.
_GRADIENT_IN_FORWARD = ("forward", "forward+backward")


def _softlight(op):
    import softlight

    if op in ("linear_cross_entropy", "linear_distillation_jsd"):
        fn = softlight.linear_cross_entropy if op == "linear_cross_entropy" else _softlight_linear_jsd
        return Impl(fn, directions=_GRADIENT_IN_FORWARD,
                    note="softlight computes a mean loss's gradients during forward; its backward only rescales "
                         "them, so it is not timed alone")
    fn = {
        "softmax": lambda x, temperature=1.0: softlight.softmax(x, -1, temperature=temperature),
        "log_softmax": lambda x, temperature=1.0: softlight.log_softmax(x, -1, temperature=temperature),
        "cross_entropy": softlight.cross_entropy,
        "token_logprobs": softlight.token_logprobs,
        "distillation_kl": lambda s, t, temperature=1.0: softlight.distillation_loss(s, t, temperature=temperature),
        "distillation_jsd": lambda s, t, temperature=1.0: softlight.distillation_loss(
            s, t, divergence="jsd", beta=0.5, temperature=temperature),
    }[op]
    return Impl(fn, options=("temperature",))  # fused into the kernels


def _softlight_linear_jsd(hidden, weight, teacher_hidden, teacher_weight):
    import softlight

    return softlight.linear_distillation_loss(hidden, weight, teacher_hidden, teacher_weight, divergence="jsd",
                                              beta=0.5)


def _torch_token_logprobs(logits, ids):
    import torch

    # What reinforcement-learning code writes today: a whole (N, V) float32 log-softmax, read
    # back for one value per row.
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0]


def _torch_linear_cross_entropy(hidden, weight, target):
    import torch.nn.functional as F

    # The unfused path as training code runs it: the logits, their float32 copy, then the loss.
    return F.cross_entropy(F.linear(hidden, weight).float(), target)


def _torch_kl(student, teacher):
    import torch
    import torch.nn.functional as F

    # What distillation code writes: KL(p_t || p_s) of the two log-softmaxes, in float32.
    return F.kl_div(torch.log_softmax(student.float(), -1), torch.log_softmax(teacher.float(), -1),
                    reduction="batchmean", log_target=True)


def _torch_jsd(student, teacher, beta=0.5):
    import math

    import torch
    import torch.nn.functional as F

    # The generalised JSD composed of torch ops: log m by logsumexp, then two KLs to it.
    log_s, log_t = torch.log_softmax(student.float(), -1), torch.log_softmax(teacher.float(), -1)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1 - beta)]), 0)
    return (beta * F.kl_div(log_m, log_t, reduction="batchmean", log_target=True)
            + (1 - beta) * F.kl_div(log_m, log_s, reduction="batchmean", log_target=True))


def _torch_linear_jsd(hidden, weight, teacher_hidden, teacher_weight):
    import torch.nn.functional as F

    # Both models' logits held whole, then the composition above.
    return _torch_jsd(F.linear(hidden, weight), F.linear(teacher_hidden, teacher_weight))


def _torch(op):
    import torch

    return {
        "softmax": lambda x: torch.softmax(x, -1),
        "log_softmax": lambda x: torch.log_softmax(x, -1),
        "cross_entropy": torch.nn.functional.cross_entropy,
        "token_logprobs": _torch_token_logprobs,
        "linear_cross_entropy": _torch_linear_cross_entropy,
        "distillation_kl": _torch_kl,
        "distillation_jsd": _torch_jsd,
        "linear_distillation_jsd": _torch_linear_jsd,
    }[op]


def _torch_compile(op):
    import torch

    # A fresh compile for every shape: dynamo's cache is keyed by code object, and past its
    # recompile limit it would silently run the eager function instead.
    torch._dynamo.reset()
    return torch.compile(_torch(op), dynamic=False, fullgraph=True)


def _liger(op):
    import liger_kernel.transformers.functional as liger

    if op == "linear_cross_entropy":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss()

        def fused(hidden, weight, target):
            out = loss(weight, hidden, target)  # Liger takes the weight first
            # Versions that can also return the z-loss return a tuple.
            return out[0] if isinstance(out, tuple) else out
        return Impl(fused, directions=_GRADIENT_IN_FORWARD,
                    note="Liger computes the gradients during forward; its backward only rescales them, so it is "
                         "not timed alone")
    if op == "cross_entropy":
        return Impl(liger.liger_cross_entropy, directions=("forward", "forward+backward"),
                    note="Liger writes the gradient during forward; its backward only rescales it, so it is not timed alone")
    if op == "softmax":
        return getattr(liger, "liger_softmax", None)
    return _liger_distillation(liger, op)


def _liger_distillation(liger, op):
    """Liger's KL and JSD take log-probabilities (the student's first): torch's float32
    log-softmaxes feed them. Its JSD writes the gradient during forward (backward not timed
    alone), as does its fused linear JSD, which takes both models' hidden states and weights."""
    import torch

    if op == "distillation_kl" and hasattr(liger, "liger_kl_div"):
        return lambda s, t: liger.liger_kl_div(torch.log_softmax(s.float(), -1), torch.log_softmax(t.float(), -1),
                                               reduction="batchmean", log_target=True)
    if op == "distillation_jsd" and hasattr(liger, "liger_jsd"):
        return Impl(lambda s, t: liger.liger_jsd(torch.log_softmax(s.float(), -1), torch.log_softmax(t.float(), -1),
                                                 beta=0.5),
                    directions=_GRADIENT_IN_FORWARD,
                    note="Liger writes the gradient during forward; its backward only rescales it, so it is not "
                         "timed alone")
    if op == "linear_distillation_jsd" and hasattr(liger, "liger_fused_linear_jsd"):
        return Impl(lambda h, w, th, tw: liger.liger_fused_linear_jsd(h, w, th, tw, jsd_beta=0.5),
                    directions=_GRADIENT_IN_FORWARD,
                    note="Liger computes the gradients during forward; its backward only rescales them, so it is "
                         "not timed alone")
    return None


def _quack(op):
    import quack

    if op == "softmax":
        return quack.softmax
    if op == "cross_entropy":
        def cross_entropy(logits, target):
            # Some quack versions return per-row losses by default.
            loss = quack.cross_entropy(logits, target)
            return loss if loss.dim() == 0 else loss.mean()
        return cross_entropy
    return None


BUILTIN = {
    "softlight": Provider("softlight", _softlight, "built-in"),
    "torch": Provider("torch", _torch, "built-in: torch eager"),
    "torch.compile": Provider("torch.compile", _torch_compile, "built-in: torch.compile(torch op), compile time excluded"),
    "liger": Provider("liger", _liger, "built-in: Liger-Kernel (pip install liger-kernel)"),
    "quack": Provider("quack", _quack, "built-in: quack (pip install quack-kernels)"),
}


def _entry_points():
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def registered() -> dict[str, Provider]:
    """The built-in providers, then those of installed plugins (entry point group
    "softlight.providers"; the entry point's name is the provider's name). A plugin that
    fails to load is kept, and reported as unavailable when it runs."""
    providers = dict(BUILTIN)
    for ep in _entry_points():
        if ep.name in providers:
            raise UsageError(f"entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r} reuses the provider name "
                             f"{ep.name!r}; choose another name")

        def make(op, ep=ep):
            try:
                target = ep.load()
            except Exception as exc:  # a broken plugin is reported as unavailable, not fatal
                raise ImportError(f"entry point {ep.value!r} failed to load: {exc}") from exc
            return target(op)

        providers[ep.name] = Provider(ep.name, make, f"entry point {ep.value}")
    return providers


def load_spec(spec: str) -> Provider:
    """A provider from 'MODULE:ATTR' (named ATTR) or 'NAME=MODULE:ATTR'."""
    name, _, target = spec.rpartition("=") if "=" in spec else ("", "", spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr or (("=" in spec) and not name):
        raise UsageError(f"--provider {spec!r}: expected a provider name ({', '.join(registered())}), "
                         "MODULE:ATTR or NAME=MODULE:ATTR")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--provider {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--provider {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--provider {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable provider")
    return Provider(name or attr.rsplit(".", 1)[-1], obj, target)


def resolve(specs=None) -> list[Provider]:
    """Providers by name or spec, in order; every registered provider when `specs` is empty."""
    known = registered()
    if not specs:
        return list(known.values())
    chosen = []
    for spec in specs:
        provider = known.get(spec) or (load_spec(spec) if ":" in spec else None)
        if provider is None:
            raise UsageError(f"--provider {spec!r}: not a registered provider ({', '.join(known)}) "
                             "nor MODULE:ATTR")
        if provider.name in [p.name for p in chosen]:
            raise UsageError(f"--provider: the name {provider.name!r} is given twice; name one NAME=MODULE:ATTR")
        chosen.append(provider)
    return chosen
