"""Multi-task training: mixing proportions, task-routed heads, per-task evaluation and best-by-mean selection."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from adapterkit import PfeifferConfig
from adapterkit.context import forward_context
from adapterkit.data.sampling import temperature_sample_weights
from adapterkit.data.tasks import TaskSpec
from adapterkit.errors import ConfigError, DataError
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import save_tiny_model
from adapterkit.training import TrainConfig
from adapterkit.training.multitask import (
    MultiTaskHead,
    MultiTaskSpec,
    add_task_heads,
    evaluate_tasks,
    init_heads_from_probes,
    init_regression_biases,
    mix_tasks,
    task_metrics,
    train_multitask,
)

WORDS = ("good", "great", "bad", "awful", "cat", "dog", "red", "blue", "the", "a")


def _spec(name: str, kind: str = "classification", labels: tuple[str, ...] | None = ("0", "1")) -> TaskSpec:
    return TaskSpec(name, kind, ("text",), "label", labels if kind == "classification" else None,
                    "accuracy" if kind == "classification" else "pearson", {"train": f"{name}.tsv"})


def _examples(n: int, task: str, seed: int) -> list[dict]:
    """Learnable toy data: sentiment words (task a), animals (task b, 3 classes), a colour score (task c)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if task == "a":
            y = rng.randrange(2)
            out.append({"text": f"the {rng.choice(['good', 'great'] if y else ['bad', 'awful'])}", "label": y})
        elif task == "b":
            y = rng.randrange(3)
            out.append({"text": f"a {['cat', 'dog', 'red'][y]}", "label": y})
        else:
            y = rng.random() * 5
            out.append({"text": " ".join(["blue"] * (1 + int(y))), "label": y})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("mt") / "tiny", words=WORDS)


def _model(path, spec: MultiTaskSpec, sharing: str = "per_task"):
    hf, tok = load_base_model(str(path), "classification", 2, pooling="mean")
    adapted = AdaptedModel(hf)
    add_task_heads(adapted, spec, sharing)
    return adapted, tok


def test_mixing_is_proportional_and_temperature_follows_the_weights() -> None:
    data = {"big": [{"i": i} for i in range(800)], "small": [{"i": i} for i in range(200)]}
    mixed = mix_tasks(data, 1.0, seed=0)
    assert Counter(ex["task"] for ex in mixed) == {"big": 800, "small": 200}
    hot = mix_tasks(data, 10.0, seed=0)
    weights = temperature_sample_weights({"big": 800, "small": 200}, 10.0)
    counts = Counter(ex["task"] for ex in hot)
    assert len(hot) == 1000
    assert counts["small"] == round(1000 * weights["small"])  # 0.4665 -> 466 or 467 of 1000
    assert counts["small"] > 400  # upsampled: the small task is repeated
    assert len({ex["i"] for ex in hot if ex["task"] == "small"}) == 200  # every small example at least once
    assert hot == mix_tasks(data, 10.0, seed=0) and hot != mix_tasks(data, 10.0, seed=1)
    with pytest.raises(DataError, match="task 'small' has no training examples"):
        mix_tasks({"big": data["big"], "small": []})


