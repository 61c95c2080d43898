"""One distribution, one import name: softlight, softlight.reference, softlight.bench."""

import importlib.util
import subprocess
import sys


def test_public_api():
    import softlight
    import softlight.bench
    import softlight.reference

    for name in ("softmax", "log_softmax", "Softmax", "LogSoftmax"):
        assert callable(getattr(softlight, name))
    assert callable(softlight.reference.softmax)


def test_folders_are_not_top_level_packages(tmp_path):
    """kernels/ (and reference/, bench/) must not shadow packages of those names, here or
    from any other working directory."""
    for name in ("kernels", "reference", "bench"):
        assert importlib.util.find_spec(name) is None, name
    code = "import importlib.util as u; print([u.find_spec(n) for n in ('kernels', 'reference', 'bench')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[None, None, None]"
