"""`bioreason calibration`: the calibration table of any predictions file."""

import json
import math
import re

import pandas as pd
import pytest

from bioreason.calibration import (
    calibration_table,
    format_calibration_table,
    markdown_table,
    resolve_columns,
)
from bioreason.cli import main

# constant q = 0.3 against outcomes with rate 1/2 (closed forms):
# ECE = adaptive ECE = |0.3 - 0.5| = 0.2; Brier = (0.3^2 + 0.7^2) / 2 = 0.29;
# log loss = -(log 0.3 + log 0.7) / 2; AUROC = 1/2 (all predictions tied)
Q, RATE = 0.3, 0.5
BRIER = (Q**2 + (1 - Q) ** 2) / 2
LOG_LOSS = -(math.log(Q) + math.log(1 - Q)) / 2


def _constant_frame(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"q": [Q] * n, "y": [1, 0] * (n // 2), "p_star": [0.4] * n, "method": ["a"] * n}
    )


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["calibration", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read(path):
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text()))
    return pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_closed_forms_from_csv_and_parquet(tmp_path, capsys, suffix):
    path = tmp_path / f"predictions{suffix}"
    frame = _constant_frame()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    out = tmp_path / "table.csv"
    code, text, _ = _run(capsys, path, "--prob-col", "q", "--outcome-col", "y", "--out", out)
    assert code == 0
    assert "| all " in text and "0.200 [" in text and f"wrote {out}" in text
    row = pd.read_csv(out).iloc[0]
    assert row["group"] == "all" and row["n"] == 10 and row["n_invalid"] == 0
    assert row["ece"] == pytest.approx(0.2)
    assert row["adaptive_ece"] == pytest.approx(0.2)
    assert row["brier"] == pytest.approx(BRIER)
    assert row["log_loss"] == pytest.approx(LOG_LOSS)
    assert row["auroc"] == pytest.approx(0.5)
    assert row["outcome_rate"] == pytest.approx(RATE)
    assert row["brier_low"] <= row["brier"] <= row["brier_high"]
    assert "mae_to_reference" not in row.index


def test_ref_col_and_group_col(tmp_path, capsys):
    other = _constant_frame().assign(q=0.5, method="b")  # calibrated: ECE 0, Brier 0.25
    path = tmp_path / "predictions.parquet"
    pd.concat([other, _constant_frame()]).to_parquet(path)
    out = tmp_path / "table.parquet"
    code, text, _ = _run(
        capsys, path, "--prob-col", "q", "--outcome-col", "y", "--ref-col", "p_star",
        "--group-col", "method", "--n-boot", "20", "--out", out,
    )  # fmt: skip
    assert code == 0 and "mean abs(q - p_star)" in text and "overconfidence vs p_star" in text
    table = pd.read_parquet(out).set_index("method")
    assert list(table.index) == ["a", "b"]
    # a: |0.3 - 0.4| = 0.1; overconfidence |0.3 - 0.5| - |0.4 - 0.5| = 0.1
    assert table.loc["a", "mae_to_reference"] == pytest.approx(0.1)
    assert table.loc["a", "overconfidence"] == pytest.approx(0.1)
    assert table.loc["a", "ece"] == pytest.approx(0.2)
    # b: q = 0.5 against rate 0.5 and p* = 0.4: ECE 0, |q - p*| 0.1, overconfidence -0.1
    assert table.loc["b", "ece"] == pytest.approx(0.0)
    assert table.loc["b", "brier"] == pytest.approx(0.25)
    assert table.loc["b", "mae_to_reference"] == pytest.approx(0.1)
    assert table.loc["b", "overconfidence"] == pytest.approx(-0.1)
    assert {"mae_to_reference_low", "overconfidence_high"} <= set(table.columns)


