"""Softmax regression trained twice, once in NumPy with its explicit gradients and once with
torch autograd through softlight.cross_entropy, to show that the two agree step for step. It
follows the textbook chapter and lecture on softmax regression that softlight was started from:
a linear model, its softmax, and plain gradient descent on the mean cross-entropy.

    y_hat = softmax(X W + b)
    L     = mean_n -log y_hat[n, y_n]
    dL/dW = X^T (Y_hat - Y) / n,   dL/db = mean_n (Y_hat - Y)

1. A 3-class, 2-D synthetic data set (three Gaussian blobs): both implementations start from the
   same weights and take the same plain gradient-descent steps; their loss curves must agree to
   1e-6 relative at every step. The figure (decision regions and loss curves) goes to
   reports/examples/softmax_regression.png in this repository, from whatever folder the script
   is run, or to the folder --out names. Its style is fixed (colours, fonts, size), so running
   the committed code redraws the committed figure.
2. scikit-learn's 8x8 digits (10 classes, 64 features): trained the same way on a training
   split, held-out accuracy reported for both.

    python examples/softmax_regression.py [--steps 200] [--digits-steps 300] [--out FOLDER]

Without a GPU, softlight runs through Triton's interpreter: run the script with
TRITON_INTERPRET=1 (set below when no GPU is found), in float64 either way.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before softlight imports triton

import torch  # noqa: E402

import softlight  # noqa: E402
from softlight import reference  # noqa: E402

DEVICE = "cpu" if softlight.INTERPRETED else "cuda"
# The committed figure's folder, found from this file rather than from the working folder.
FIGURES = Path(__file__).resolve().parents[1] / "reports" / "examples"
FIGURE_NAME = "softmax_regression.png"
CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c"]


def blobs(n_per_class=100, seed=0):
    """Three 2-D Gaussian blobs, one per class."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]])
    x = np.concatenate([rng.normal(c, 0.9, size=(n_per_class, 2)) for c in centers])
    y = np.repeat(np.arange(3), n_per_class)
    return x, y


def train_numpy(x, y, n_classes, steps, lr, seed=0):
    """Plain gradient descent with the explicit gradients; returns (W, b, losses)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.01, size=(x.shape[1], n_classes))
    b = np.zeros(n_classes)
    Y = np.eye(n_classes)[y]
    n = len(x)
    losses = []
    for _ in range(steps):
        y_hat = reference.softmax(x @ W + b, axis=1)
        losses.append(float(-np.mean(np.log(y_hat[np.arange(n), y]))))
        W -= lr * x.T @ (y_hat - Y) / n
        b -= lr * np.mean(y_hat - Y, axis=0)
    return W, b, np.array(losses)


def train_softlight(x, y, n_classes, steps, lr, seed=0):
    """The same steps with torch autograd through softlight.cross_entropy (float64)."""
    rng = np.random.default_rng(seed)
    W = torch.tensor(rng.normal(0, 0.01, size=(x.shape[1], n_classes)), device=DEVICE, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, device=DEVICE, requires_grad=True)
    xt = torch.tensor(x, device=DEVICE)
    yt = torch.tensor(y, device=DEVICE)
    losses = []
    for _ in range(steps):
        loss = softlight.cross_entropy(xt @ W + b, yt)
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
            W.grad = None
            b.grad = None
    return W.detach().cpu().numpy(), b.detach().cpu().numpy(), np.array(losses)


def accuracy(x, y, W, b):
    return float(np.mean(np.argmax(x @ W + b, axis=1) == y))


def plot(x, y, W, b, losses_np, losses_sl, path):
    """Decision regions with the data, and both loss curves, drawn in matplotlib's default style
    whatever the local matplotlibrc says, with explicit colours, so the file depends only on the
    numbers (and the PNG carries no software version)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with matplotlib.style.context("default"):  # not the local matplotlibrc
        colours = ListedColormap(CLASS_COLOURS)
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        lo, hi = x.min(0) - 1, x.max(0) + 1
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        regions = np.argmax(grid @ W + b, axis=1).reshape(gx.shape)
        left.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], alpha=0.25, cmap=colours)
        left.scatter(x[:, 0], x[:, 1], c=y, s=12, cmap=colours, vmin=-0.5, vmax=2.5, edgecolors="k", linewidths=0.3)
        left.set_xlabel("feature 1")
        left.set_ylabel("feature 2")
        left.legend(handles=[Patch(facecolor=c, edgecolor="k", label=f"class {k}") for k, c in enumerate(CLASS_COLOURS)],
                    title="points: true class; shading: predicted class", loc="upper center",
                    bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize=8, title_fontsize=8)  # below: hides no point
        left.set_title("decision regions (softlight-trained W, b)")
        right.plot(losses_np, color="#1f77b4", linewidth=2, label="NumPy, explicit gradients")
        right.plot(losses_sl, color="#d62728", linestyle="--", linewidth=1.5,
                   label="torch autograd through softlight.cross_entropy")
        right.set_xlabel("gradient-descent step")
        right.set_ylabel("mean cross-entropy")
        right.set_title("loss curves (they coincide)")
        right.legend()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, dpi=90, metadata={"Software": None})


