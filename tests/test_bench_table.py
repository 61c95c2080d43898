"""The results table: its schema, reading and writing, merging runs."""

import math
from pathlib import Path

import pandas as pd
import pytest

from softlight.bench import table

EXAMPLE = Path(__file__).parent / "data" / "example-results.csv"
LEAN = Path(__file__).parent / "data" / "example-lean-results.csv"


@pytest.fixture
def example():
    return table.read(EXAMPLE)


def test_example_table_has_the_schema_and_says_it_is_synthetic(example):
    assert list(example.columns) == table.COLUMNS
    assert set(example.device) == {"example-synthetic (not measured)"}
    assert set(example.git_rev) == {"synthetic"}
    lean = table.read(LEAN)
    assert set(lean.device) == {"example-synthetic (not measured)"} and set(lean.git_rev) == {"synthetic"}


def test_schema_holds_every_fact_the_issue_names():
    for column in ("op", "direction", "provider", "dtype", "rows", "cols", "ms_p50", "ms_p20", "ms_p80", "gbps",
                   "pct_of_ceiling", "ceiling_gbps", "peak_mem_bytes", "max_error", "status", "device", "torch",
                   "triton", "git_rev", "date", "hidden", "flops", "tflops"):
        assert column in table.COLUMNS
    assert "hidden" in table.KEY  # one linear shape at two hidden sizes is two results


def test_a_table_from_before_the_linear_ops_still_reads(tmp_path):
    path = tmp_path / "old.csv"
    pd.read_csv(EXAMPLE).drop(columns=list(table.LATER_COLUMNS)).to_csv(path, index=False)
    old = table.read(path)
    assert list(old.columns) == table.COLUMNS
    assert (old.hidden == 0).all() and old.flops.isna().all() and old.tflops.isna().all()
    pd.testing.assert_frame_equal(old, table.read(EXAMPLE))


def test_linear_rows_have_flops_not_bytes():
    lean = table.read(LEAN)
    linear = lean[lean.op == "linear_cross_entropy"]
    rows = lean[lean.op == "token_logprobs"]
    assert (linear.hidden == 4096).all() and linear.bytes.isna().all() and linear.flops.notna().all()
    assert linear.gbps.isna().all() and linear.pct_of_ceiling.isna().all()
    ok = linear[linear.status == "ok"]
    assert len(ok) and (ok.tflops > 0).all()
    assert (rows.hidden == 0).all() and rows.bytes.notna().all() and rows.flops.isna().all()


def test_lean_table_round_trips(tmp_path):
    lean = table.read(LEAN)
    table.write(lean, tmp_path / "lean.csv")
    pd.testing.assert_frame_equal(table.read(tmp_path / "lean.csv"), lean, check_exact=False, rtol=1e-5)


def _first(df, **where):
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        mask &= df[column] == value
    return df.index[mask][0]


def _bytes_on_a_linear_row(df):
    df.loc[_first(df, op="linear_cross_entropy"), "bytes"] = 1000


def _hidden_on_a_row_op(df):
    df.loc[_first(df, op="token_logprobs"), "hidden"] = 8


def _no_hidden_on_a_linear_row(df):
    df.loc[_first(df, op="linear_cross_entropy"), "hidden"] = 0


def _timed_linear_row_without_tflops(df):
    df.loc[_first(df, op="linear_cross_entropy", status="ok"), "tflops"] = None


@pytest.mark.parametrize("change, match", [
    (_bytes_on_a_linear_row, "flops and no bytes"),
    (_hidden_on_a_row_op, "hidden must be"),
    (_no_hidden_on_a_linear_row, "hidden must be"),
    (_timed_linear_row_without_tflops, "status ok has no timing"),
])
def test_read_rejects_inconsistent_linear_rows(tmp_path, change, match):
    df = pd.read_csv(LEAN)
    change(df)
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=match):
        table.read(tmp_path / "t.csv")


def test_finish_stamps_the_environment_and_types():
    record = dict(op="softmax", direction="forward", provider="softlight", dtype="float32", rows=2, cols=8,
                  status="wrong", bytes=128, ceiling_gbps=1.0, max_error=0.5, tolerance=1e-5, note="x")
    env = dict(device="d", torch="t", triton="tr", git_rev="g", date="2000-01-01T00:00:00Z")
    df = table.finish([record], env)
    assert list(df.columns) == table.COLUMNS
    row = df.iloc[0]
    assert row.device == "d" and row.rows == 2 and math.isnan(row.ms_p50) and pd.isna(row.peak_mem_bytes)


def test_write_then_read_round_trips(example, tmp_path):
    path = tmp_path / "sub" / "results.csv"
    table.write(example, path)
    again = table.read(path)
    pd.testing.assert_frame_equal(again, example, check_exact=False, rtol=1e-5)


def test_read_names_missing_columns(tmp_path):
    path = tmp_path / "t.csv"
    pd.read_csv(EXAMPLE).drop(columns=["gbps", "git_rev"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="missing columns: gbps, git_rev"):
        table.read(path)


@pytest.mark.parametrize("column, value, match", [
    ("status", "fast", "column 'status'"),
    ("op", "gelu", "column 'op'"),
    ("dtype", "int8", "column 'dtype'"),
    ("rows", 0, "rows and cols must be positive"),
])
def test_read_rejects_bad_values(tmp_path, column, value, match):
    df = pd.read_csv(EXAMPLE)
    df.loc[0, column] = value
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=match):
        table.read(path)


def test_read_rejects_an_ok_row_without_timing_and_duplicates(tmp_path):
    df = pd.read_csv(EXAMPLE)
    first_ok = df.index[df.status == "ok"][0]
    df.loc[first_ok, "ms_p50"] = None
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match="status ok has no timing"):
        table.read(tmp_path / "a.csv")
    pd.concat([pd.read_csv(EXAMPLE).iloc[:2]] * 2).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match="appears twice"):
        table.read(tmp_path / "b.csv")


def test_read_rejects_what_is_not_a_table(tmp_path):
    with pytest.raises(FileNotFoundError):
        table.read(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="not a CSV results table"):
        table.read(tmp_path / "empty.csv")


def test_merge_replaces_remeasured_rows_and_keeps_the_rest(example):
    new = example[example.op == "softmax"].copy()
    new["ms_p50"] = new.ms_p50 * 2
    new["date"] = "2000-01-02T00:00:00Z"
    merged = table.merge(example, new)
    assert len(merged) == len(example)
    soft = merged[merged.op == "softmax"]
    assert set(soft.date) == {"2000-01-02T00:00:00Z"}
    assert set(merged[merged.op == "cross_entropy"].date) == {"2000-01-01T00:00:00Z"}
    assert len(table.runs(merged)) == 2


def test_merge_keeps_a_linear_shape_at_two_hidden_sizes(tmp_path):
    lean = table.read(LEAN)
    other = lean[lean.op == "linear_cross_entropy"].assign(hidden=2048, date="2000-01-02T00:00:00Z")
    merged = table.merge(lean, other)
    assert len(merged) == len(lean) + len(other)
    table.write(merged, tmp_path / "merged.csv")  # still one result per key
    assert set(table.read(tmp_path / "merged.csv").hidden) == {0, 2048, 4096}


def test_merge_refuses_two_devices(example):
    other = example.copy()
    other["device"] = "another GPU"
    with pytest.raises(ValueError, match="different devices"):
        table.merge(example, other)