def test_text_answers_are_parsed_and_invalid_ones_counted(tmp_path, capsys):
    answers = ["<answer>30</answer>", "reasoning... <answer>30</answer>"] * 5
    answers += ["no idea", "<answer>0</answer>"]  # unparseable; off the grid 1..99
    frame = pd.DataFrame({"completion": answers, "y": [1, 0] * 6})
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "table.json"
    code, text, _ = _run(
        capsys, path, "--prob-col", "completion", "--outcome-col", "y", "--n-boot", "0",
        "--out", out,
    )  # fmt: skip
    assert code == 0
    assert "2 (16.7%)" in text and "2 of 12 answers are invalid" in text
    assert "score only the valid rows" in text
    row = _read(out).iloc[0]
    assert (row["n"], row["n_valid"], row["n_invalid"]) == (12, 10, 2)
    assert row["ece"] == pytest.approx(0.2) and row["brier"] == pytest.approx(BRIER)
    assert "ece_low" not in row.index


def test_a_column_may_mix_probabilities_and_text_answers():
    answers = pd.Series(["0.3", "<answer>30</answer>", None, "maybe", "0.3", 0.3], dtype=object)
    frame = pd.DataFrame({"q": answers, "y": [1, 0, 1, 0, 1, 0]})

    def parser(texts):  # a stand-in for the CLI's parser of <answer>N</answer>
        assert texts == ["<answer>30</answer>", "maybe"]
        return [0.3, float("nan")], [True, False]

    table = calibration_table(frame, prob_col="q", outcome_col="y", n_boot=0, parser=parser)
    assert table.loc[0, "n_invalid"] == 2 and table.loc[0, "ece"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="holds text"):
        calibration_table(frame, prob_col="q", outcome_col="y", n_boot=0)


def test_missing_probabilities_are_invalid():
    frame = _constant_frame().astype({"q": float})
    frame.loc[[0, 1], "q"] = float("nan")
    table = calibration_table(frame, prob_col="q", outcome_col="y", n_boot=0)
    assert table.loc[0, "n_invalid"] == 2 and table.loc[0, "ece"] == pytest.approx(0.2)


def test_bins_and_right_move_a_prediction_on_an_edge(tmp_path, capsys):
    # q = 0.1 sits on the edge of 10 bins: [0.1, 0.2) by default, [0, 0.1] with --right
    path = tmp_path / "edge.csv"
    pd.DataFrame({"q": [0.05, 0.1], "y": [0, 1]}).to_csv(path, index=False)
    expected = {
        (): (0.05 + 0.9) / 2,  # one prediction per bin
        ("--right",): abs(0.075 - 0.5),  # both in the first bin
        ("--bins", "1"): abs(0.075 - 0.5),
    }
    for options, ece in expected.items():
        out = tmp_path / f"table{len(options)}{'right' in str(options)}.csv"
        args = [path, "--prob-col", "q", "--outcome-col", "y", "--n-boot", "0", "--out", out]
        code, text, _ = _run(capsys, *args, *options)
        assert code == 0
        assert pd.read_csv(out).loc[0, "ece"] == pytest.approx(ece), options
    assert "(a, b]" in _run(capsys, path, "--prob-col", "q", "--outcome-col", "y", "--right")[1]


