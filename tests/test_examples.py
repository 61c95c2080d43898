"""The examples, on small settings: they run, and what they claim holds."""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_softmax_regression_numpy_and_softlight_agree(tmp_path):
    example = load("softmax_regression")
    result = example.run(steps=15, digits_steps=4, out=str(tmp_path))
    assert result["blobs_max_relative_difference"] <= 1e-6
    assert result["blobs_loss_last"] < 0.8 * result["blobs_loss_first"]
    assert result["blobs_accuracy_numpy"] == result["blobs_accuracy_softlight"] > 0.8
    assert result["digits_max_relative_difference"] <= 1e-6
    assert result["digits_test_accuracy_numpy"] == result["digits_test_accuracy_softlight"] > 0.5
    assert (tmp_path / "softmax_regression.png").stat().st_size > 10_000


def test_tiny_lm_loss_curves_agree():
    example = load("tiny_lm")
    result = example.run(steps=4, batch=2, seq=16, width=32, layers=1)  # float64
    torch_losses = result["runs"]["torch"]["losses"]
    assert len(torch_losses) == 4 and torch_losses[-1] < torch_losses[0]
    assert result["max_relative_difference"] <= 1e-12
    result = example.run(steps=3, batch=2, seq=16, width=32, layers=1, dtype="float32")
    assert result["max_relative_difference"] <= 1e-5  # a few steps: rounding not yet amplified


def test_tiny_lm_command_line(capsys, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    example = load("tiny_lm")
    assert example.main(["--steps", "4", "--every", "2", "--batch", "2", "--seq", "8", "--width", "16", "--layers", "1",
                         "--lr", "1e-3", "--out", str(tmp_path / "figures")]) == 0
    out = capsys.readouterr().out
    assert "loss curves differ by at most" in out and "(lr 0.001)" in out
    # Progress while it runs: a line every 2 steps of each run, before the summary.
    progress = [line.split(":")[0].split() for line in out.splitlines() if " step " in line]
    assert progress == [[name, "step", f"{k}/4"] for name in ("torch", "softlight") for k in (2, 4)]
    assert (tmp_path / "figures" / "tiny_lm.png").stat().st_size > 10_000
    assert not any(elsewhere.iterdir())


@pytest.mark.parametrize("name", ["softmax_regression", "tiny_lm"])
def test_help_is_complete(name, capsys):
    """--help opens with whole sentences (the docstring's first paragraph, not its first line),
    and every option says what it is and shows its default."""
    example = load(name)
    parser = example.parser()
    first_paragraph = " ".join(example.__doc__.split("\n\n")[0].split())
    assert parser.description == first_paragraph and first_paragraph.endswith(".")
    assert len(first_paragraph.split(". ")) >= 2  # more than the one line that used to stop mid-sentence
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    for action in options:
        assert action.help, action.dest
    with_default = [a for a in options if a.default is not None]
    assert text.count("(default:") == len(with_default) > 0
    if name == "tiny_lm":
        assert "--lr" in text and "--every" in text and "--out" in text


@pytest.mark.parametrize("name, figure", [("softmax_regression", "softmax_regression.png"), ("tiny_lm", "tiny_lm.png")])
def test_figures_go_to_the_repository_whatever_the_working_folder(name, figure, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = load(name)
    assert example.parser().parse_args([]).out == ROOT / "reports" / "examples"
    assert example.FIGURE_NAME == figure


def test_softmax_regression_writes_to_out_not_to_the_working_folder(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    example = load("softmax_regression")
    assert example.main(["--steps", "3", "--digits-steps", "0", "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "softmax_regression.png").is_file()
    assert not any(elsewhere.iterdir())
    assert f"figure: {tmp_path / 'figures' / 'softmax_regression.png'}" in capsys.readouterr().out


def test_softmax_regression_figure_ignores_the_local_matplotlib_style(tmp_path):
    """The same numbers draw the same bytes under any matplotlibrc, so the committed figure is
    what the committed code draws."""
    import matplotlib
    from cycler import cycler

    example = load("softmax_regression")
    x, y = example.blobs(n_per_class=10)
    W, b = np.array([[-1.0, 1.0, 0.0], [0.0, 0.2, 1.0]]), np.zeros(3)
    losses = np.linspace(1.1, 0.2, 10)
    example.plot(x, y, W, b, losses, losses, str(tmp_path / "default.png"))
    local = {"axes.prop_cycle": cycler(color=["black", "gray"]), "font.size": 17, "image.cmap": "gray",
             "lines.linewidth": 4, "axes.facecolor": "yellow", "savefig.dpi": 300, "figure.figsize": (3, 3)}
    with matplotlib.rc_context(local):
        example.plot(x, y, W, b, losses, losses, str(tmp_path / "local.png"))
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    assert b"Matplotlib" not in (tmp_path / "default.png").read_bytes()  # no version stamped in the file


@pytest.mark.gpu
def test_tiny_lm_reports_time_and_memory_on_a_gpu():
    example = load("tiny_lm")
    result = example.run(steps=12, batch=4, seq=32, width=32, layers=1)
    for run in result["runs"].values():
        assert run["step_ms"] > 0 and run["peak_bytes"] > 0
