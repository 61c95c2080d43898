"""A small character-level transformer language model, trained twice from the same start on the
same batches: once with torch's cross-entropy, once with softlight's. The loss curves must
agree within the dtype's tolerance; on a GPU the step time and peak memory of both are reported.

The text is the Python documentation's topic pages that ship with every Python
(`pydoc_data.topics`), so nothing is downloaded.

    python examples/tiny_lm.py [--steps 300] [--batch 16] [--seq 64] [--layers 2] [--width 64]
                               [--dtype float64|float32|bfloat16]

The default dtype is float64: then the only difference between the two runs is the
cross-entropy, and the curves agree to the float64 tolerance (1e-12; measured: identical over 300
steps). In float32 the two losses differ by rounding, 1e-7, at the first steps, and 300 AdamW steps
amplify that (measured: up to 3.2e-4 relative at lr 1e-3, 1.9e-3 at lr 3e-3), so the check there
allows 1e-2; bfloat16 is allowed 5e-2 (an allowance, not yet measured).

Without a GPU softlight runs through Triton's interpreter (TRITON_INTERPRET=1, set below when no
GPU is found); the model itself is plain torch.
"""

import argparse
import os
import statistics
import sys
import time

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before softlight imports triton

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import softlight  # noqa: E402

DEVICE = "cpu" if softlight.INTERPRETED else "cuda"


def corpus(max_chars=300_000):
    """The documentation topics as one string, and its characters as a vocabulary."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))[:max_chars]
    vocab = sorted(set(text))
    return text, vocab


class TinyLM(torch.nn.Module):
    def __init__(self, vocab_size, width=64, layers=2, heads=4, seq=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.position = torch.nn.Parameter(torch.zeros(seq, width))
        block = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab_size)
        self.register_buffer("causal", torch.nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        seq = tokens.shape[1]
        h = self.embed(tokens) + self.position[:seq]
        h = self.blocks(h, mask=self.causal[:seq, :seq], is_causal=True)
        return self.head(self.norm(h))


LOSSES = {
    "torch": lambda logits, target: F.cross_entropy(logits.flatten(0, 1), target.flatten()),
    "softlight": lambda logits, target: softlight.cross_entropy(logits.flatten(0, 1), target.flatten()),
}


def batches(data, steps, batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        window = torch.stack([data[s : s + seq + 1] for s in start.tolist()])
        yield window[:, :-1].to(DEVICE), window[:, 1:].to(DEVICE)


DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {"float64": 1e-12, "float32": 1e-2, "bfloat16": 5e-2}


def train(loss_name, data, vocab_size, steps, batch, seq, width, layers, dtype="float64", lr=3e-3, seed=0):
    """Losses per step, and on a GPU the median step time (ms) and the peak memory (bytes)."""
    torch.manual_seed(seed)
    model = TinyLM(vocab_size, width, layers, seq=seq).to(DEVICE, DTYPES[dtype])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = LOSSES[loss_name]
    losses, times = [], []
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for tokens, target in batches(data, steps, batch, seq):
        t0 = time.perf_counter()
        loss = loss_fn(model(tokens), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    result = dict(losses=losses)
    if DEVICE == "cuda":
        result["step_ms"] = 1e3 * statistics.median(times[min(10, len(times) // 2):])  # past the warm-up
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def run(steps=300, batch=16, seq=64, width=64, layers=2, dtype="float64"):
    text, vocab = corpus()
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text])
    runs = {name: train(name, data, len(vocab), steps, batch, seq, width, layers, dtype) for name in LOSSES}
    a, b = torch.tensor(runs["softlight"]["losses"]), torch.tensor(runs["torch"]["losses"])
    return dict(vocab=len(vocab), chars=len(text), runs=runs,
                max_relative_difference=float(((a - b).abs() / b.abs()).max()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64", help="the model's dtype (default: float64)")
    parser.add_argument("--tolerance", type=float,
                        help="largest relative difference allowed between the two loss curves (default: by dtype, "
                             + ", ".join(f"{k} {v:.0e}" for k, v in TOLERANCE.items()) + ")")
    args = parser.parse_args(argv)
    tolerance = TOLERANCE[args.dtype] if args.tolerance is None else args.tolerance
    result = run(args.steps, args.batch, args.seq, args.width, args.layers, args.dtype)
    print(f"text: {result['chars']} characters of Python's documentation topics, vocabulary {result['vocab']}; "
          f"{args.steps} AdamW steps of {args.batch} x {args.seq} tokens, {args.dtype}, on {DEVICE}")
    for name, r in result["runs"].items():
        line = f"  {name:9s} loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        if "step_ms" in r:
            line += f"; median step {r['step_ms']:.2f} ms; peak memory {r['peak_bytes'] / 2**20:.1f} MiB"
        print(line)
    print(f"loss curves differ by at most {result['max_relative_difference']:.1e} relative (tolerance {tolerance:.0e})")
    return 0 if result["max_relative_difference"] <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
