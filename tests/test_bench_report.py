"""Reports rendered from the committed, synthetic example table alone (no GPU, no kernels).

The example's numbers were never measured: each time comes from a made-up round bandwidth
(softlight 2400 GB/s on softmax and 1800 on cross-entropy, torch 1200 / 900, torch.compile
1500 / 1200, liger 2000; softlight 1000 on softmax at 4 x 262144; ceiling 3000), so the
expected figures below follow by hand. See tests/data/make_example_results.py.
"""

import math
from pathlib import Path

import pandas as pd
import pytest

from softlight.bench import plots, report, summary, table

EXAMPLE = Path(__file__).parent / "data" / "example-results.csv"
FOLDER = "example-synthetic-not-measured"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    (out / "compile.md").write_text("# compile report\n")
    folder = report.render(table.read(EXAMPLE), out, source=EXAMPLE)
    return out, folder


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def test_headline_numbers():
    h = summary.headline(table.read(EXAMPLE)).set_index(["op", "direction", "dtype"])
    soft = h.loc[("softmax", "forward", "bfloat16")]
    # Five shapes at 2400 vs 1200 GB/s, one at 1000 vs 1200: speedup 2 five times, 1000/1200 once.
    assert soft["vs torch"] == pytest.approx(_geomean([2.0] * 5 + [1000 / 1200]), rel=1e-5)  # times kept to 6 digits
    assert soft["softlight_pct"] == pytest.approx(80.0)  # median of 2400/3000 x5 and 1000/3000
    assert (soft.best, soft.best_wins, soft.shapes) == ("softlight", 5, 6)
    ce = h.loc[("cross_entropy", "forward+backward", "bfloat16")]
    assert (ce.best, ce.best_wins) == ("liger", 6)
    assert ce["vs liger"] == pytest.approx(1800 / 2000, rel=1e-5)
    # liger is never timed on cross-entropy backward alone: no speedup to state.
    assert math.isnan(h.loc[("cross_entropy", "backward", "bfloat16"), "vs liger"])


def test_losses_are_stated_plainly():
    lines = summary.losses(table.read(EXAMPLE))
    assert any(line.startswith("cross_entropy forward+backward bfloat16: softlight is slower than liger on 6 of 6")
               for line in lines)
    assert any("slower than torch on 1 of 6 shapes (worst 0.83x at 4 x 262144" in line for line in lines)


