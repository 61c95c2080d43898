"""Swapping torch's softmax and cross-entropy modules for softlight's inside a model."""

import torch

from .cross_entropy_op import CrossEntropyLoss
from .softmax_op import LogSoftmax, Softmax

__all__ = ["swap_modules"]


def _replacement(module):
    """softlight's module with the same arguments, or None for a module we do not replace."""
    kind = type(module)
    if kind is torch.nn.Softmax:
        return Softmax(module.dim)
    if kind is torch.nn.LogSoftmax:
        return LogSoftmax(module.dim)
    if kind is torch.nn.CrossEntropyLoss:
        new = CrossEntropyLoss(module.weight, ignore_index=module.ignore_index, reduction=module.reduction,
                               label_smoothing=module.label_smoothing)
        return new.train(module.training)
    return None


def swap_modules(model: torch.nn.Module, verbose: bool = False) -> list[str]:
    """Replace every torch.nn.Softmax, LogSoftmax and CrossEntropyLoss inside `model` (its
    submodules, at any depth) by softlight's, with the same arguments. Subclasses of those
    modules are left alone (they may change what forward does).

    Returns one line per replacement, "<qualified name>: <torch class> -> <softlight class>", and
    prints them too with verbose=True; an empty list means nothing was replaced. A swapped module's
    repr says softlight (`softlight.Softmax(dim=1)`).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"softlight.swap_modules: model must be a torch.nn.Module, got {type(model).__name__}")
    if _replacement(model) is not None:
        raise TypeError(f"softlight.swap_modules: model is itself a {type(model).__name__}; construct "
                        "softlight's module instead (swap_modules replaces submodules)")
    done = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, child_name, new)
                full = f"{name}.{child_name}" if name else child_name
                done.append(f"{full}: torch.nn.{type(child).__name__} -> softlight.{type(new).__name__}")
    if verbose:
        print("softlight.swap_modules: " + (f"replaced {len(done)} module(s)" if done else "nothing to replace"))
        for line in done:
            print(f"  {line}")
    return done
