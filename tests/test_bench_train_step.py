"""`softlight train-step` (softlight.bench.train_step) on small models: the check of each
provider against the model's own loss, and the measurement loop with a fake timer (nothing
measured)."""

import pytest

pytest.importorskip("transformers")

import softlight  # noqa: E402
from bench_fakes import FakeDevice  # noqa: E402
from softlight.bench import cli, train_step  # noqa: E402
from softlight.reference import TOLERANCE  # noqa: E402


def fake_device(**timings):
    """The fake timer on the device the kernels run on (the interpreter's CPU, or the GPU)."""
    device = FakeDevice(**timings)
    device.torch_device = "cpu" if softlight.INTERPRETED else "cuda"
    return device


def test_each_provider_is_checked_then_timed():
    device = fake_device(ms=3.0, peak=2**30)
    df = train_step.run(train_step.CPU_SHAPES, ["softlight"], device)
    assert list(df.provider) == ["transformers", "softlight"]  # the model's own always runs: the baseline
    assert (df.status == "ok").all() and (df.ms_p50 == 3.0).all() and (df.peak_mem_bytes == 2**30).all()
    tolerance = TOLERANCE[df.dtype.iloc[0]]  # float32 on the interpreter, bfloat16 on a GPU
    assert 0 < df.grad_error.iloc[1] <= tolerance and df.loss_error.iloc[1] <= tolerance
    assert device.timed == 2 and set(df.device) == {device.name}
    page = train_step.to_markdown(df)
    assert "| 256 | 32 | 32 | 1 | softlight | ok | 3.0 | 1.00 | 1.00 | 1.00 |" in page


def test_a_provider_that_cannot_be_imported_is_unavailable(monkeypatch):
    def missing(model):
        raise ImportError("No module named 'liger_kernel'")

    monkeypatch.setitem(train_step.PROVIDERS, "liger", missing)
    df = train_step.run(train_step.CPU_SHAPES, ["liger"])
    assert list(df.status) == ["ok", "unavailable"] and "liger_kernel" in df.note.iloc[1]
    with pytest.raises(ValueError, match="providers must be among"):
        train_step.run(train_step.CPU_SHAPES, ["nobody"])


@pytest.mark.skipif(not softlight.INTERPRETED, reason="on a GPU, train-step really benchmarks")
def test_the_command_without_a_gpu_checks_and_takes_no_timing(capsys):
    assert cli.main(["train-step", "--vocab", "200", "--provider", "softlight"]) == 0
    out = capsys.readouterr().out
    assert "NO TIMING IS TAKEN" in out and "softlight    200" in out


def test_a_wrong_loss_is_not_timed(monkeypatch):
    def off_by_a_percent(model):
        own = model.forward

        def forward(*args, **kwargs):
            out = own(*args, **kwargs)
            out["loss"] = out.loss * 1.05
            return out

        model.forward = forward
        return lambda: model.__dict__.pop("forward")

    monkeypatch.setitem(train_step.PROVIDERS, "liger", off_by_a_percent)
    device = fake_device()
    df = train_step.run(train_step.CPU_SHAPES, ["liger"], device)
    assert list(df.status) == ["ok", "wrong"] and device.timed == 1
    assert df.loss_error.iloc[1] == pytest.approx(0.05, rel=1e-4)


def test_the_command_rejects_bad_arguments(capsys):
    for argv, message in ((["--provider", "nobody"], "nobody unknown"), (["--tokens", "7"], "must be even"),
                          (["--vocab", "0"], "positive integer")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train-step", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