def test_report_folder_has_table_page_and_plots(rendered):
    out, folder = rendered
    assert folder == out / FOLDER
    pd.testing.assert_frame_equal(table.read(folder / "results.csv"), table.read(EXAMPLE))
    plots = {p.name for p in (folder / "plots").iterdir()}
    expected = {f"gbps-{op}-{d}-bfloat16.png" for op in ("softmax", "cross_entropy")
                for d in ("forward", "backward", "forward-backward")}
    expected |= {f"{kind}-{op}-bfloat16.png" for kind in ("speedup", "memory") for op in ("softmax", "cross_entropy")}
    expected |= {"overview.png"}
    assert plots == expected
    for name in plots:
        assert (folder / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_page_content(rendered):
    _, folder = rendered
    page = (folder / "README.md").read_text()
    assert page.startswith("# softlight benchmark: example-synthetic (not measured)")
    assert "| 2000-01-01T00:00:00Z | `synthetic` | synthetic | synthetic | 3000 GB/s | 180 |" in page
    # The median percent of the ceiling, and beside it the worst shape's.
    assert ("| softmax | forward | bfloat16 | softlight (5 of 6 shapes) | 2400 | 80% | 33% at 4 x 262144 | 1.73x | 1.38x "
            "| 1.01x |") in page
    assert ("| cross_entropy | backward | bfloat16 | softlight (6 of 6 shapes) | 1800 | 60% | 60% at 256 x 4096 | 2.00x "
            "| 1.50x | - |") in page
    assert "![every op at a glance" in page
    assert "## Where softlight loses" in page and "slower than liger on 6 of 6 shapes" in page
    assert "Not timed at all: `quack` (ModuleNotFoundError: No module named 'quack')." in page
    assert "| `liger` | softmax | forward | bfloat16 | wrong | 1 | 5.00e-01 |" in page
    assert "| 4 x 262144 | 33% | 1000 | 1200 | 1500 | 2000 |" in page
    for link in [line for line in page.splitlines() if line.startswith("![")]:
        assert (folder / link[link.index("](") + 2:-1]).is_file(), link


def test_index_lists_compile_report_and_devices(rendered):
    out, _ = rendered
    index = (out / "README.md").read_text()
    assert "[`compile.md`](compile.md)" in index
    assert f"[`{FOLDER}/`]({FOLDER}/README.md)" in index
    assert "benchmark on example-synthetic (not measured): 180 results from 1 run(s)" in index


def test_index_without_devices_says_nothing_was_run(tmp_path):
    index = report.write_index(tmp_path).read_text()
    assert "No benchmark has been run on a GPU yet" in index
    assert "compile.md" not in index


def test_rerender_drops_stale_plots(tmp_path):
    df = table.read(EXAMPLE)
    df = df[df.direction == "forward"]
    report.render(df, tmp_path)
    report.render(df[df.op == "softmax"], tmp_path)
    names = {p.name for p in (tmp_path / FOLDER / "plots").iterdir()}
    assert names and not any("cross_entropy" in n for n in names)
    assert "cross_entropy" not in (tmp_path / FOLDER / "README.md").read_text()


def test_a_report_covers_one_device(tmp_path):
    df = table.read(EXAMPLE)
    other = df.assign(device="another GPU")
    with pytest.raises(ValueError, match="one device"):
        report.render(pd.concat([df, other]), tmp_path)


# The memory-lean losses, from tests/data/example-lean-results.csv (synthetic, like the example):
# token_logprobs at softlight 2000 GB/s, torch 500, torch.compile 1000; peak bytes per logit
# forward 1/16, 4, 2. linear_cross_entropy at softlight 400 TFLOP/s, torch 500, torch.compile 450,
# liger 250; peak bytes per logit forward+backward 1, 12, 8 and liger 2 (0.5 at a vocabulary of
# 32000); torch out of memory at 16384 x 262144. See tests/data/make_example_results.py.

LEAN = Path(__file__).parent / "data" / "example-lean-results.csv"


@pytest.fixture(scope="module")
def rendered_both(tmp_path_factory):
    """Both example tables rendered as one report: (folder, page, every figure by file name, kept
    as drawn to be inspected)."""
    out = tmp_path_factory.mktemp("lean_reports")
    drawn = {}
    save = plots._save

    def keep(fig, path):
        drawn[Path(path).name] = fig
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", keep)
        folder = report.render(pd.concat([table.read(EXAMPLE), table.read(LEAN)], ignore_index=True), out)
    return folder, (folder / "README.md").read_text(), drawn


@pytest.fixture(scope="module")
def rendered_lean(rendered_both):
    return rendered_both[:2]


@pytest.fixture(scope="module")
def figures(rendered_both):
    return rendered_both[2]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


PROVIDERS = ("softlight", "torch", "torch.compile", "liger", "quack")


def _provider_lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if line.get_label() in PROVIDERS}


def test_failed_results_are_marked_not_dropped(figures):
    # torch runs out of memory at 16384 x 262144 (linear_cross_entropy, every direction): a cross
    # in each of the three 16384-token panels, named, where the time and memory plots have no point.
    for name in ("memory-linear_cross_entropy-h4096-bfloat16.png", "time-linear_cross_entropy-h4096-bfloat16.png"):
        fig = figures[name]
        marked = [ax for ax in fig.axes if "torch: out of memory" in [t.get_text() for t in ax.texts]]
        assert [ax.get_title() for ax in marked] == [f"{d}, 16384 tokens" for d in ("forward", "backward",
                                                                                     "forward+backward")], name
        for ax in marked:
            crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
            assert [list(line.get_xdata()) for line in crosses] == [[262144]]
    # liger is wrong at 256 x 4096 on softmax: marked on its GB/s, speedup and memory plots.
    for name in ("gbps-softmax-forward-bfloat16.png", "speedup-softmax-bfloat16.png", "memory-softmax-bfloat16.png"):
        assert "liger: wrong" in _texts(figures[name]), name
    assert not any("wrong" in t or "memory" in t for t in _texts(figures["gbps-cross_entropy-forward-bfloat16.png"]))


def test_speedup_plots_keep_the_shapes_where_torch_failed(figures):
    fig = figures["speedup-linear_cross_entropy-h4096-bfloat16.png"]
    texts = _texts(fig)
    for provider in ("softlight", "torch.compile", "liger"):
        assert f"{provider} ran, torch: out of memory" in texts
    forward = next(ax for ax in fig.axes if ax.get_title() == "forward, 16384 tokens")
    triangles = [line for line in forward.get_lines() if line.get_marker() == "^" and line.get_label().startswith("_")]
    assert sorted(x for line in triangles for x in line.get_xdata()) == [262144] * 3


def test_memory_and_time_plots_use_log_axes(figures):
    for name, fig in figures.items():
        if name.startswith(("memory-", "time-", "speedup-")):
            assert {ax.get_yscale() for ax in fig.axes if ax.get_title()} == {"log"}, name
            labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
            assert labels and not any("10^" in label or "e+" in label for label in labels), name


