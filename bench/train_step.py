"""`softlight train-step`: one training step (forward and backward) of a Hugging Face causal LM
with a real-size output head, its loss computed three ways: the model's own (`transformers`: the
logits made whole, then ForCausalLMLoss), `softlight.hf.patch`, and Liger-Kernel's patch of the
same model (`liger`, its fused linear cross-entropy only, when importable). Time and peak memory
of a step.

The model has Llama's architecture at Llama 3 8B's width (hidden 4096, 32 heads, 8 key-value
heads, MLP 14336) but only `layers` decoder layers (2 by default): the three differ only in the
head and the loss, and the layers cost each of them the same. Weights in bf16 on the GPU, the
head untied, vocabularies of 128256 (Llama 3) and 262144 (Gemma 3), 8192 tokens a step (2
sequences of 4096), every token a label. A step is `model(input_ids, labels=labels).loss.backward()`
with the parameters' gradients freed before it (no optimizer): the peak memory is above the
weights and inputs, and holds every parameter's gradient as well as what the loss needs.

Before timing, each provider's loss and head-weight gradient are compared with the model's own
(relative error). Both sides round in bf16, so the bound is bf16's tolerance; a provider over it is
`wrong` and not timed. Without a GPU there is no timing: `softlight train-step` then runs the same
check on a tiny model through Triton's interpreter (float32).
"""

import copy
import math
from dataclasses import dataclass

import pandas as pd
import torch

from softlight.reference import TOLERANCE, relative_error

__all__ = ["Shape", "GPU_SHAPES", "CPU_SHAPES", "PROVIDERS", "StepTimer", "run", "to_markdown"]


@dataclass(frozen=True)
class Shape:
    vocab: int
    tokens: int = 8192
    hidden: int = 4096
    layers: int = 2
    sequences: int = 2
    heads: int = 32
    kv_heads: int = 8
    mlp: int = 14336


GPU_SHAPES = [Shape(128256), Shape(262144)]
CPU_SHAPES = [Shape(256, tokens=32, hidden=32, layers=1, heads=4, kv_heads=2, mlp=64)]


class StepTimer:
    """The benchmark's CUDA timing (`CudaDevice`) over about 3 s of steps: a step takes 0.1 to 1 s,
    so do_bench's default 100 ms would time a single one."""

    def __init__(self):
        from .measure import CudaDevice

        self._cuda = CudaDevice()
        self.name, self.torch_device = self._cuda.name, self._cuda.torch_device

    def time(self, fn):
        import triton.testing

        from .measure import Timing

        p50, p20, p80 = triton.testing.do_bench(fn, warmup=500, rep=3000, quantiles=[0.5, 0.2, 0.8])
        return Timing(p50, p20, p80)

    def peak_memory(self, fn):
        return self._cuda.peak_memory(fn)


def _transformers(model):
    return lambda: None


def _softlight(model):
    import softlight.hf

    softlight.hf.patch(model)
    return lambda: softlight.hf.unpatch(model)


def _liger(model):
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    # Its fused linear cross-entropy only (an instance-level forward); its other kernels would
    # change the layers' time too.
    apply_liger_kernel_to_llama(rope=False, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=False,
                                swiglu=False, model=model)
    return lambda: model.__dict__.pop("forward", None)


# name -> prepare(model) -> undo(); run in this order, the model's own first (the check's baseline).
PROVIDERS = {"transformers": _transformers, "softlight": _softlight, "liger": _liger}


