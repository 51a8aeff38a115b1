"""Tests for adapterkit.data.tasks (registry, loaders, user tasks)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapterkit.data import tasks
from adapterkit.data.formats import read_tsv
from adapterkit.data.tasks import (
    TASKS,
    TaskSpec,
    get_task,
    load_split,
    load_task,
    load_task_from_config,
    packaged_sample_dir,
    register_task,
    resolve_data_dir,
    task_from_file,
    task_from_hub,
)
from adapterkit.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("ADAPTERKIT_DATA_DIR", raising=False)


def test_registry_contents():
    expected = {"sst2", "cola", "mrpc", "stsb", "rte", "qnli", "chemprot", "citation_intent", "xquad_en",
                "xquad_de", "xquad_en_split", "xquad_de_split", "xquad_en_xtreme", "xquad_de_xtreme",
                "sample_sentiment"} | {f"xnli_{x}" for x in ("en", "de", "fr", "es", "zh", "ru")}
    assert expected <= set(TASKS)
    assert get_task("chemprot").num_labels == 13
    assert get_task("citation_intent").num_labels == 6
    assert get_task("stsb").kind == "regression" and get_task("stsb").labels is None
    assert get_task("mrpc").splits == ("train", "dev", "test")
    assert get_task("sample_sentiment").splits == ("train", "dev")
    assert get_task("qnli").label2id == {"entailment": 0, "not_entailment": 1}


def test_get_task_unknown_lists_names():
    with pytest.raises(ConfigError, match=r"unknown task 'sst3'.*'sst2'"):
        get_task("sst3")


def test_register_task_conflict():
    spec = TaskSpec("tmp_task", "regression", ("a",), "y", None, "pearson", {"train": "x.tsv"})
    register_task(spec)
    try:
        register_task(spec)  # same spec again is fine
        other = TaskSpec("tmp_task", "regression", ("b",), "y", None, "pearson", {"train": "x.tsv"})
        with pytest.raises(ConfigError, match="already registered"):
            register_task(other)
        register_task(other, overwrite=True)
    finally:
        TASKS.pop("tmp_task", None)


def test_taskspec_validation():
    with pytest.raises(ConfigError, match="kind"):
        TaskSpec("t", "ranking", ("a",), "y", None, "accuracy", {"train": "x"})
    with pytest.raises(ConfigError, match="metric"):
        TaskSpec("t", "classification", ("a",), "y", ("0", "1"), "bleu", {"train": "x"})
    with pytest.raises(ConfigError, match="text_columns"):
        TaskSpec("t", "classification", ("a", "b", "c"), "y", ("0", "1"), "accuracy", {"train": "x"})


def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("ADAPTERKIT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("/elsewhere") == tmp_path.__class__("/elsewhere")


def _spec(**kw):
    base = dict(name="toy", kind="classification", text_columns=("sentence",), label_column="label",
                labels=("0", "1"), metric="accuracy", files={"train": "toy/train.tsv"})
    base.update(kw)
    return TaskSpec(**base)


def test_load_split_missing_file_and_dir(tmp_path):
    with pytest.raises(DataError, match=r"no data directory.*ADAPTERKIT_DATA_DIR"):
        load_split(_spec(), "train", None)
    with pytest.raises(DataError, match=r"toy/train\.tsv: file not found \(task 'toy'"):
        load_split(_spec(), "train", tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        load_split(_spec(), "test", tmp_path)


def test_load_split_env_dir_missing_column_and_unseen_label(monkeypatch, tmp_path):
    (tmp_path / "toy").mkdir()
    path = tmp_path / "toy" / "train.tsv"
    path.write_text("\ufeffsentence\tlabel\ngood\t1\nbad\t0\n", encoding="utf-8")
    monkeypatch.setenv("ADAPTERKIT_DATA_DIR", str(tmp_path))
    assert load_split(_spec(), "train") == [
        {"text": "good", "text_pair": None, "label": 1},
        {"text": "bad", "text_pair": None, "label": 0},
    ]
    with pytest.raises(DataError, match=r"train\.tsv: column 'y' not found; columns are \['sentence', 'label'\]"):
        load_split(_spec(label_column="y"), "train")
    path.write_text("sentence\tlabel\ngood\t1\nodd\t7\n")
    with pytest.raises(DataError, match=r"train\.tsv: row 2: column 'label': label '7'"):
        load_split(_spec(), "train")


def test_regression_bad_value(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("s1\ts2\tscore\na\tb\t3.5\nc\td\thigh\n")
    spec = TaskSpec("r", "regression", ("s1", "s2"), "score", None, "spearman", {"train": str(path)})
    with pytest.raises(DataError, match=r"r\.tsv: row 2: column 'score': 'high' is not a number"):
        load_split(spec, "train")


def test_task_from_file_csv_jsonl_parquet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("review,stars\nnice,pos\nbad,neg\nok,pos\n")
    (tmp_path / "dev.jsonl").write_text('{"review": "meh", "stars": "neg"}\n')
    pq.write_table(pa.table({"review": ["great"], "stars": ["pos"]}), tmp_path / "test.parquet")
    spec = task_from_file("mine", "train.csv", dev="dev.jsonl", test=str(tmp_path / "test.parquet"),
                          text_columns="review", label_column="stars")
    assert spec.labels == ("neg", "pos") and spec.metric == "accuracy"
    data = load_task(spec)
    assert [e["label"] for e in data["train"]] == [1, 0, 1]
    assert data["dev"] == [{"text": "meh", "text_pair": None, "label": 0}]
    assert data["test"][0]["text"] == "great"
    assert load_task(spec, splits=["dev"]).keys() == {"dev"}


def test_task_from_file_numeric_labels_and_regression(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\tlabel\nx\ty\t10\nx\ty\t2\nx\ty\t1\n")
    spec = task_from_file("num", path, text_columns=["a", "b"])
    assert spec.labels == ("1", "2", "10")
    assert [e["label"] for e in load_split(spec, "train")] == [2, 1, 0]
    reg = task_from_file("reg", path, text_columns=["a", "b"], kind="regression")
    assert reg.labels is None and reg.metric == "spearman"
    assert load_split(reg, "train")[0] == {"text": "x", "text_pair": "y", "label": 10.0}
    with pytest.raises(DataError, match="file not found"):
        task_from_file("x", tmp_path / "missing.csv")


def test_task_from_file_qa(tmp_path):
    squad = {"data": [{"paragraphs": [{"context": "ctx here", "qas": [
        {"id": "1", "question": "q?", "answers": [{"text": "ctx", "answer_start": 0}]},
        {"id": "2", "question": "q2?", "answers": [{"text": "", "answer_start": 0}]}]}]}]}
    (tmp_path / "qa.json").write_text(json.dumps(squad))
    spec = task_from_file("myqa", tmp_path / "qa.json", kind="qa")
    rows = load_split(spec, "train")
    assert rows[0]["answers"] == {"text": ["ctx"], "answer_start": [0]}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}  # blank answers dropped


def test_load_task_from_config(tmp_path):
    (tmp_path / "tr.tsv").write_text("text\tlabel\na\tx\nb\ty\n")
    spec = load_task_from_config({"name": "cfg", "train": "tr.tsv", "labels": ["y", "x"]}, base_dir=tmp_path)
    assert spec.labels == ("y", "x")
    assert [e["label"] for e in load_split(spec, "train")] == [1, 0]
    assert load_task_from_config({"name": "sst2"}) is get_task("sst2")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_task_from_config({"name": "cfg", "train": "tr.tsv", "colour": "red"})
    with pytest.raises(ConfigError, match="train: required"):
        load_task_from_config({"name": "cfg", "dev": "tr.tsv"})
    hub = load_task_from_config({"name": "h", "hub": ["nyu-mll/glue", "sst2"], "text_columns": ["sentence"]})
    assert hub.fmt == "hub" and hub.hub == ("nyu-mll/glue", "sst2")


def test_task_from_hub_error_path(monkeypatch):
    with pytest.raises(ConfigError, match="dataset"):
        task_from_hub("", None)
    spec = task_from_hub("someone/data", "cfg", ["sentence"], "label")
    assert spec.splits == ("train", "dev", "test") and spec.files["dev"] == "validation"
    import datasets

    def _fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", _fail)
    with pytest.raises(DataError, match=r"hub:someone/data/cfg\[validation\]: cannot load split 'dev'.*offline"):
        load_split(spec, "dev")


def test_packaged_sample():
    path = packaged_sample_dir() / "sentiment.tsv"
    rows = read_tsv(path)
    assert 100 <= len(rows) <= 140
    assert Counter(r["label"] for r in rows) == {"0": 60, "1": 60}
    data = load_task("sample_sentiment")  # needs no data directory
    assert len(data["train"]) == 80 and len(data["dev"]) == 40
    assert Counter(e["label"] for e in data["dev"]) == {0: 20, 1: 20}
    assert not {e["text"] for e in data["train"]} & {e["text"] for e in data["dev"]}
    assert load_split("sample_sentiment", "dev") == data["dev"]
    assert tasks.CARVE_SEED == 0


# --- bad data: refused naming the file, row and column (issue 16) -------------------------------


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def _load(path: Path, **kw):
    spec = task_from_file("t", path, **kw)
    return load_split(spec, "train")


@pytest.mark.parametrize("label, match", [
    ("nan", r"row 2: column 'label': label 'nan' is NaN"),
    ("NaN", r"row 2: column 'label': label 'NaN' is NaN"),
    ("1.5", r"row 2: column 'label': label '1.5' is not a class .*--kind regression"),
    ("inf", r"row 2: column 'label': label 'inf' is not a class"),
])
def test_bad_class_labels(tmp_path: Path, label: str, match: str):
    path = _csv(tmp_path / "t.csv", [("good film", "1"), ("bad film", label), ("dull", "0")])
    with pytest.raises(DataError, match=rf"t\.csv: {match}"):
        _load(path)


def test_integral_float_labels_are_one_class(tmp_path: Path):
    path = _csv(tmp_path / "t.csv", [("good film", "1"), ("bad film", "0.0"), ("dull", "1.0"), ("ok", "0")])
    spec = task_from_file("t", path)
    assert spec.labels == ("0", "1")
    assert [ex["label"] for ex in load_split(spec, "train")] == [1, 0, 1, 0]


def test_mixed_label_spellings(tmp_path: Path):
    path = _csv(tmp_path / "t.csv", [("a", "0"), ("b", "1"), ("c", "neg"), ("d", "pos")])
    with pytest.raises(DataError, match=r"t\.csv: label column mixes numeric labels \['0', '1'\] and named "
                                        r"labels \['neg', 'pos'\]"):
        task_from_file("t", path)


def test_nan_float_label_in_parquet(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, math.nan]}), path)
    with pytest.raises(DataError, match=r"t\.parquet: row 2: column 'label': label nan is NaN"):
        _load(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_regression_labels_must_be_finite(tmp_path: Path, value: str):
    path = _csv(tmp_path / "r.csv", [("a", "0.5"), ("b", value)], header="text,score")
    with pytest.raises(DataError, match=r"r\.csv: row 2: column 'score'"):
        _load(path, kind="regression", label_column="score")


def test_empty_text_is_refused(tmp_path: Path):
    path = _csv(tmp_path / "t.csv", [("good", "1"), ('""', "0")])
    with pytest.raises(DataError, match=r"t\.csv: row 2: column 'text' is empty"):
        _load(path)
    path = _csv(tmp_path / "u.csv", [("good", "1"), ("   ", "0")])
    with pytest.raises(DataError, match=r"u\.csv: row 2: column 'text' is empty"):
        _load(path)


def test_nan_text_in_parquet_is_refused(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "label": [0, 1, 0]}), path)
    with pytest.raises(DataError, match=r"t\.parquet: row 2: column 'text' is empty"):
        _load(path)
    path = tmp_path / "u.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": NaN, "label": 1}\n')
    with pytest.raises(DataError, match=r"u\.jsonl: row 2: column 'text' is empty \(a missing value: nan\)"):
        _load(path)


def test_nul_byte_in_csv(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\ngood,1\nba\x00d,0\n")
    with pytest.raises(DataError, match=r"t\.csv: row 2: column 'text' contains a NUL byte"):
        _load(path)


def test_text_nan_is_kept_with_a_warning(tmp_path: Path, capsys):
    path = _csv(tmp_path / "t.csv", [("good", "1"), ("NaN", "0"), ("fine", "1")])
    examples = _load(path)
    assert examples[1]["text"] == "NaN"
    err = capsys.readouterr().err
    assert "t.csv: text: 1 row(s) (first: row 2) have the text 'NaN'" in err and "kept as text" in err


# --- QA -------------------------------------------------------------------------------------------


def _qa(path: Path, answers) -> Path:
    row = {"id": "q1", "question": "Who?", "context": "Alice met Bob.", "answers": answers}
    path.write_text(json.dumps({"id": "q0", "question": "Who?", "context": "Alice met Bob.",
                                "answers": {"text": ["Alice"], "answer_start": [0]}}) + "\n" + json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("answers, match", [
    ({"text": ["Bob"], "answer_start": [0]}, r"answer_start\[0\]: the context at 0 reads 'Ali', not the answer text 'Bob'"),
    ({"text": ["Bob"], "answer_start": [40]}, r"answer_start\[0\]: 40 puts the answer 'Bob' outside the context"),
    ({"text": ["Bob"], "answer_start": [-3]}, r"answer_start\[0\]: -3 puts the answer 'Bob' outside the context"),
    ({"text": ["Bob"], "answer_start": ["ten"]}, r"answer_start\[0\]: expected an integer, got 'ten'"),
    ({"text": ["Bob"], "answer_start": [10.5]}, r"answer_start\[0\]: expected an integer, got 10.5"),
    (["Bob", "Alice"], r"expected a list of \{'text', 'answer_start'\} objects, found 'Bob'"),
    ({"text": "Bob", "answer_start": 10}, r"'text' and 'answer_start' must be lists"),
    ({"text": [3], "answer_start": [10]}, r"text\[0\]: expected a string, got 3"),
])
def test_bad_qa_answers(tmp_path: Path, answers, match: str):
    path = _qa(tmp_path / "qa.jsonl", answers)
    with pytest.raises(DataError, match=rf"qa\.jsonl: row 2: column 'answers': {match}"):
        _load(path, kind="qa")


def test_good_qa_answers_load(tmp_path: Path):
    path = _qa(tmp_path / "qa.jsonl", [{"text": "Bob", "answer_start": 10}, {"text": "Bob", "answer_start": "10"}])
    examples = _load(path, kind="qa")
    assert examples[1]["answers"] == {"text": ["Bob", "Bob"], "answer_start": [10, 10]}


def test_squad_json_answer_start_checked(tmp_path: Path):
    path = tmp_path / "sq.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Alice met Bob.", "qas": [
        {"id": "a", "question": "Who?", "answers": [{"text": "Bob", "answer_start": 3}]}]}]}]}))
    with pytest.raises(DataError, match=r"sq\.json: row 1: column 'answers': answer_start\[0\]: the context at 3"):
        _load(path, kind="qa")


def _squad_articles(path: Path, n_articles: int, lang: str = "en", bad_start: bool = False) -> Path:
    """A SQuAD file of ``n_articles`` articles (titles A00, A01, ...), 2 paragraphs x 2 questions each."""
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            context = f"{lang} article {a} paragraph {p}: the answer is word{a}x{p}."
            start = context.index(f"word{a}x{p}")
            qas = [{"id": f"{lang}-{a}-{p}-{q}", "question": f"what {q}?",
                    "answers": [{"text": f"word{a}x{p}", "answer_start": start + (1 if bad_start and a == 3 else 0)}]}
                   for q in range(2)]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"A{a:02d}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_article_split_puts_every_article_in_one_split(tmp_path: Path):
    from adapterkit.data.tasks import XQUAD_ARTICLE_SPLIT

    spec = TaskSpec("tmp_articles", "qa", ("question", "context"), None, None, "squad_f1",
                    {"all": str(_squad_articles(tmp_path / "en.json", 48))}, fmt="squad",
                    article_split=XQUAD_ARTICLE_SPLIT)
    assert spec.splits == ("train", "dev", "test")
    data = load_task(spec)
    titles = {split: {ex["title"] for ex in rows} for split, rows in data.items()}
    assert {k: len(v) for k, v in titles.items()} == {"train": 32, "dev": 8, "test": 8}
    assert not titles["train"] & titles["dev"] and not titles["train"] & titles["test"]
    assert not titles["dev"] & titles["test"]
    assert sum(len(rows) for rows in data.values()) == 48 * 4
    assert load_task(spec) == data  # fixed seed: the same split every time
    assert titles["test"] != {f"A{a:02d}" for a in range(40, 48)}  # shuffled, not the file's last articles
    # a parallel file (same titles, another language) splits into the same articles
    de = TaskSpec("tmp_articles_de", "qa", ("question", "context"), None, None, "squad_f1",
                  {"all": str(_squad_articles(tmp_path / "de.json", 48, "de"))}, fmt="squad",
                  article_split=XQUAD_ARTICLE_SPLIT)
    assert {ex["title"] for ex in load_split(de, "test")} == titles["test"]
    bad = TaskSpec("tmp_articles_bad", "qa", ("question", "context"), None, None, "squad_f1",
                   {"all": str(_squad_articles(tmp_path / "bad.json", 48, bad_start=True))}, fmt="squad",
                   article_split=XQUAD_ARTICLE_SPLIT)
    with pytest.raises(DataError, match=r"bad\.json: row \d+: column 'answers': answer_start\[0\]"):
        load_split(bad, "train")


def test_article_split_validation():
    with pytest.raises(ConfigError, match="article_split"):
        TaskSpec("x", "qa", ("question", "context"), None, None, "squad_f1", {"test": "a.json"},
                 article_split=(0.5, 0.25, 0.25))
    with pytest.raises(ConfigError, match="3 positive fractions"):
        TaskSpec("x", "qa", ("question", "context"), None, None, "squad_f1", {"all": "a.json"},
                 article_split=(0.5, 0.5))


def test_xquad_with_answers_is_the_default_and_falls_back_to_xtreme(tmp_path: Path):
    """xquad_en reads qa/xquad (with answers); where only the XTREME copy exists, it reads that."""
    only_xtreme = tmp_path / "d1"
    (only_xtreme / "xtreme" / "xquad").mkdir(parents=True)
    _squad_articles(only_xtreme / "xtreme" / "xquad" / "xquad.en.json", 2)
    assert tasks.task_file(get_task("xquad_en"), "test", only_xtreme).parts[-3:] == ("xtreme", "xquad", "xquad.en.json")
    assert len(load_split("xquad_en", "test", only_xtreme)) == 8
    both = tmp_path / "d2"
    (both / "qa" / "xquad").mkdir(parents=True)
    _squad_articles(both / "qa" / "xquad" / "xquad.en.json", 3)
    (both / "xtreme" / "xquad").mkdir(parents=True)
    _squad_articles(both / "xtreme" / "xquad" / "xquad.en.json", 2)
    assert len(load_split("xquad_en", "test", both)) == 12  # the with-answers file wins
    with pytest.raises(DataError, match=r"xquad\.de\.json: file not found .*nor its fallback"):
        load_split("xquad_de", "test", both)


def test_headerless_files_take_column_indices(tmp_path):
    for name, sep in (("plain.tsv", "\t"), ("plain.csv", ",")):
        path = tmp_path / name
        path.write_text(f"a fine film{sep}pos\na dull film{sep}neg\nsuperb{sep}pos\n")
        spec = task_from_file("plain", path, text_columns=["0"], label_column="1", header=False)
        examples = load_split(spec, "train")
        assert [(e["text"], spec.labels[e["label"]]) for e in examples] == [
            ("a fine film", "pos"), ("a dull film", "neg"), ("superb", "pos")]
    yaml_style = load_task_from_config({"name": "p", "train": str(path), "text_columns": [0], "label_column": 1,
                                        "header": False})
    assert yaml_style.text_columns == ("0",) and len(load_split(yaml_style, "train")) == 3
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    with pytest.raises(ConfigError, match=r"d\.jsonl: no_header: only CSV and TSV"):
        task_from_file("d", jsonl, header=False)


def test_a_first_row_of_data_suggests_no_header(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text("a fine film\tpos\na dull film\tneg\nsuperb\tpos\n")
    with pytest.raises(DataError, match=r"plain\.tsv: column 'text' not found.*looks like data.*--no-header"):
        task_from_file("plain", path)
    with pytest.raises(DataError, match=r"plain\.tsv: column '0' not found.*--no-header"):
        task_from_file("plain", path, text_columns=["0"], label_column="1")
    headed = tmp_path / "headed.tsv"
    headed.write_text("review\tstars\na fine film\tpos\n")
    with pytest.raises(DataError, match=r"'0' is a column index.*--no-header.*first row names the columns"):
        task_from_file("headed", headed, text_columns=["0"], label_column="stars")
    with pytest.raises(DataError) as info:  # a real header: no suggestion
        task_from_file("headed", headed)
    assert "no-header" not in str(info.value)


def test_jsonl_true_false_labels_keep_their_names(tmp_path):
    path = tmp_path / "bool.jsonl"
    path.write_text('{"text": "yes it is", "label": true}\n{"text": "no it is not", "label": false}\n')
    spec = task_from_file("bool", path)
    assert spec.labels == ("false", "true")
    assert [spec.labels[e["label"]] for e in load_split(spec, "train")] == ["true", "false"]
    zero_one = task_from_file("bool01", path, labels=["0", "1"])  # a 0/1 label set still reads booleans
    assert [e["label"] for e in load_split(zero_one, "train")] == [1, 0]


def test_task_from_file_uses_each_file_as_named(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("text\tlabel\na\tpos\nb\tneg\n")
    spec = task_from_file("t", None, test=path)
    assert spec.splits == ("test",) and spec.labels == ("neg", "pos")
    with pytest.raises(ConfigError, match="give at least one file"):
        task_from_file("t", None)
