"""The examples, on small settings: they run, and what they claim holds."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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


def test_tiny_lm_command_line(capsys):
    example = load("tiny_lm")
    assert example.main(["--steps", "2", "--batch", "2", "--seq", "8", "--width", "16", "--layers", "1"]) == 0
    assert "loss curves differ by at most" in capsys.readouterr().out


@pytest.mark.gpu
def test_tiny_lm_reports_time_and_memory_on_a_gpu():
    example = load("tiny_lm")
    result = example.run(steps=12, batch=4, seq=32, width=32, layers=1)
    for run in result["runs"].values():
        assert run["step_ms"] > 0 and run["peak_bytes"] > 0
