"""One distribution, one import name: softlight, softlight.reference, softlight.bench."""

import importlib.util
import subprocess
import sys


def test_public_api():
    import softlight
    import softlight.bench
    import softlight.reference

    for name in ("softmax", "log_softmax", "Softmax", "LogSoftmax", "cross_entropy", "CrossEntropyLoss",
                 "linear_cross_entropy", "LinearCrossEntropyLoss", "token_logprobs", "linear_token_logprobs"):
        assert callable(getattr(softlight, name))
    for name in ("softmax", "cross_entropy", "token_logprobs", "linear_cross_entropy", "linear_token_logprobs"):
        assert callable(getattr(softlight.reference, name))


def test_folders_are_not_top_level_packages(tmp_path):
    """kernels/ (and reference/, bench/) must not shadow packages of those names, here or
    from any other working directory."""
    for name in ("kernels", "reference", "bench"):
        assert importlib.util.find_spec(name) is None, name
    code = "import importlib.util as u; print([u.find_spec(n) for n in ('kernels', 'reference', 'bench')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[None, None, None]"


def test_softlight_hf_imports_without_transformers(monkeypatch):
    """softlight.hf imports transformers only when patching, and says how to install it."""
    import pytest
    import torch

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    import softlight.hf

    with pytest.raises(ImportError, match=r"softlight\[hf\]"):
        softlight.hf.patch(torch.nn.Linear(2, 3))