def _model(shape: Shape, dtype, device):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.mlp, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, tie_word_embeddings=False,
        max_position_embeddings=max(4096, shape.tokens // shape.sequences))
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no host copy of billions of weights
        model = transformers.LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # logits spread over several units, as a trained model's do
        model.lm_head.weight.normal_(0, 4 / shape.hidden**0.5)
    return model.train()


def _free_gradients(model):
    for p in model.parameters():
        p.grad = None


def _step(model, ids, labels):
    def step():
        _free_gradients(model)
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        return out.loss.detach()
    return step


def run(shapes=None, providers=None, device=None) -> pd.DataFrame:
    """One row per shape and provider. `device`: a bench Device that times (StepTimer), or None
    for the check alone (on the interpreter's CPU tensors when there is no GPU)."""
    from .table import environment

    timed = device is not None
    shapes = shapes or (GPU_SHAPES if timed else CPU_SHAPES)
    names = providers or list(PROVIDERS)
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"providers must be among {list(PROVIDERS)}, got {unknown}")
    where = device.torch_device if timed else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if where == "cuda" else torch.float32
    tolerance = TOLERANCE["bfloat16" if dtype == torch.bfloat16 else "float32"]
    records = []
    for shape in shapes:
        model = _model(shape, dtype, where)
        generator = torch.Generator(device=where).manual_seed(1)
        ids = torch.randint(0, shape.vocab, (shape.sequences, shape.tokens // shape.sequences), device=where,
                            generator=generator)
        baseline = None
        for name in ["transformers"] + [n for n in names if n != "transformers"]:
            row = dict(provider=name, vocab=shape.vocab, tokens=shape.tokens, hidden=shape.hidden, layers=shape.layers,
                       dtype=str(dtype).removeprefix("torch."), status="ok", ms_p50=math.nan, ms_p20=math.nan,
                       ms_p80=math.nan, peak_mem_bytes=math.nan, loss=math.nan, loss_error=math.nan,
                       grad_error=math.nan, note="")
            try:
                undo = PROVIDERS[name](model)
            except ImportError as exc:
                row.update(status="unavailable", note=f"{type(exc).__name__}: {exc}")
            else:
                try:
                    step = _step(model, ids, ids)
                    row["loss"] = float(step())
                    grad = model.lm_head.weight.grad.detach().float().cpu()
                    if baseline is None:
                        baseline = (row["loss"], grad)
                    row["loss_error"] = abs(row["loss"] - baseline[0]) / abs(baseline[0])
                    row["grad_error"] = relative_error(grad.double().numpy(), baseline[1].double().numpy())
                    if not max(row["loss_error"], row["grad_error"]) <= tolerance:
                        row.update(status="wrong", note=f"over the tolerance {tolerance:.0e} against the model's own")
                    elif timed:
                        timing = device.time(step)
                        _free_gradients(model)  # the peak then counts the step's own gradients
                        row.update(ms_p50=timing.p50, ms_p20=timing.p20, ms_p80=timing.p80,
                                   peak_mem_bytes=device.peak_memory(step))
                except Exception as exc:  # out of memory, say: this provider fails, the run goes on
                    row.update(status="error", note=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
                finally:
                    _free_gradients(model)
                    undo()
            records.append(row)
            if name == "transformers" and baseline is None:
                break  # nothing to check the others against
        del model
        if where == "cuda":
            torch.cuda.empty_cache()
    env = environment(device.name if timed else torch.cuda.get_device_name() if where == "cuda" else "interpreter")
    return pd.DataFrame.from_records([{**r, **env} for r in records])


def _cell(value, spec="") -> str:
    return "" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def to_markdown(df: pd.DataFrame) -> str:
    """The table as a report page: per vocabulary, each provider's time and peak memory, and its
    ratios to the model's own."""
    lines = [f"# Training step of a causal LM: {df.device.iloc[0]}", "",
             "One forward and backward with labels; the model and the measurement are described in "
             "`softlight.bench.train_step`.", "",
             "| vocab | tokens | hidden | layers | provider | status | ms (p50) | peak GiB | time / own | memory / own "
             "| loss error | grad error | note |", "|" + "---|" * 13]
    for _, group in df.groupby("vocab", sort=True):
        own = group[group.provider == "transformers"].iloc[0]
        for _, r in group.iterrows():
            time_ratio, memory_ratio = r.ms_p50 / own.ms_p50, r.peak_mem_bytes / own.peak_mem_bytes
            lines.append(f"| {r.vocab} | {r.tokens} | {r.hidden} | {r.layers} | {r.provider} | {r.status} | "
                         f"{_cell(r.ms_p50, '.1f')} | {_cell(r.peak_mem_bytes / 2**30, '.2f')} | "
                         f"{_cell(time_ratio, '.2f')} | {_cell(memory_ratio, '.2f')} | {_cell(r.loss_error, '.1e')} | "
                         f"{_cell(r.grad_error, '.1e')} | {r.note} |")
    env = df.iloc[0]
    lines += ["", f"torch {env.torch}, triton {env.triton}, softlight {env.git_rev}, {env.date} (UTC)"]
    return "\n".join(lines) + "\n"
