"""One distribution, one import name: softlight, softlight.reference, softlight.bench."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path


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


ROOT = Path(__file__).resolve().parents[1]
BENCH_ONLY = ("pandas", "matplotlib", "tqdm")


def _project():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements):
    return {re.match(r"[A-Za-z0-9._-]+", r).group() for r in requirements}


def test_a_lean_install_needs_torch_triton_and_numpy_only():
    project = _project()
    assert _names(project["dependencies"]) == {"torch", "triton", "numpy"}
    extras = project["optional-dependencies"]
    assert set(BENCH_ONLY) <= _names(extras["bench"])
    assert "softlight[bench]" in extras["test"]  # the suite covers the benchmark


def test_the_kernels_run_without_the_bench_extra():
    """A lean install (no pandas, matplotlib or tqdm): softlight imports and its kernels run on
    the interpreter. None in sys.modules makes each look uninstalled, to an import and to
    importlib.util.find_spec alike (torch probes for pandas that way)."""
    code = textwrap.dedent(f"""
        import os, sys
        BLOCKED = {BENCH_ONLY!r}
        for name in BLOCKED:
            sys.modules[name] = None
        os.environ["TRITON_INTERPRET"] = "1"
        import torch, softlight, softlight.reference
        x = torch.randn(3, 50, dtype=torch.float64)
        y = softlight.softmax(x, dim=-1)
        err = softlight.reference.relative_error(y.numpy(), softlight.reference.softmax(x.numpy(), axis=-1))
        assert err < 1e-12, err
        logits = x.float().requires_grad_()
        softlight.cross_entropy(logits, torch.tensor([0, 5, 49])).backward()
        assert torch.isfinite(logits.grad).all()
        print("loaded:", sorted(m for m in BLOCKED if sys.modules.get(m) is not None))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "loaded: []"


def test_licence_and_version_are_declared_once():
    import softlight

    project = _project()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in licence
    assert softlight.__version__ == project["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.M)
    assert released and released[0] == project["version"]  # the newest release is the package's version
    assert "## Unreleased" in changelog.split(f"## {released[0]}")[0]


def test_a_plain_wheel_holds_the_package_the_licence_and_lean_requirements(tmp_path):
    """`pip wheel .` without the network (this interpreter's setuptools), on a copy of the sources."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("kernels", "reference", "bench"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("softlight-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for module in ("softlight/__init__.py", "softlight/reference/__init__.py", "softlight/bench/cli.py"):
        assert module in names
    assert not any(n.startswith(("kernels/", "reference/", "bench/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    required = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert {r for r in required if "extra ==" not in r} == {"torch>=2.4", "triton>=3.4", "numpy"}


def test_softlight_hf_imports_without_transformers(monkeypatch):
    """softlight.hf imports transformers only when patching, and says how to install it."""
    import pytest
    import torch

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    import softlight.hf

    with pytest.raises(ImportError, match=r"softlight\[hf\]"):
        softlight.hf.patch(torch.nn.Linear(2, 3))
