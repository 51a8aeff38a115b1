"""Tests for adapterkit.data.formats."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapterkit.data.formats import (
    detect_format,
    read_csv,
    read_jsonl,
    read_parquet,
    read_squad_json,
    read_table,
    read_tsv,
)
from adapterkit.errors import DataError


def test_tsv_strips_bom_and_keeps_quotes(tmp_path):
    path = tmp_path / "mrpc.tsv"
    path.write_bytes('\ufeffQuality\t#1 String\n1\t"unbalanced quote\n'.encode())
    rows = read_tsv(path)
    assert rows == [{"Quality": "1", "#1 String": '"unbalanced quote'}]


def test_tsv_headerless_with_crlf(tmp_path):
    path = tmp_path / "xnli.tsv"
    path.write_bytes(b"a premise\ta hypothesis\tneutral\r\nx\ty\tentailment\r\n")
    rows = read_tsv(path, header=False, fieldnames=("premise", "hypothesis", "label"))
    assert rows[0] == {"premise": "a premise", "hypothesis": "a hypothesis", "label": "neutral"}
    assert rows[1]["label"] == "entailment"
    default = read_tsv(path, header=False)
    assert list(default[0]) == ["0", "1", "2"]  # column indices, as --text-columns 0 names them


ROWS = [
    ["text", "label"],
    ['He said "hi", then left', "pos"],
    ["a tab\there and a newline\nthere", "neg"],
    ['"fully quoted"', "pos"],
    ["plain text", "neg"],
]


def test_tsv_written_by_the_csv_module_reads_back_exactly(tmp_path):
    import csv

    path = tmp_path / "written.tsv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter="\t").writerows(ROWS)
    assert '""' in path.read_text()  # the writer doubled the quotes inside quoted fields
    rows = read_tsv(path)
    assert [[r["text"], r["label"]] for r in rows] == ROWS[1:]


def test_tsv_written_by_pandas_reads_back_exactly(tmp_path):
    import pandas as pd

    path = tmp_path / "pandas.tsv"
    pd.DataFrame(ROWS[1:], columns=ROWS[0]).to_csv(path, sep="\t", index=False)
    rows = read_table(path)
    assert [[r["text"], r["label"]] for r in rows] == ROWS[1:]


def test_ambiguous_quoting_is_assumed_standard_and_said(tmp_path):
    from adapterkit.errors import DataWarning

    path = tmp_path / "quoted.tsv"
    path.write_text('text\tlabel\n"a quoted review"\tpos\nplain\tneg\n')
    with pytest.warns(DataWarning, match=r"quoted\.tsv: assumed standard CSV quoting.*line 2"):
        rows = read_tsv(path)
    assert rows[0]["text"] == "a quoted review"


def test_csv_quoted_lines_in_an_unbalanced_file_are_kept_literally_with_a_warning(tmp_path):
    from adapterkit.errors import DataWarning

    path = tmp_path / "mixed.tsv"
    path.write_text('text\tlabel\n"say ""hi"""\tpos\n"unbalanced\tneg\n')
    with pytest.warns(DataWarning, match=r"mixed\.tsv: read quote marks literally: line 2"):
        rows = read_tsv(path)
    assert rows[1]["text"] == '"unbalanced'


def test_headerless_csv_has_index_column_names(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('"hello, world",pos\nbye,neg\n')
    assert read_csv(path, header=False) == [{"0": "hello, world", "1": "pos"}, {"0": "bye", "1": "neg"}]
    assert read_table(path, fmt="csv_noheader") == read_csv(path, header=False)


def test_tsv_wrong_field_count_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(DataError, match=r"bad\.tsv: line 3: expected 2 fields"):
        read_tsv(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.tsv: file not found"):
        read_tsv(tmp_path / "nope.tsv")


def test_csv_with_quotes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"hello, world",pos\n')
    assert read_csv(path) == [{"text": "hello, world", "label": "pos"}]


def test_jsonl_and_truncated_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "X"}\n\n{"text": "b", "label": "Y"}\n')
    assert [r["text"] for r in read_jsonl(path)] == ["a", "b"]
    path.write_text('{"text": "a", "label": "X"}\n{"text": "b", "lab')
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: invalid JSON"):
        read_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_jsonl(path)


def test_parquet_and_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sentence1": ["a", "b"], "label": [0, 1]}), path)
    assert read_parquet(path) == [{"sentence1": "a", "label": 0}, {"sentence1": "b", "label": 1}]
    data = path.read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read Parquet"):
        read_parquet(bad)


SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": "The cat sat on the mat.",
                    "qas": [
                        {"id": "q1", "question": "Where?", "answers": [{"text": "the mat", "answer_start": 15}]},
                        {"id": "q2", "question": "Who?", "answers": [{"text": "The cat", "answer_start": 0}]},
                    ],
                }
            ],
        }
    ],
}


def test_squad_flatten(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD), encoding="utf-8-sig")
    rows = read_squad_json(path)
    assert rows[0] == {
        "id": "q1",
        "title": "T",
        "question": "Where?",
        "context": "The cat sat on the mat.",
        "answers": {"text": ["the mat"], "answer_start": [15]},
    }
    assert read_table(path) == rows  # .json sniffed as SQuAD


def test_squad_truncated_and_malformed(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD)[:50])
    with pytest.raises(DataError, match=r"squad\.json: line 1: invalid JSON"):
        read_squad_json(path)
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(DataError, match="'data'"):
        read_squad_json(path)


def test_read_table_dispatch(tmp_path):
    (tmp_path / "a.tsv").write_text("t\tl\nx\t1\n")
    (tmp_path / "a.csv").write_text("t,l\nx,1\n")
    (tmp_path / "a.txt").write_text('{"t": "x", "l": "1"}\n')
    (tmp_path / "b.txt").write_text("t\tl\nx\t1\n")
    (tmp_path / "n.txt").write_text("x\ty\n")
    expected = [{"t": "x", "l": "1"}]
    for name in ("a.tsv", "a.csv", "a.txt", "b.txt"):
        assert read_table(tmp_path / name) == expected, name
    assert detect_format(tmp_path / "a.txt") == "jsonl"
    assert read_table(tmp_path / "n.txt", fmt="tsv_noheader", fieldnames=["t", "l"]) == [{"t": "x", "l": "y"}]
    with pytest.raises(DataError, match="fmt: unknown format"):
        read_table(tmp_path / "a.tsv", fmt="xml")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_table(tmp_path / "a.xml")
