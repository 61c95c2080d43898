"""Output projections in chunks of tokens: what the memory-lean losses share.

A loss over a language model's vocabulary starts with logits = hidden @ weight.T + bias, an
(N, V) tensor that at a 256K vocabulary is the largest one in training. The memory-lean losses
(`linear_cross_entropy`, `linear_token_logprobs`) never hold it: they take the N tokens a chunk
of rows at a time, compute that chunk's logits with one matmul (cuBLAS, in the hidden states'
dtype, as `F.linear` would), run the row kernels on them, overwrite them in place with their
gradient, and fold that gradient into the gradients of hidden, weight and bias:

    d hidden[chunk] = d logits @ weight         (one matmul over the whole vocabulary: exact)
    d weight       += d logits.T @ hidden[chunk]  (summed over chunks, in fp32)
    d bias         += d logits.sum(0)             (summed over chunks, in fp32)

Memory, beyond the inputs and the gradients themselves: one chunk's logits (`chunk_rows` x V
elements of the hidden dtype, the same buffer then holding their gradient), a few fp32 numbers
per token, and, when the weight is fp16 or bf16, an fp32 accumulator for its gradient (4 V H
bytes, alive only while the gradient is being summed; summing in the weight's own dtype would
round the running sum once per chunk and lose the last ulps the unfused matmul keeps).

The two linear losses' ops (kernels/linear_cross_entropy_op.py, kernels/linear_token_logprobs_op.py)
drive the row engines of cross-entropy and token log-probabilities through these pieces.
"""

import contextlib

import torch
import triton

from . import launch

__all__ = ["chunk_rows", "chunk_slices", "linear", "LinearGradients", "placeholder"]


def chunk_rows(n_rows: int, n_hidden: int, n_vocab: int, chunk_size: int | None = None) -> int:
    """Rows per chunk. By default a chunk's logits take about as many elements as the hidden
    states of all N tokens (N x H, which the model holds anyway), and at least the launch
    policy's min_chunk_rows rows; `chunk_size` overrides that. Never more than n_rows (but at least 1).

    The trade-off: a larger chunk holds more logits at once; a smaller one costs more passes
    over the weight gradient's accumulator (one read and write of V x H per chunk)."""
    if chunk_size is None:
        chunk_size = max(triton.cdiv(n_rows * n_hidden, max(n_vocab, 1)), launch.policy().min_chunk_rows)
    return max(min(chunk_size, n_rows), 1)


def _no_autocast(device: torch.device):
    """Every matmul here runs in the inputs' own dtype, as the checks promised, even inside an
    autocast region (which would otherwise round the logits of fp32 inputs to lower precision).
    The meta device of the compile report's dry runs has no autocast to turn off."""
    return contextlib.nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def chunk_slices(n_rows: int, rows: int):
    """The row ranges of the chunks, as slices."""
    return [slice(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


def linear(hidden, weight, bias):
    """A chunk's logits, as the unfused path computes them (same dtype, same matmul)."""
    with _no_autocast(hidden.device):
        return torch.nn.functional.linear(hidden, weight, bias)


class LinearGradients:
    """Gradients of hidden (N, H), weight (V, H) and bias (V,) of logits = hidden @ weight.T + bias,
    built up one chunk of rows at a time from that chunk's d logits. `needs` says which of the
    three are wanted (the others stay None)."""

    def __init__(self, hidden, weight, bias, needs):
        need_hidden, need_weight, need_bias = needs
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.weight, self.bias_dtype = weight, None if bias is None else bias.dtype
        self.hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 and fp64 weights accumulate straight into their gradient; fp16 and bf16 in fp32.
        self.weight_acc = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        self.bias_acc = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_bias and bias is not None else None

    def add(self, rows: slice, dlogits, hidden_chunk):
        with _no_autocast(dlogits.device):
            self._add(rows, dlogits, hidden_chunk)

    def _add(self, rows, dlogits, hidden_chunk):
        if self.hidden is not None:
            torch.mm(dlogits, self.weight, out=self.hidden[rows])
        if self.weight_acc is not None:
            _add_product(self.weight_acc, dlogits.t(), hidden_chunk)
        if self.bias_acc is not None:
            self.bias_acc += dlogits.sum(0, dtype=self.bias_acc.dtype)

    def result(self):
        """(d hidden, d weight, d bias) in the dtypes of hidden, weight and bias."""
        weight = None if self.weight_acc is None else self.weight_acc.to(self.weight.dtype)
        bias = None if self.bias_acc is None else self.bias_acc.to(self.bias_dtype)
        return self.hidden, weight, bias


def _add_product(acc, a, b):
    """acc += a @ b, for acc in fp32 and a, b in fp16/bf16 (or all in one dtype).

    Each product is rounded once to the inputs' dtype and summed in fp32. The product is formed
    a block of acc's rows at a time, so the temporary stays about the size of `a` (one chunk's
    logits) rather than the size of acc (the whole weight)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    rows = max(a.numel() // max(b.shape[1], 1), 1)
    for start in range(0, acc.shape[0], rows):
        acc[start:start + rows] += a[start:start + rows] @ b


def placeholder(like: torch.Tensor) -> torch.Tensor:
    """What an op returns in place of an output it did not compute (ops cannot return None)."""
    return like.new_empty(0)