def test_gbps_plots_have_the_percent_axis_and_the_spread(figures):
    fig = figures["gbps-softmax-forward-bfloat16.png"]
    main = [ax for ax in fig.axes if ax.get_ylabel().startswith("GB/s")]
    assert len(main) == 2  # the columns sweep and the rows sweep
    for ax in main:
        percent = [child for child in ax.child_axes if child.get_ylabel() == "% of the copy ceiling"]
        assert len(percent) == 1
        # 3000 GB/s is the ceiling: 100% on the right-hand axis.
        assert percent[0]._functions[0](3000.0) == pytest.approx(100.0)
        bands = [c for c in ax.collections if c.get_label().startswith("_")]
        assert len(bands) == len(_provider_lines(ax)) == 4  # softlight, torch, torch.compile, liger


def test_providers_are_told_apart_and_softlight_is_on_top(figures):
    for name, fig in figures.items():
        if name == plots.OVERVIEW:
            continue
        for ax in fig.axes:
            lines = _provider_lines(ax)
            drawn = {(line.get_marker(), str(line.get_linestyle()), line.get_color()) for line in lines.values()
                     if line.get_marker() not in ("x", "^", "None")}
            assert len(drawn) == len([v for v in lines.values() if v.get_marker() not in ("x", "^", "None")]), name
            if "softlight" in lines:
                assert lines["softlight"].get_zorder() > max(v.get_zorder() for k, v in lines.items() if k != "softlight")


def test_overview_shows_every_op_with_its_worst_shape(figures):
    fig = figures[plots.OVERVIEW]
    percent, speedup = fig.axes[:2]
    labels = [t.get_text() for t in percent.get_yticklabels()]
    assert labels[0] == "softmax forward bfloat16" and "linear_cross_entropy forward+backward bfloat16" in labels
    texts = _texts(fig)
    assert "80% (worst 33%)" in texts  # softmax: median over the shapes and the worst, 1000 of 3000 GB/s
    assert "1.73x (worst 0.83x)" in texts
    # torch ran out of memory on one linear_cross_entropy shape where softlight ran: said, not dropped.
    assert "0.80x (worst 0.80x), + 1 shape where torch failed" in texts


def test_lean_headline_numbers():
    h = summary.lean_headline(table.read(LEAN)).set_index(["op", "direction", "dtype"])
    tok = h.loc[("token_logprobs", "forward", "bfloat16")]
    assert tok["vs torch"] == pytest.approx(4.0, rel=1e-5) and tok["vs torch.compile"] == pytest.approx(2.0, rel=1e-5)
    assert tok["memory vs torch"] == pytest.approx(64.0) and tok["memory vs torch.compile"] == pytest.approx(32.0)
    assert (tok.rate_unit, tok.softlight_rate) == ("GB/s", pytest.approx(2000.0))
    lin = h.loc[("linear_cross_entropy", "forward+backward", "bfloat16")]
    assert (lin.rate_unit, lin.softlight_rate) == ("TFLOP/s", pytest.approx(400.0))
    assert lin["vs torch"] == pytest.approx(0.8, rel=1e-5) and lin["vs liger"] == pytest.approx(1.6, rel=1e-5)
    # Memory over the three shapes torch ran; liger's 0.5 twice and 2 twice average to 1.
    assert lin["memory vs torch"] == pytest.approx(12.0) and lin["memory vs liger"] == pytest.approx(1.0)
    assert lin.softlight_peak_max == 16384 * 262144  # one byte per logit at the largest shape
    assert (lin.best, lin.best_wins, lin.shapes) == ("torch", 3, 4)  # torch.compile where torch ran out of memory
    # The row-op headline has token_logprobs but never the linear op (no bytes, no ceiling).
    assert set(summary.headline(table.read(LEAN)).op) == {"token_logprobs"}


def test_lean_losses_and_peer_failures_are_stated():
    df = table.read(LEAN)
    lines = summary.lean_losses(df)
    assert any(line.startswith("linear_cross_entropy forward+backward bfloat16: softlight is slower than torch on "
                               "3 of 3 shapes") for line in lines)
    assert any(line.startswith("linear_cross_entropy forward+backward bfloat16: softlight needs more peak memory than "
                               "liger on 2 of 4 shapes (worst at 4096 x 32000 x 4096, where liger needs 0.50x softlight's")
               for line in lines)
    assert not any("token_logprobs" in line for line in lines)  # softlight wins it everywhere
    failed = summary.peers_not_timed(df)
    assert any(line.startswith("linear_cross_entropy forward+backward bfloat16: torch failed (error) on "
                               "16384 x 262144 x 4096, where softlight was timed (OutOfMemoryError") for line in failed)