def run(steps=200, digits_steps=300, out=FIGURES, lr=0.5, digits_lr=0.5, figure=True):
    """Both experiments; returns a dict of what they measured. The figure goes to `out`
    (default: the repository's reports/examples/)."""
    x, y = blobs()
    W_np, b_np, losses_np = train_numpy(x, y, 3, steps, lr)
    W_sl, b_sl, losses_sl = train_softlight(x, y, 3, steps, lr)
    agreement = float(np.max(np.abs(losses_sl - losses_np) / losses_np))
    result = dict(blobs_steps=steps, blobs_loss_first=losses_np[0], blobs_loss_last=losses_np[-1],
                  blobs_max_relative_difference=agreement, blobs_accuracy_numpy=accuracy(x, y, W_np, b_np),
                  blobs_accuracy_softlight=accuracy(x, y, W_sl, b_sl))
    if figure:
        path = os.path.join(out, FIGURE_NAME)
        plot(x, y, W_sl, b_sl, losses_np, losses_sl, path)
        result["figure"] = path

    if digits_steps:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        features = digits.data / 16.0
        x_tr, x_te, y_tr, y_te = train_test_split(features, digits.target, test_size=0.3, random_state=0,
                                                  stratify=digits.target)
        W_np, b_np, d_np = train_numpy(x_tr, y_tr, 10, digits_steps, digits_lr)
        W_sl, b_sl, d_sl = train_softlight(x_tr, y_tr, 10, digits_steps, digits_lr)
        result.update(digits_steps=digits_steps, digits_max_relative_difference=float(np.max(np.abs(d_sl - d_np) / d_np)),
                      digits_test_accuracy_numpy=accuracy(x_te, y_te, W_np, b_np),
                      digits_test_accuracy_softlight=accuracy(x_te, y_te, W_sl, b_sl))
    return result


def parser():
    description = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="gradient-descent steps on the 3-class blobs")
    p.add_argument("--digits-steps", type=int, default=300,
                   help="gradient-descent steps on scikit-learn's digits; 0 skips them")
    p.add_argument("--out", type=Path, default=FIGURES, metavar="FOLDER",
                   help=f"folder the figure {FIGURE_NAME} is written to; by default this repository's "
                        "reports/examples/, whatever the working folder")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    result = run(args.steps, args.digits_steps, args.out)
    print(f"3-class blobs, {result['blobs_steps']} steps: loss {result['blobs_loss_first']:.4f} -> "
          f"{result['blobs_loss_last']:.4f}; NumPy and softlight loss curves differ by at most "
          f"{result['blobs_max_relative_difference']:.1e} relative; training accuracy "
          f"{result['blobs_accuracy_numpy']:.3f} (NumPy) / {result['blobs_accuracy_softlight']:.3f} (softlight)")
    if "figure" in result:
        print(f"figure: {result['figure']}")
    if "digits_steps" in result:
        print(f"digits (10 classes), {result['digits_steps']} steps: curves differ by at most "
              f"{result['digits_max_relative_difference']:.1e} relative; held-out accuracy "
              f"{result['digits_test_accuracy_numpy']:.3f} (NumPy) / {result['digits_test_accuracy_softlight']:.3f} (softlight)")
    ok = result["blobs_max_relative_difference"] <= 1e-6
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