def test_out_round_trip_and_refusal_to_overwrite(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    _constant_frame().to_csv(path, index=False)
    base = [path, "--prob-col", "q", "--outcome-col", "y", "--ref-col", "p_star", "--n-boot", "0"]
    tables = {}
    for suffix in (".csv", ".parquet", ".json"):
        out = tmp_path / f"table{suffix}"
        assert _run(capsys, *base, "--out", out)[0] == 0
        tables[suffix] = _read(out)
    pd.testing.assert_frame_equal(tables[".csv"], tables[".parquet"], check_dtype=False)
    pd.testing.assert_frame_equal(tables[".csv"], tables[".json"], check_dtype=False)
    markdown = tmp_path / "table.md"
    code, text, _ = _run(capsys, *base, "--out", markdown)
    assert code == 0 and text.startswith(markdown.read_text())

    before = markdown.read_text()
    code, _, err = _run(capsys, *base, "--bins", "5", "--out", markdown)
    assert code == 1 and "already exists" in err and "--force" in err
    assert markdown.read_text() == before  # nothing replaced
    assert _run(capsys, *base, "--bins", "5", "--out", markdown, "--force")[0] == 0
    assert "5 equal-width bins" in markdown.read_text()

    code, _, err = _run(capsys, *base, "--out", tmp_path / "table.txt")
    assert code == 2 and "--out must end in" in err


def test_bad_columns_list_the_columns(tmp_path, capsys):
    path = tmp_path / "predictions.parquet"
    _constant_frame().to_parquet(path)
    code, _, err = _run(capsys, path, "--prob-col", "prob", "--outcome-col", "y")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "'prob' (--prob-col)" in err and "q, y, p_star, method" in err
    code, _, err = _run(capsys, path, "--prob-col", "q", "--outcome-col", "y", "--group-col", "m")
    assert code == 1 and "'m' (--group-col)" in err and "q, y, p_star, method" in err


def test_non_binary_outcomes_and_bad_probabilities_name_the_row(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    frame = _constant_frame()
    frame.loc[3, "y"] = 2
    frame.to_csv(path, index=False)
    code, _, err = _run(capsys, path, "--prob-col", "q", "--outcome-col", "y")
    assert code == 1 and "column 'y', row 3" in err and "outcomes must be 0/1" in err

    frame = _constant_frame().astype({"q": float})
    frame.loc[7, "q"] = 1.5
    frame.to_csv(path, index=False)
    code, _, err = _run(capsys, path, "--prob-col", "q", "--outcome-col", "y")
    assert code == 1 and "column 'q', row 7" in err and "[0, 1]" in err

    code, _, err = _run(capsys, tmp_path / "missing.csv", "--prob-col", "q", "--outcome-col", "y")
    assert code == 1 and "does not exist" in err


# ------------------------------------------------------------- issue 20: defaults, plot, table

_GFM_DELIMITER = re.compile(r"^:?-+:?$")


def _parse_markdown_table(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """(headers, alignments, rows) of a GitHub-flavoured Markdown table; asserts the rules
    GFM sets (one delimiter cell per header, each hyphens with optional colons, every row
    as wide as the header)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]

    def cells(line: str) -> list[str]:
        assert line.startswith("| ") and line.endswith(" |"), line
        return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]

    headers, delimiter, rows = cells(lines[0]), cells(lines[1]), [cells(x) for x in lines[2:]]
    assert len(delimiter) == len(headers)
    for cell in delimiter:
        assert _GFM_DELIMITER.match(cell), f"not a GFM delimiter cell: {cell!r}"
    assert all(len(row) == len(headers) for row in rows)
    align = ["right" if c.endswith(":") and not c.startswith(":") else "left" for c in delimiter]
    return headers, align, rows


@pytest.mark.parametrize("n_rows", [1, 2, 3])
@pytest.mark.parametrize("grouped", [False, True])
def test_markdown_table_is_valid_for_few_rows(n_rows, grouped):
    markdown = pytest.importorskip("markdown")
    frame = pd.DataFrame({"q": [0.3, 0.6, 0.9][:n_rows], "y": [1, 0, 1][:n_rows]})
    frame["m"] = ["a", "b", "c"][:n_rows]
    table = calibration_table(frame, group_col="m" if grouped else None, n_boot=20)
    text = format_calibration_table(table)
    headers, align, rows = _parse_markdown_table(text)
    assert headers[:3] == ["m" if grouped else "group", "n", "invalid"]
    assert len(rows) == (n_rows if grouped else 1)
    assert align[1:] == ["right"] * (len(headers) - 1)  # the `n` column too (was ":")
    html = markdown.markdown(text, extensions=["tables"])
    assert html.count("<tr>") == len(rows) + 1
    assert "text-align: center" not in html


def test_an_empty_table_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="no rows"):
        format_calibration_table(calibration_table(_constant_frame(), n_boot=0).iloc[:0])
    with pytest.raises(ValueError, match="at least one row"):
        markdown_table(["a", "b"], [])
    path = tmp_path / "empty.csv"
    pd.DataFrame({"q": [], "y": []}).to_csv(path, index=False)
    code, _, err = _run(capsys, path)
    assert code == 1 and "no rows" in err


@pytest.mark.parametrize(
    "columns, expected",
    [(("q", "y"), ("q", "y")), (("prob", "outcome"), ("prob", "outcome")),
     (("probability", "y", "method"), ("probability", "y"))],
)  # fmt: skip
def test_default_columns(tmp_path, capsys, columns, expected):
    frame = pd.DataFrame({name: [0.3, 0.7] if i == 0 else [1, 0] for i, name in
                          enumerate(columns)})  # fmt: skip
    assert resolve_columns(frame) == expected
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    code, text, _ = _run(capsys, path, "--n-boot", "0")
    assert code == 0 and f"calibration of {expected[0]!r} against {expected[1]!r}" in text
    assert calibration_table(frame, n_boot=0).loc[0, "brier"] == pytest.approx(0.49)


def test_default_columns_missing_or_ambiguous_list_the_columns(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    pd.DataFrame({"score": [0.3], "y": [1]}).to_csv(path, index=False)
    code, _, err = _run(capsys, path)
    assert code == 1 and "no prediction column" in err and "--prob-col" in err
    assert "'score', 'y'" in err and "'q' / 'prob' / 'probability'" in err
    pd.DataFrame({"q": [0.3], "prob": [0.3], "y": [1], "outcome": [1]}).to_csv(path, index=False)
    code, _, err = _run(capsys, path)
    assert code == 1 and "ambiguous" in err and "'q', 'prob'" in err
    code, _, err = _run(capsys, path, "--prob-col", "q")
    assert code == 1 and "outcome column is ambiguous" in err and "--outcome-col" in err
    assert _run(capsys, path, "--prob-col", "q", "--outcome-col", "y")[0] == 0


def test_plot_writes_a_png_and_is_protected(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    other = _constant_frame().assign(q=0.5, method="b")
    pd.concat([_constant_frame(), other]).to_csv(path, index=False)
    plot = tmp_path / "reliability.png"
    code, text, _ = _run(capsys, path, "--group-col", "method", "--n-boot", "0", "--plot", plot)
    assert code == 0 and f"wrote {plot}" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = plot.read_bytes()
    code, _, err = _run(capsys, path, "--plot", plot)
    assert code == 1 and "already exists" in err and "--plot" in err
    assert plot.read_bytes() == before
    assert _run(capsys, path, "--plot", plot, "--force")[0] == 0
    code, _, err = _run(capsys, path, "--plot", tmp_path / "r.jpg")
    assert code == 2 and "--plot must end in .png" in err


def _paired_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": ["a", "b", "c"] * 2,
            "method": ["m1"] * 3 + ["m2"] * 3,
            "q": [0.2, 0.7, 0.5, 0.4, 0.9, 0.5],
            "y": [0, 1, 1, 0, 1, 1],
        }
    )


def test_paired_comparison_from_the_cli(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    _paired_frame().sample(frac=1, random_state=0).to_csv(path, index=False)  # order shuffled
    code, text, _ = _run(
        capsys, path, "--group-col", "method", "--paired-by", "question_id",
        "--paired-interval", "normal", "--n-boot", "0", "--out", tmp_path / "t.md",
    )  # fmt: skip
    assert code == 0 and "paired comparison by 'question_id'" in text
    # Brier m2 - m1 per question: (0.16 - 0.04), (0.01 - 0.09), (0.25 - 0.25) -> mean 0.04/3
    paired = text[text.index("paired comparison") :]
    headers, _, rows = _parse_markdown_table(paired)
    assert rows[0][:3] == ["m2", "m1", "3"] and rows[0][4].startswith("0.0133 [")
    assert "paired comparison" in (tmp_path / "t.md").read_text()
    code, _, err = _run(capsys, path, "--paired-by", "question_id")
    assert code == 2 and "--group-col" in err
    code, _, err = _run(capsys, path, "--group-col", "method", "--paired-by", "qid")
    assert code == 1 and "'qid' (--paired-by)" in err
    code, _, err = _run(capsys, path, "--group-col", "method", "--paired-by", "question_id",
                        "--n-boot", "0")  # fmt: skip
    assert code == 2 and "--paired-interval normal" in err
    frame = _paired_frame()
    frame.loc[5, "question_id"] = "d"
    frame.to_csv(path, index=False)
    code, _, err = _run(capsys, path, "--group-col", "method", "--paired-by", "question_id")
    assert code == 1 and "same questions" in err and "only in 'm1' ('c')" in err
    assert "only in 'm2' ('d')" in err
