"""Baselines of the analysis commands: the trivial predictor's score."""
from __future__ import annotations

import pytest

from adapterkit.analysis.systems import trivial_score
from adapterkit.data.tasks import get_task
from adapterkit.errors import ConfigError


def test_trivial_score_is_the_majority_class_accuracy() -> None:
    train = [{"label": 1}, {"label": 1}, {"label": 0}]
    test = [{"label": 1}, {"label": 0}, {"label": 1}, {"label": 1}]
    assert trivial_score(get_task("sst2"), train, test) == pytest.approx(0.75)


def test_trivial_score_of_a_regression_task_is_zero_not_nan() -> None:
    """A constant prediction has no correlation: 0.0, the value every other experiment's majority row shows."""
    train = [{"label": 1.0}, {"label": 3.0}]
    test = [{"label": 0.5}, {"label": 4.0}, {"label": 2.0}]
    assert trivial_score(get_task("stsb"), train, test) == 0.0


def test_trivial_score_of_qa_answers_with_the_contexts_first_words() -> None:
    def ex(qid: str, context: str, answer: str) -> dict:
        return {"id": qid, "question": "q", "context": context,
                "answers": {"text": [answer], "answer_start": [context.index(answer)]}}

    train = [ex("a", "red green blue", "green blue"), ex("b", "one two three", "two three"), ex("c", "x y z", "z")]
    test = [ex("t1", "cold warm hot", "cold warm"), ex("t2", "up down left", "left")]
    # the median training answer has 2 words: "cold warm" is exact (F1 1), "up down" misses "left" (F1 0)
    assert trivial_score(get_task("xquad_en_split"), train, test) == pytest.approx(0.5)


def test_trivial_score_refuses_an_unknown_kind() -> None:
    spec = type("Spec", (), {"kind": "tagging"})()
    with pytest.raises(ConfigError, match="trivial baseline"):
        trivial_score(spec, [{"label": 0}], [{"label": 0}])
