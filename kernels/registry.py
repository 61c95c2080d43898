"""One way into torch: every public function is a registered torch.library op.

Each op family has one options object, a frozen dataclass deriving from `Options`. It goes whole
from the public function to the kernels; across the custom-op boundary it travels as one string,
`options.encode()`, and comes back with `Options.decode(text)`, so no argument list is written
out twice. torch.compile sees the string as a constant of the graph.

`register_op` registers a function as the op softlight::<name>. Compiled, it is a
torch.library.triton_op: its body (plain torch and kernel launches through launch.run) doubles
as the fake implementation, and Inductor can trace into it. On the interpreter, where kernels
are Python and cannot be traced, and for bodies that loop over chunks with matmuls (`opaque`),
it is an opaque custom_op whose fake implementation is the body itself run under
launch.dry_run(): it allocates exactly what the real one does and launches nothing.
"""

import ast
import dataclasses

import torch

from . import launch

__all__ = ["Options", "register_op"]


def _parse(text: str):
    """A value as `repr` wrote it."""
    if text.startswith("torch."):
        return getattr(torch, text.removeprefix("torch."))  # a dtype
    if text in ("inf", "-inf", "nan"):
        return float(text)
    return ast.literal_eval(text)


class Options:
    """Base of the options dataclasses: `encode` to one string, `decode` back.

    The string is "name=repr(value);..." of every field: ints, floats (repr keeps every bit),
    bools, None, strings, tuples of those, and torch dtypes. It is built with an f-string, which
    torch.compile traces (json would break the graph).
    """

    def encode(self) -> str:
        return ";".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))

    @classmethod
    def decode(cls, text: str):
        return cls(**{name: _parse(value) for name, _, value in (part.partition("=") for part in text.split(";"))})


def register_op(name: str, mutates_args=(), opaque: bool = False):
    """Decorator: register `fn` as the custom op softlight::<name> (see the module's docstring).
    `mutates_args` names the arguments the op writes into (torch bumps their version counters)."""

    def register(fn):
        if launch.INTERPRETED or opaque:
            op = torch.library.custom_op(f"softlight::{name}", fn, mutates_args=mutates_args)

            def fake(*args, **kwargs):
                with launch.dry_run():
                    return fn(*args, **kwargs)

            op.register_fake(fake)
            return op
        return torch.library.triton_op(f"softlight::{name}", fn, mutates_args=mutates_args)

    return register
