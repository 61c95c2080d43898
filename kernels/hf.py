"""softlight.hf: train a Hugging Face `transformers` causal LM with `softlight.linear_cross_entropy`.

    import softlight.hf
    softlight.hf.patch(model)                    # any causal LM whose output head is an nn.Linear
    out = model(input_ids, labels=labels)        # out.loss from the final hidden states; out.logits is None
    softlight.hf.unpatch(model)                  # the model's own forward again

With labels, the patched forward runs the model's own forward with labels=None while its output
head (`model.get_output_embeddings()`) only records its input, the final hidden states (already
sliced by `logits_to_keep`), and returns a few probe numbers in place of the (tokens, vocabulary)
logits. The loss is then `linear_cross_entropy` of those hidden states, the head's weight and bias
and the labels, computed as the model's own loss computes it (transformers' `ForCausalLMLoss`):
labels shifted left by one (or the caller's `shift_labels`), `ignore_index` (-100), a mean, or
with `num_items_in_batch` (the Trainer's gradient accumulation) a sum divided by it. Without
labels the forward is the model's own, untouched: inference and `generate` are as before.

What a model does between its head and its loss is read from its forward's code at patch time
(the names its bytecode uses) and its config: Gemma 2/3's `final_logit_softcapping` becomes
`softcap`, Cohere's `logit_scale` (logits times s) a temperature of 1/s, Granite's
`logits_scaling` (logits divided by s) a temperature of s, and a mixture of experts' load-balancing
loss (`router_aux_loss_coef` times the output's `aux_loss`) is added as the model adds it. A
forward that uses any other name, a head that is not a plain nn.Linear, or another loss function
is refused at patch time. The first forward with labels also checks the transform: the model's
own code turns the probe numbers into what softlight assumed, or the call raises.
"""

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass

import torch

from .linear_cross_entropy_op import linear_cross_entropy

__all__ = ["patch", "unpatch", "is_patched"]

_STATE = "_softlight_hf"

# Names (attributes and globals, from co_names) a causal LM's forward may use and still compute
# ForCausalLMLoss of its head's output: the base model's outputs, the head and the loss call,
# return_dict plumbing, casts and devices. Besides these: the model's own submodules, output
# classes (capitalised names holding "Output"), and the names below.
_PLUMBING = frozenset({
    "config", "vocab_size", "slice_logits_to_keep", "slice", "isinstance", "int", "last_hidden_state",
    "hidden_states", "attentions", "cross_attentions", "cache", "past_key_values", "loss_function", "return_dict",
    "use_return_dict", "output_attentions", "output_hidden_states", "to", "device", "float", "dtype", "weight",
})
# logits = softcap * tanh(logits / softcap) (Gemma 2 and 3).
_SOFTCAP = frozenset({"final_logit_softcapping", "torch", "tanh"})
# logits * model.logit_scale (Cohere), logits / config.logits_scaling (Granite).
_SCALES = frozenset({"logit_scale", "logits_scaling"})
# loss += router_aux_loss_coef * load_balancing_loss_func(router_logits, ...) (Mixtral, Qwen2-MoE, ...).
_ROUTER = frozenset({"router_logits", "output_router_logits", "num_experts", "num_experts_per_tok",
                     "load_balancing_loss_func", "router_aux_loss_coef"})


@dataclass
class _Patch:
    softcap: float | None
    temperature: float
    router_loss: bool  # the forward adds router_aux_loss_coef * aux_loss to a loss
    checked: bool = False  # the probe went through the model's transform once


def _forward_names(cls) -> set:
    return set(inspect.unwrap(cls.forward).__code__.co_names)


def _known(name: str, model) -> bool:
    return (name in _PLUMBING or name in _SOFTCAP or name in _SCALES or name in _ROUTER
            or name in model._modules or (name[:1].isupper() and "Output" in name))


def _positive(what: str, value, cls_name: str) -> float:
    if isinstance(value, torch.Tensor):
        raise ValueError(f"softlight.hf.patch: {cls_name}'s {what} is a tensor (learned?); softlight.hf takes it "
                         "as a fixed number and would give it no gradient")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"softlight.hf.patch: {cls_name}'s {what} must be a finite number > 0, got {value!r}")
    return float(value)


