"""The `softlight` command on the CPU: check on tiny shapes, bench without a GPU, report and
compare from tables alone, and bad input answered with a clear error."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from bench_fakes import FakeDevice

import softlight
from softlight.bench import grid, table
from softlight.bench.check import INTERPRETER_HIDDEN
from softlight.bench.cli import _cases, main, parser

EXAMPLE = Path(__file__).parent / "data" / "example-results.csv"
FOLDER = "example-synthetic-not-measured"


@pytest.fixture
def small_table(tmp_path):
    """The example's softmax forward rows: a report of few plots, quick to draw."""
    df = table.read(EXAMPLE)
    path = tmp_path / "small.csv"
    table.write(df[(df.op == "softmax") & (df.direction == "forward")], path)
    return path


@pytest.fixture
def wrong_provider(tmp_path, monkeypatch):
    (tmp_path / "softlight_test_cli_provider.py").write_text(textwrap.dedent("""
        import torch

        def scaled(op):
            return (lambda x: torch.softmax(x, -1) * 1.05) if op == "softmax" else None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "softlight_test_cli_provider:scaled"
    sys.modules.pop("softlight_test_cli_provider", None)


def test_check_every_op_on_tiny_shapes(capsys):
    status = main(["check", "--op", "softmax", "cross_entropy", "--dtype", "fp32", "bf16", "--shape", "2x64", "1x300"])
    out = capsys.readouterr().out
    assert status == 0
    assert "16 passed, 0 failed" in out  # 2 ops x 2 dtypes x 2 shapes x forward and backward
    assert "cross_entropy  backward softlight bfloat16" in out


def test_check_covers_the_memory_lean_losses(capsys):
    status = main(["check", "--op", "token_logprobs", "linear_cross_entropy", "--dtype", "fp32", "bf16", "--shape", "3x64"])
    out = capsys.readouterr().out
    assert status == 0
    assert "8 passed, 0 failed" in out  # 2 ops x 2 dtypes x forward and backward
    # A shape without a hidden size gives linear_cross_entropy the check's own.
    assert re.search(rf"linear_cross_entropy +forward +softlight +bfloat16 +3 +64 +{INTERPRETER_HIDDEN} ", out)
    assert main(["check", "--op", "linear_cross_entropy", "--dtype", "fp32", "--shape", "2x100x8"]) == 0
    out = capsys.readouterr().out
    assert "2 passed, 0 failed" in out and re.search(r"float32 +2 +100 +8 ", out)


def test_check_reports_a_wrong_user_provider(capsys, wrong_provider):
    status = main(["check", "--op", "softmax", "cross_entropy", "--dtype", "fp32", "--shape", "2x64",
                   "--provider", wrong_provider])
    out = capsys.readouterr().out
    assert status == 1
    assert out.count(" FAIL") == 2 and "0 passed, 2 failed, 2 not implemented by the provider" in out
    # The provider has no cross_entropy: its cells say so, not "nan".
    unsupported = [line for line in out.splitlines() if "unsupported" in line]
    assert len(unsupported) == 2 and all(line.count("not run") == 2 and "nan" not in line for line in unsupported)


@pytest.mark.skipif(not softlight.INTERPRETED, reason="on a GPU, bench really benchmarks")
def test_bench_without_gpu_checks_and_rerenders_but_never_times(tmp_path, capsys, small_table):
    committed = tmp_path / "reports" / FOLDER / "results.csv"
    committed.parent.mkdir(parents=True)
    shutil.copy(small_table, committed)
    before = committed.read_bytes()
    out_dir = tmp_path / "reports"
    status = main(["bench", "--op", "softmax", "--dtype", "fp32", "--shape", "2x64", "--out", str(out_dir), "--no-stability"])
    out = capsys.readouterr().out
    assert status == 0
    assert "NO TIMING IS TAKEN" in out and "No timing was taken" in out and "2 passed, 0 failed" in out
    assert (out_dir / FOLDER / "README.md").is_file() and (out_dir / "README.md").is_file()
    # The committed table is re-rendered, not rewritten; no table of this machine appears.
    assert committed.read_bytes() == before
    assert list(out_dir.glob("*/results.csv")) == [committed]


def test_bench_gpu_path_with_a_fake_timer(tmp_path, monkeypatch, capsys):
    """The GPU branch of `softlight bench` (sweep, table, merge, report, summary) with the timer
    injected; its table carries the fake device's name and stays under tmp_path."""
    from softlight.bench import measure

    monkeypatch.setattr(softlight, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(measure, "CudaDevice", FakeDevice)
    common = ["--direction", "forward", "backward", "--dtype", "fp32", "--shape", "2x32", "--provider", "softlight", "torch",
              "--out", str(tmp_path), "--no-stability"]
    assert main(["bench", "--op", "softmax", *common]) == 0
    out = capsys.readouterr().out
    assert "softlight bench on fake timer (not measured)" in out and "softlight % ceiling" in out
    results = tmp_path / "fake-timer-not-measured" / "results.csv"
    assert len(table.read(results)) == 4 and (results.parent / "README.md").is_file()
    assert main(["bench", "--op", "log_softmax", *common]) == 0  # a split sweep builds one table
    assert "4 kept from earlier runs" in capsys.readouterr().out
    assert set(table.read(results).op) == {"softmax", "log_softmax"}
    assert main(["bench", "--op", "log_softmax", "--fresh", *common]) == 0
    assert set(table.read(results).op) == {"log_softmax"}


def test_bench_gpu_path_with_a_fake_timer_on_linear_cross_entropy(tmp_path, monkeypatch, capsys):
    from softlight.bench import measure

    monkeypatch.setattr(softlight, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(measure, "CudaDevice", FakeDevice)
    assert main(["bench", "--op", "linear_cross_entropy", "--dtype", "fp32", "--shape", "4x48x8", "--provider",
                 "softlight", "torch", "--out", str(tmp_path), "--no-stability"]) == 0
    out = capsys.readouterr().out
    assert "memory-lean losses" in out and "TFLOP/s" in out
    results = table.read(tmp_path / "fake-timer-not-measured" / "results.csv")
    assert set(results.hidden) == {8} and results.flops.notna().all() and results.bytes.isna().all()
    assert "## Memory-lean losses" in (tmp_path / "fake-timer-not-measured" / "README.md").read_text()


def test_bench_sweeps_each_op_on_its_grid():
    def cases(*argv):
        return _cases(parser().parse_args(["bench", *argv]), grid)

    every = cases()
    linear = [c for c in every if c.op == "linear_cross_entropy"]
    shapes, dtypes = grid.linear_grid()
    assert {(c.rows, c.cols, c.hidden) for c in linear} == set(shapes) and {c.dtype for c in linear} == set(dtypes)
    rows = [c for c in every if c.op == "token_logprobs"]
    assert {(c.rows, c.cols) for c in rows} == set(grid.default_grid()[0]) and {c.hidden for c in rows} == {0}
    quick = cases("--quick", "--op", "linear_cross_entropy")
    assert {(c.rows, c.cols, c.hidden) for c in quick} == set(grid.quick_linear_grid()[0])
    # A shape without a hidden size takes the grid's; --dtype applies to every op.
    given = cases("--op", "softmax", "linear_cross_entropy", "--shape", "64x1000", "--dtype", "fp16")
    assert {(c.op, c.rows, c.cols, c.hidden, c.dtype) for c in given} == {
        ("softmax", 64, 1000, 0, "float16"), ("linear_cross_entropy", 64, 1000, grid.LINEAR_HIDDEN, "float16")}


def test_compare_names_the_hidden_size_of_a_linear_shape(tmp_path, capsys):
    lean = Path(__file__).parent / "data" / "example-lean-results.csv"
    df = table.read(lean)
    row = (df.provider == "softlight") & (df.op == "linear_cross_entropy") & (df.direction == "forward") & (df.cols == 32000)
    df.loc[row & (df.rows == 4096), ["ms_p50", "ms_p20", "ms_p80"]] *= 1.5
    table.write(df, tmp_path / "new.csv")
    assert main(["compare", str(lean), str(tmp_path / "new.csv")]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("regression"))
    assert "linear_cross_entropy" in line and "4096 x 32000 x 4096" in line and "+50.0%" in line
    assert "2.68 [2.63-2.76] ms" in line and "4.03 [3.95-4.15] ms" in line  # median [p20-p80], old and new


def test_stability_writes_its_page_and_indexes_it(tmp_path, capsys):
    status = main(["stability", "--case", "scale 1", "+inf entry", "--dtype", "bf16", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0 and "2 cases of the catalogue" in out
    folder = tmp_path / ("interpreter" if softlight.INTERPRETED else "")
    if softlight.INTERPRETED:
        page = (folder / "stability.md").read_text()
        assert "| scale 1 |" in page and "| +inf entry |" in page and "| float32 |" not in page
        assert "interpreter/stability.md" in (tmp_path / "README.md").read_text()


def test_report_from_a_table_alone(tmp_path, capsys, small_table):
    assert main(["report", str(small_table), "--out", str(tmp_path)]) == 0
    assert f"{FOLDER}/README.md" in capsys.readouterr().out
    assert (tmp_path / FOLDER / "plots").is_dir()


def test_report_needs_no_kernels(tmp_path, small_table):
    """The installed command, without TRITON_INTERPRET and without a GPU: no re-exec, no kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-m", "softlight.bench.cli", "report", str(small_table), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "interpreter" not in run.stderr
    assert (tmp_path / FOLDER / "README.md").is_file()


def test_report_rejects_what_is_not_a_results_table(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit) as info:
        main(["report", str(bad), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "missing columns: op, direction" in capsys.readouterr().err


def _variant(tmp_path, name, change):
    df = table.read(EXAMPLE)
    change(df)
    path = tmp_path / name
    table.write(df, path)
    return str(path)


def _softlight_row(df, op="softmax", direction="forward", cols=32000):
    return (df.provider == "softlight") & (df.op == op) & (df.direction == direction) & (df.cols == cols)


def _slower(factor, spread=0.01):
    def change(df):
        row = _softlight_row(df)
        for q in ("ms_p50", "ms_p20", "ms_p80"):
            df.loc[row, q] = df.loc[row, "ms_p50"] * factor
        df.loc[row, "ms_p20"] *= 1 - spread
        df.loc[row, "ms_p80"] *= 1 + spread
    return change


def test_compare_identical_tables_is_all_noise(capsys):
    assert main(["compare", str(EXAMPLE), str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "within noise" in out and "regression" not in out


def test_compare_flags_a_slowdown_past_the_threshold(tmp_path, capsys):
    new = _variant(tmp_path, "new.csv", _slower(1.20))
    assert main(["compare", str(EXAMPLE), new]) == 1
    out = capsys.readouterr().out
    assert "1 regression" in out
    line = next(line for line in out.splitlines() if line.lstrip().startswith("regression"))
    assert "softlight" in line and "32 x 32000" in line and "+20.0%" in line
    assert "1.71 [1.67-1.76] µs" in line  # the synthetic times are microseconds: never "0.00171 ms"
    # The same slowdown under a higher threshold is reported, but is no regression.
    assert main(["compare", str(EXAMPLE), new, "--threshold", "0.25"]) == 0
    assert "1 slower" in capsys.readouterr().out


def test_compare_does_not_call_noise_a_regression(tmp_path, capsys):
    # 10% slower in the median, but the spreads overlap: not a change.
    noisy = _variant(tmp_path, "noisy.csv", _slower(1.10, spread=0.15))
    assert main(["compare", str(EXAMPLE), noisy]) == 0
    assert "regression" not in capsys.readouterr().out


def test_compare_flags_a_result_that_stopped_passing_and_a_speedup(tmp_path, capsys):
    def change(df):
        df.loc[_softlight_row(df, op="cross_entropy"), ["status", "ms_p50", "ms_p20", "ms_p80", "gbps"]] = (
            "wrong", None, None, None, None)
        _slower(0.5)(df)
    new = _variant(tmp_path, "new.csv", change)
    assert main(["compare", str(EXAMPLE), new]) == 1
    out = capsys.readouterr().out
    assert "1 now failing" in out and "1 faster" in out


def test_compare_refuses_tables_of_different_devices(tmp_path, capsys):
    other = _variant(tmp_path, "other.csv", lambda df: df.__setitem__("device", "another GPU"))
    with pytest.raises(SystemExit) as info:
        main(["compare", str(EXAMPLE), other])
    assert info.value.code == 2 and "different devices" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["check", "--dtype", "int8"], "dtype must be one of"),
    (["check", "--shape", "4096"], "ROWSxCOLS"),
    (["check", "--op", "softmax", "--shape", "4x64x8"], "--shape 4x64x8: a hidden size applies only to "
                                                        "linear_cross_entropy, linear_distillation_jsd, not to softmax"),
    (["bench", "--shape", "4x64x8"], "--shape 4x64x8: a hidden size applies only to linear_cross_entropy"),
    (["check", "--op", "gelu"], "invalid choice: 'gelu'"),
    (["bench", "--direction", "up"], "invalid choice: 'up'"),
    (["check", "--provider", "nosuchprovider", "--shape", "1x8"], "--provider 'nosuchprovider'"),
    (["compare", str(EXAMPLE), str(EXAMPLE), "--threshold", "-1"], "--threshold must be"),
    (["report", "/nonexistent/results.csv"], "does not exist"),
    (["stability", "--case", "scale 2"], "--case: unknown case(s) 'scale 2'"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_run_check_rejects_bad_arguments():
    from softlight.bench.check import run_check

    with pytest.raises(ValueError, match="ops must be among"):
        run_check(ops=["gelu"], shapes=[(1, 8)])
    with pytest.raises(ValueError, match="dtype must be one of"):
        run_check(dtypes=["int8"], shapes=[(1, 8)])
    with pytest.raises(ValueError, match="shapes must be"):
        run_check(shapes=[(0, 8)])


def test_every_command_describes_itself_in_sentences():
    """`softlight COMMAND --help` opens with a description of whole sentences."""
    subcommands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == {"bench", "report", "compare", "check", "stability", "compile", "train-step"}
    for name, sub in subcommands.choices.items():
        text = sub.description or ""
        assert len(text) > 40 and text[0].isupper() and text.endswith("."), name


@pytest.mark.parametrize("argv, blocked", [
    (["report", str(EXAMPLE)], "matplotlib"),
    (["compare", str(EXAMPLE), str(EXAMPLE)], "pandas"),
    (["bench", "--quick"], "tqdm"),
    (["stability", "--quick"], "mpmath"),
])
def test_a_missing_bench_extra_is_named_not_a_traceback(argv, blocked, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, blocked, None)  # as if the lean install lacked it
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"softlight {argv[0]}: needs {blocked}," in err and "pip install 'softlight[bench]'" in err


def test_compile_needs_no_bench_extra():
    args = parser().parse_args(["compile"])
    assert args.needs == ()


def test_a_bench_module_imported_late_is_named_too(monkeypatch, capsys):
    from softlight.bench import cli

    def late(args):
        raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")

    monkeypatch.setattr(cli, "cmd_compare", late)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(EXAMPLE), str(EXAMPLE)])
    assert info.value.code == 2 and "pip install 'softlight[bench]'" in capsys.readouterr().err

    def other(args):
        raise ModuleNotFoundError("No module named 'liger_kernel'", name="liger_kernel")

    monkeypatch.setattr(cli, "cmd_compare", other)
    with pytest.raises(ModuleNotFoundError):  # not ours to explain: the traceback stays
        main(["compare", str(EXAMPLE), str(EXAMPLE)])


def test_report_without_matplotlib_in_a_fresh_process(tmp_path):
    """The lean install's `softlight report`: exit status 2 and the extra to install, no traceback."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from softlight.bench.cli import main\n"
            f"sys.exit(main(['report', {str(EXAMPLE)!r}, '--out', {str(tmp_path)!r}]))")
    run = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "pip install 'softlight[bench]'" in run.stderr and "Traceback" not in run.stderr
    assert not any(tmp_path.iterdir())