def test_heads_route_by_task_id_and_sharing_follows_labels(tiny) -> None:
    spec = MultiTaskSpec((_spec("a"), _spec("b", labels=("x", "y", "z")), _spec("c", "regression"), _spec("d")))
    assert spec.head_groups("per_task") == [0, 1, 2, 3]
    assert spec.head_groups("shared_labels") == [0, 1, 2, 0]  # a and d have the same labels
    adapted, tok = _model(tiny, spec)
    head = adapted.pooled_head
    assert isinstance(head, MultiTaskHead) and len(head.classifiers) == 4
    with torch.no_grad():  # distinct layers, so the output tells which one ran
        for i, layer in enumerate(head.classifiers):
            layer.weight.zero_()
            layer.bias.fill_(float(i + 1))
    adapted.eval()
    batch = tok(["the good", "a cat", "blue", "the bad"], padding=True, return_tensors="pt")
    out = adapted(**batch, task_ids=torch.tensor([0, 1, 2, 3])).logits
    assert out.shape == (4, 3)
    assert out[0, :2].tolist() == [1.0, 1.0] and out[0, 2] == -1e4  # task a: 2 outputs, the third padded
    assert out[1].tolist() == [2.0, 2.0, 2.0]
    assert out[2, 0] == 3.0 and out[3, 0] == 4.0
    shared, _ = _model(tiny, spec, "shared_labels")
    assert len(shared.pooled_head.classifiers) == 3
    with pytest.raises(ConfigError, match="task_ids: 7 is not a task id"):
        adapted(**batch, task_ids=torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ConfigError, match="needs the batch's task_ids"):
        adapted(**batch)
    # the loss is each example's own task loss: a regression label of 3.0 on output 3.0 costs nothing
    with forward_context(task_ids=torch.tensor([2])):
        loss = head.loss(torch.tensor([[3.0, -1e4, -1e4]]), torch.tensor([3.0]))
    assert loss.item() == 0.0


def test_task_metrics_are_per_task_and_the_score_is_their_mean() -> None:
    spec = MultiTaskSpec((_spec("a"), _spec("b", labels=("x", "y", "z"))))
    logits = torch.tensor([[2.0, 0, -1e4], [0, 2.0, -1e4], [0, 0, 3.0], [3.0, 0, 0]]).numpy()
    labels = torch.tensor([0.0, 0.0, 2.0, 1.0]).numpy()
    metrics = task_metrics(spec, logits, labels, torch.tensor([0, 0, 1, 1]).numpy())
    assert metrics["a_accuracy"] == 0.5 and metrics["b_accuracy"] == 0.5
    assert metrics["score"] == pytest.approx(0.5)
    metrics = task_metrics(spec, logits, labels, torch.tensor([0, 0, 0, 1]).numpy())
    assert metrics["score"] == pytest.approx((metrics["a_score"] + metrics["b_score"]) / 2)


def test_multitask_training_evaluates_each_task_and_keeps_the_best_mean(tiny, tmp_path) -> None:
    spec = MultiTaskSpec((_spec("a"), _spec("b", labels=("x", "y", "z")), _spec("c", "regression")))
    adapted, tok = _model(tiny, spec)
    adapted.add_adapter("shared", PfeifferConfig(reduction_factor=2))
    train = {t: _examples(48, t, 1) for t in "abc"}
    dev = {t: _examples(24, t, 2) for t in "abc"}
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, learning_rate=5e-2, max_length=8,
                         progress="none", seed=3)
    result = train_multitask(adapted, tok, spec, train, dev, config)
    evals = [e for e in result.log_history if "eval_score" in e]
    assert len(evals) == 3  # every epoch
    for e in evals:  # every task scored, the selection score is their mean
        assert e["eval_score"] == pytest.approx((e["eval_a_score"] + e["eval_b_score"] + e["eval_c_score"]) / 3)
    best = max(evals, key=lambda e: e["eval_score"])
    assert result.best_step == best["step"] and result.score == pytest.approx(best["eval_score"])
    scores = evaluate_tasks(adapted, tok, spec, dev, config)
    assert set(scores) == {"a", "b", "c"}
    for t in "abc":  # the best checkpoint is what the model holds at the end
        assert scores[t]["score"] == pytest.approx(best[f"eval_{t}_score"], abs=1e-5)
    assert scores["b"]["accuracy"] == 1.0  # it learned the toy 3-class task
    saved = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert saved["best_step"] == best["step"]


