"""softlight.reference: the float64 NumPy reference every kernel is checked against.

It never imports torch: it is the independent side of every comparison.
"""

from .cross_entropy import REDUCTIONS, cross_entropy, cross_entropy_backward, cross_entropy_lse
from .distillation import (
    distillation,
    distillation_backward,
    divergence_rows,
    linear_distillation,
    linear_distillation_backward,
)
from .errors import TOLERANCE, relative_error
from .linear_cross_entropy import (
    linear_cross_entropy,
    linear_cross_entropy_backward,
    linear_logits,
    linear_token_logprobs,
    linear_token_logprobs_backward,
)
from .softmax import (
    log_softmax,
    log_softmax_backward,
    logsumexp,
    naive_log_softmax,
    naive_softmax,
    softmax,
    softmax_backward,
)
from .token_logprobs import token_logprobs, token_logprobs_backward

__all__ = [
    "TOLERANCE",
    "relative_error",
    "logsumexp",
    "softmax",
    "log_softmax",
    "softmax_backward",
    "log_softmax_backward",
    "naive_softmax",
    "naive_log_softmax",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_lse",
    "REDUCTIONS",
    "token_logprobs",
    "token_logprobs_backward",
    "linear_logits",
    "linear_cross_entropy",
    "linear_cross_entropy_backward",
    "linear_token_logprobs",
    "linear_token_logprobs_backward",
    "distillation",
    "distillation_backward",
    "divergence_rows",
    "linear_distillation",
    "linear_distillation_backward",
]