def _plan(model) -> _Patch:
    """What the model's forward does between its head and its loss, or a clear refusal."""
    import torch.nn as nn

    try:
        from transformers import PreTrainedModel
        from transformers.loss.loss_utils import ForCausalLMLoss
    except ImportError as exc:
        raise ImportError(f"softlight.hf needs transformers ({exc}): pip install 'softlight[hf]'") from exc

    cls = _own_class(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"softlight.hf.patch: model must be a transformers PreTrainedModel, got {cls.__name__}")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise TypeError(f"softlight.hf.patch: {cls.__name__}'s output head (get_output_embeddings()) is "
                        f"{type(head).__name__}, not a plain torch.nn.Linear: softlight.hf computes the loss from the "
                        "head's weight and bias")
    if not head.weight.is_floating_point() or head.weight.device.type == "meta":
        raise TypeError(f"softlight.hf.patch: {cls.__name__}'s output head has a {head.weight.dtype} weight on "
                        f"{head.weight.device}; softlight.hf needs a floating-point weight in memory")
    loss = model.loss_function
    if loss is not ForCausalLMLoss:
        raise ValueError(f"softlight.hf.patch: {cls.__name__} computes its loss with "
                         f"{getattr(loss, '__name__', type(loss).__name__)} (loss_type "
                         f"{getattr(model, 'loss_type', None)!r}); softlight.hf computes transformers' ForCausalLMLoss")
    names = _forward_names(cls)
    if "loss_function" not in names:
        raise ValueError(f"softlight.hf.patch: {cls.__name__}.forward does not call self.loss_function: it computes "
                         "its loss its own way, which softlight.hf does not know")
    unknown = sorted(n for n in names if not _known(n, model))
    if unknown:
        raise ValueError(f"softlight.hf.patch: {cls.__name__}.forward uses {', '.join(unknown)}, which softlight.hf "
                         "does not know: they may change the logits or the loss")
    config = model.config
    softcap = getattr(config, "final_logit_softcapping", None) if "final_logit_softcapping" in names else None
    if softcap is not None:
        softcap = _positive("final_logit_softcapping", softcap, cls.__name__)
    temperature = 1.0
    if "logit_scale" in names:  # logits * s: a temperature of 1 / s
        temperature /= _positive("logit_scale", getattr(model, "logit_scale", getattr(config, "logit_scale", None)),
                                 cls.__name__)
    if "logits_scaling" in names:  # logits / s: a temperature of s
        temperature *= _positive("logits_scaling", getattr(config, "logits_scaling", None), cls.__name__)
    return _Patch(softcap, temperature, "router_aux_loss_coef" in names)


def patch(model):
    """Make `model` (a transformers causal LM whose output head is an nn.Linear) compute its loss
    with `softlight.linear_cross_entropy` whenever it is called with labels; returns the model.

    With labels the output's `logits` is None (they are never made) and its `loss` is the model's
    own loss (ForCausalLMLoss: shift, ignore_index, num_items_in_batch, final_logit_softcapping,
    logit scaling, the router's auxiliary loss) to within the dtype's rounding. Without labels
    nothing changes. Patching a patched model does nothing. Raises TypeError for a model that is
    not a transformers PreTrainedModel or whose head is not a plain nn.Linear, and ValueError for
    a model whose loss or logit transform softlight.hf does not know.
    """
    if is_patched(model):
        return model
    model.__dict__[_STATE] = _plan(model)
    model.__class__ = _patched_class(type(model))
    return model


def unpatch(model):
    """Give `model` its own forward back (its class as it was); returns the model. Unpatching a
    model that is not patched does nothing."""
    if is_patched(model):
        model.__class__ = _own_class(model)
        model.__dict__.pop(_STATE, None)
    return model


def is_patched(model) -> bool:
    return "_softlight_original" in vars(type(model))


def _own_class(model) -> type:
    return vars(type(model)).get("_softlight_original", type(model))


@functools.cache
def _patched_class(cls):
    """A subclass of cls with the patched forward, under cls's own names (save_pretrained records
    the class name as the architecture). A subclass rather than an instance attribute: copies of
    the model (deepcopy, nn.DataParallel's replicas) then call their own head, not the original's."""
    original = cls.forward
    signature = inspect.signature(original)

    def forward(self, *args, **kwargs):
        return _forward(self, original, signature, args, kwargs)

    # The original's signature and docstring: the Trainer and generate inspect them.
    functools.update_wrapper(forward, original)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "_softlight_original": cls})


