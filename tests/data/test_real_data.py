"""Load every registered task from the shared data directory and check the README's row counts."""
from __future__ import annotations

import pytest

from adapterkit.data.tasks import TASKS, load_task
from adapterkit.metrics import compute_metrics

EXPECTED = {
    "sst2": {"train": 67349, "dev": 872},
    "cola": {"train": 8551, "dev": 1043},
    "mrpc": {"train": 3668, "dev": 408, "test": 1725},
    "stsb": {"train": 5749, "dev": 1500},
    "rte": {"train": 2490, "dev": 277},
    "qnli": {"dev": 5463},
    "chemprot": {"train": 4169, "dev": 2427, "test": 3469},
    "citation_intent": {"train": 1688, "dev": 114, "test": 139},
    **{f"xnli_{lang}": {"dev": 2490} for lang in ("en", "de", "fr", "es", "zh", "ru")},
    "xquad_en": {"test": 1190},
    "xquad_de": {"test": 1190},
    "xquad_en_split": {"train": 833, "dev": 176, "test": 181},
    "xquad_de_split": {"train": 833, "dev": 176, "test": 181},
    "xquad_en_xtreme": {"test": 1190},
    "xquad_de_xtreme": {"test": 1190},
}




def test_every_file_task_is_covered():
    file_tasks = {n for n, s in TASKS.items() if s.fmt != "hub" and not n.startswith(("sample_", "tmp_"))}
    assert file_tasks <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_row_counts(name, data_dir):
    spec = TASKS[name]
    data = load_task(name, data_dir)
    assert {split: len(rows) for split, rows in data.items()} == EXPECTED[name]
    for rows in data.values():
        ex = rows[0]
        if spec.kind == "qa":
            assert ex["question"] and ex["context"] and ex["id"]
        elif spec.kind == "regression":
            assert isinstance(ex["label"], float) and 0.0 <= ex["label"] <= 5.0
        else:
            assert all(0 <= e["label"] < spec.num_labels for e in rows)
            assert isinstance(ex["text"], str) and ex["text"]
            assert (ex["text_pair"] is not None) == (len(spec.text_columns) == 2)


def test_label_details(data_dir):
    sst2 = load_task("sst2", data_dir, splits=["dev"])["dev"]
    assert sum(e["label"] for e in sst2) == 444  # positives in GLUE SST-2 dev
    mrpc = load_task("mrpc", data_dir, splits=["dev"])["dev"]
    assert not mrpc[0]["text"].startswith("\ufeff")
    assert mrpc[0]["text_pair"].startswith('"')  # unbalanced quote kept (QUOTE_NONE)
    xnli = load_task("xnli_en", data_dir)["dev"]
    assert xnli[0]["label"] == 1 and not xnli[0]["text_pair"].endswith("\r")  # neutral, CRLF stripped
    chem = load_task("chemprot", data_dir, splits=["train"])["train"]
    assert len({e["label"] for e in chem}) == 13


def test_majority_baseline_metric(data_dir):
    dev = load_task("cola", data_dir, splits=["dev"])["dev"]
    labels = [e["label"] for e in dev]
    out = compute_metrics(TASKS["cola"], [1] * len(labels), labels)
    assert out["score"] == out["matthews"] == 0.0
    assert out["accuracy"] == pytest.approx(719 / 1043)


def test_xquad_with_answers_split_by_article(data_dir):
    """The registered XQuAD tasks carry answers; the English and German splits hold the same 8+8+32 articles."""
    for lang in ("en", "de"):
        full = load_task(f"xquad_{lang}", data_dir)["test"]
        assert all(ex["answers"]["text"] for ex in full)
        assert not any(ex["answers"]["text"] for ex in load_task(f"xquad_{lang}_xtreme", data_dir)["test"])
    en, de = load_task("xquad_en_split", data_dir), load_task("xquad_de_split", data_dir)
    titles = {split: {ex["title"] for ex in rows} for split, rows in en.items()}
    assert {k: len(v) for k, v in titles.items()} == {"train": 32, "dev": 8, "test": 8}
    assert not (titles["train"] & titles["dev"] or titles["train"] & titles["test"] or titles["dev"] & titles["test"])
    for split in ("train", "dev", "test"):
        assert [ex["id"] for ex in de[split]] == [ex["id"] for ex in en[split]]  # parallel questions