def test_report_has_a_memory_lean_section(rendered_lean):
    folder, page = rendered_lean
    lean = page[page.index("## Memory-lean losses"):]
    assert ("| linear_cross_entropy | forward+backward | bfloat16 | torch (3 of 4 shapes) | 400.0 TFLOP/s | 4.00 GiB | "
            "0.80x | 0.89x | 1.60x | 12.00x | 8.00x | 1.00x |") in lean
    assert "| token_logprobs | forward | bfloat16 | softlight (3 of 3 shapes) | 2000.0 GB/s |" in lean
    assert "| 16384 x 262144 x 4096 | 400.0 | 88 ms, 1.00 GiB | error | 78.2 ms, 16.00 GiB | 141 ms, 2.00 GiB |" in lean
    assert "where liger needs 0.50x softlight's" in lean and "torch failed (error) on 16384 x 262144 x 4096" in lean
    # Times in a unit that reads: the synthetic token_logprobs calls take about a microsecond.
    assert "| 256 x 4096 | 2000.0 | 1.05 µs, 64.0 KiB | 4.2 µs, 4.0 MiB | 2.1 µs, 2.0 MiB |" in lean
    assert "0.00105" not in page
    # softlight's backward alone is not timed (gradients during forward): no best provider is named.
    assert "| linear_cross_entropy | backward | bfloat16 | softlight not timed | not timed |" in lean
    assert "no roofline or GEMM baseline" in lean
    # No percent of the copy ceiling, nor GB/s, anywhere for the linear op.
    assert not [line for line in page.splitlines() if "linear_cross_entropy" in line and ("%" in line or "GB/s" in line)]
    summary_table = page[page.index("## Summary"):page.index("## Where softlight loses")]
    assert "linear_cross_entropy" not in summary_table and "| token_logprobs | forward | bfloat16 |" in summary_table
    names = {p.name for p in (folder / "plots").iterdir()}
    for kind in ("memory", "time", "speedup"):
        assert f"{kind}-linear_cross_entropy-h4096-bfloat16.png" in names and f"{kind}-token_logprobs-bfloat16.png" in names
    assert not [n for n in names if n.startswith("gbps-linear")]
    assert "gbps-token_logprobs-forward-bfloat16.png" in names
    for link in [line for line in page.splitlines() if line.startswith("![")]:
        assert (folder / link[link.index("](") + 2:-1]).is_file(), link


def test_a_table_without_the_lean_ops_has_no_such_section(rendered):
    _, folder = rendered
    page = (folder / "README.md").read_text()
    assert "Memory-lean" not in page and "TFLOP/s" not in page


def test_a_table_of_only_the_linear_op_renders(tmp_path):
    df = table.read(LEAN)
    folder = report.render(df[df.op == "linear_cross_entropy"], tmp_path)
    page = (folder / "README.md").read_text()
    assert "No row op" in page and "## Memory-lean losses" in page
    assert "Nothing in this table was timed" not in page


def test_index_lists_stability_pages_and_example_figures(tmp_path):
    from softlight.bench import report

    (tmp_path / "interpreter").mkdir()
    (tmp_path / "interpreter" / "stability.md").write_text("# page\n")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "softmax_regression.png").write_bytes(b"not really a png")
    text = report.write_index(tmp_path).read_text()
    assert "[`interpreter/stability.md`](interpreter/stability.md)" in text
    assert "`python examples/softmax_regression.py`" in text
    assert "No benchmark has been run on a GPU yet" in text


def test_softlights_own_failure_is_marked_and_breaks_its_line(tmp_path, monkeypatch):
    drawn = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault(Path(path).name, fig) and save(fig, path))
    df = table.read(EXAMPLE)
    df = df[(df.op == "softmax") & (df.direction == "forward")].copy()
    oom = (df.provider == "softlight") & (df.rows == 8) & (df.cols == 131072)
    df.loc[oom, ["status", "note", "ms_p50", "ms_p20", "ms_p80", "gbps", "pct_of_ceiling"]] = (
        "error", "OutOfMemoryError: CUDA out of memory", None, None, None, None, None)
    plots.draw_all(df, tmp_path)
    columns = next(ax for ax in drawn["gbps-softmax-forward-bfloat16.png"].axes if ax.get_xlabel().startswith("columns"))
    assert "softlight: out of memory" in [t.get_text() for t in columns.texts]
    line = _provider_lines(columns)["softlight"]
    by_x = dict(zip(line.get_xdata(), line.get_ydata()))
    assert math.isnan(by_x[131072]) and by_x[32000] == pytest.approx(2400)  # a gap, not a bridge
    assert any("softlight failed on 1 shape" in t for t in _texts(drawn[plots.OVERVIEW]))