def _forward(model, original, signature, args, kwargs):
    bound = signature.bind(model, *args, **kwargs)
    labels = bound.arguments.get("labels")
    if labels is None:
        return original(model, *args, **kwargs)
    state = model.__dict__.get(_STATE)
    if state is None:  # an instance made from the patched class itself (type(model)(config))
        state = model.__dict__[_STATE] = _plan(model)
    params = signature.parameters
    var_keyword = next((p.name for p in params.values() if p.kind == inspect.Parameter.VAR_KEYWORD), None)
    extra = bound.arguments.setdefault(var_keyword, {}) if var_keyword else {}
    bound.arguments["labels"] = None
    # The output must be a ModelOutput to carry the loss; it becomes a tuple at the end if wanted.
    holder = bound.arguments if "return_dict" in params else extra
    return_dict = holder.get("return_dict")
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)
    holder["return_dict"] = True

    head = model.get_output_embeddings()
    captured = []
    with _head_replaced(head, captured):
        out = original(*bound.args, **bound.kwargs)
    if len(captured) != 1:
        raise RuntimeError(f"softlight.hf: {type(model).__name__}'s forward called its output head {len(captured)} "
                           "times; softlight.hf serves forwards that call it once")
    if not state.checked:
        _check_transform(model, state, out.get("logits"))
        state.checked = True
    loss = _causal_lm_loss(captured[0], head, labels, state, extra)
    aux = out.get("aux_loss")
    if state.router_loss and aux is not None:
        loss = loss + model.router_aux_loss_coef * aux.to(loss.device)
    out = dataclasses.replace(out, loss=loss, logits=None)
    return out if return_dict else out.to_tuple()


_PROBE_SIZE = 4


def _probe(like: torch.Tensor) -> torch.Tensor:
    """What the replaced head returns: [-24, -8, 8, 24] for every token (made on the device, no
    host copy), for the first call's check of the model's transform of its logits."""
    values = (torch.arange(_PROBE_SIZE, dtype=torch.float32, device=like.device) - 1.5) * 16
    return values.expand(*like.shape[:-1], _PROBE_SIZE).contiguous()


class _head_replaced:
    """While inside: the head records its input and returns the probe, never the logits. The
    head's own instance-level forward (an accelerate hook's, say) is put back afterwards."""

    def __init__(self, head, captured):
        self.head, self.captured = head, captured

    def __enter__(self):
        self.previous = self.head.__dict__.get("forward")

        def capture(hidden):
            self.captured.append(hidden)
            return _probe(hidden)

        self.head.forward = capture

    def __exit__(self, *exc):
        if self.previous is None:
            del self.head.forward
        else:
            self.head.forward = self.previous


def _check_transform(model, state, logits):
    """The model's own code turned the probe p into `logits`: it must be softcap(p) / temperature,
    what linear_cross_entropy applies, else this model's loss would be wrong."""
    p = _probe(torch.empty(0)).double()  # (4,)
    expected = p if state.softcap is None else state.softcap * torch.tanh(p / state.softcap)
    expected = expected / state.temperature
    got = None
    if isinstance(logits, torch.Tensor) and logits.shape[-1:] == (_PROBE_SIZE,) and logits.numel():
        got = logits.detach().reshape(-1, _PROBE_SIZE)[0].to("cpu", torch.float64)
    if got is None or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())):
        shown = "no logits of the probe's shape" if got is None else [round(v, 4) for v in got.tolist()]
        raise RuntimeError(
            f"softlight.hf: {type(model).__name__} turns head outputs {p.tolist()} into {shown}, but softlight.hf "
            f"expected {[round(v, 4) for v in expected.tolist()]} (softcap {state.softcap}, temperature "
            f"{state.temperature:g}, from its forward's code and config): its loss would be wrong; unpatch it")


def _causal_lm_loss(hidden, head, labels, state, extra):
    """transformers' ForCausalLMLoss of hidden @ head.weight.T + head.bias (with the model's
    transform), without the logits."""
    ignore_index = extra.get("ignore_index", -100)
    shift_labels = extra.get("shift_labels")
    if shift_labels is None:
        # Token t predicts label t + 1; the last token predicts nothing.
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    weight = head.weight
    h = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
    target = shift_labels.reshape(-1).to(h.device)
    if target.numel() != h.shape[0]:
        raise ValueError(f"softlight.hf: the head saw {h.shape[0]} tokens (after logits_to_keep) but the labels have "
                         f"{target.numel()}; the model's own loss needs them equal too")
    num_items = extra.get("num_items_in_batch")
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.reshape(())
        if num_items.device.type != "cpu":  # a CPU count is read on the host, without a synchronisation
            num_items = num_items.to(h.device)
    return linear_cross_entropy(h, weight, target, head.bias, ignore_index=ignore_index, softcap=state.softcap,
                                temperature=state.temperature, num_items=num_items)