def test_full_fine_tuning_and_resume(tiny, tmp_path) -> None:
    from transformers import TrainerCallback

    class StopAfterFirstEpoch(TrainerCallback):  # stands for a kill after the first checkpoint
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    spec = MultiTaskSpec((_spec("a"), _spec("c", "regression")))
    train = {t: _examples(32, t, 1) for t in "ac"}
    dev = {t: _examples(16, t, 2) for t in "ac"}
    first, tok = _model(tiny, spec)
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=2, batch_size=8, learning_rate=1e-3, max_length=8,
                         progress="none", train_mode="full", save_total_limit=None)
    one = train_multitask(first, tok, spec, train, dev, config, callbacks=[StopAfterFirstEpoch()])
    assert one.global_step == 8 and first.train_mode == "full"
    second, _ = _model(tiny, spec)
    resumed = train_multitask(second, tok, spec, train, dev, config.replace(resume=True))
    assert resumed.global_step == 16
    steps = [e["step"] for e in resumed.log_history if "eval_score" in e]
    assert steps == [8, 16]  # the first epoch's evaluation comes from the checkpoint's state, not a rerun


def test_bad_task_names_are_named(tiny) -> None:
    spec = MultiTaskSpec((_spec("a"),))
    with pytest.raises(ConfigError, match="task: 'zzz': not one of this run's tasks"):
        spec.task_id("zzz")
    with pytest.raises(ConfigError, match="a task is named twice"):
        MultiTaskSpec((_spec("a"), _spec("a")))
    with pytest.raises(DataError, match="has no 'task' field"):
        spec.encode(None, [{"text": "x", "label": 0}], 8)


def test_lp_init_fits_each_task_head_on_frozen_features(tiny) -> None:
    spec = MultiTaskSpec((_spec("a"), _spec("b", labels=("x", "y", "z")), _spec("c", "regression")))
    adapted, tok = _model(tiny, spec)
    train = {t: _examples(40, t, 1) for t in "abc"}
    dev = {t: _examples(20, t, 2) for t in "abc"}
    config = TrainConfig(output_dir="unused", max_length=8, progress="none")
    before = evaluate_tasks(adapted, tok, spec, dev, config)
    chosen = init_heads_from_probes(adapted, tok, spec, train, dev, config)
    assert set(chosen) == {"a", "b", "c"}
    after = evaluate_tasks(adapted, tok, spec, dev, config)
    assert after["b"]["accuracy"] == 1.0 and before["b"]["accuracy"] < 0.7  # no gradient step: the probe alone
    assert after["c"]["pearson"] > 0.9  # the colour count is linear in the mean-pooled features


def test_regression_bias_mean_starts_each_regression_head_at_its_label_mean(tiny, tmp_path) -> None:
    from transformers import TrainerCallback

    spec = MultiTaskSpec((_spec("a"), _spec("c", "regression")))
    adapted, tok = _model(tiny, spec)
    train = {t: _examples(32, t, 1) for t in "ac"}
    mean_c = sum(ex["label"] for ex in train["c"]) / 32
    seen: list[torch.Tensor] = []

    class AtStart(TrainerCallback):  # the biases the first step sees
        def on_train_begin(self, args, state, control, **kwargs):
            seen.extend(layer.bias.detach().clone() for layer in adapted.pooled_head.classifiers)

    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, max_length=8, progress="none",
                         regression_bias="mean")
    train_multitask(adapted, tok, spec, train, None, config, callbacks=[AtStart()])
    assert seen[1].item() == pytest.approx(mean_c) and mean_c > 0.5
    assert torch.equal(seen[0], torch.zeros(2))  # the classification head is untouched
    # tasks sharing one regression head start at their pooled mean
    shared = MultiTaskSpec((_spec("c", "regression"), _spec("d", "regression")))
    adapted, _ = _model(tiny, shared, "shared_labels")
    pooled = {"c": train["c"], "d": [{"text": "blue", "label": 0.0}] * 32}
    assert init_regression_biases(adapted, shared, pooled) == {"c+d": pytest.approx(mean_c / 2)}
    assert adapted.pooled_head.classifiers[0].bias.item() == pytest.approx(mean_c / 2)
