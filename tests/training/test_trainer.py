"""The Trainer path: best-checkpoint selection, per-group learning rates, frozen weights, small checkpoints, resume."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertTokenizerFast, TrainerCallback

from adapterkit.data.tasks import TaskSpec
from adapterkit.errors import ConfigError
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import SPECIAL_TOKENS, tiny_model, tiny_tokenizer
from adapterkit.training import (
    CHECKPOINT_INFO_NAME,
    FULL_NAME,
    TRAINABLE_NAME,
    TrainConfig,
    evaluate,
    last_checkpoint,
    train,
)

POS = ["good", "great", "fine", "lovely"]
NEG = ["bad", "awful", "poor", "dull"]
FILL = ["the", "movie", "was", "a", "plot", "very", "film", "story"]
SPEC = TaskSpec("synthetic", "classification", ("text",), "label", ("0", "1"), "accuracy", {"train": "unused"})
WORDS = [*POS, *NEG, *FILL]


def tiny_adapted(seed: int = 0, adapter: bool = True, adapter_lr: float | None = 5e-2) -> AdaptedModel:
    adapted = AdaptedModel(tiny_model("bert", seed=seed, vocab_size=len(SPECIAL_TOKENS) + len(WORDS)))
    if adapter:
        adapted.add_adapter("a", PfeifferConfig(reduction_factor=4, learning_rate=adapter_lr))
    return adapted


def examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POS if label else NEG)
        out.append({"text": f"the {rng.choice(FILL)} was {word} {rng.choice(FILL)}", "text_pair": None, "label": label})
    return out


def config(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), epochs=2, batch_size=8, learning_rate=1e-2, logging_steps=1, progress="none",
                save_total_limit=None)
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def tok(tmp_path: Path) -> BertTokenizerFast:
    return tiny_tokenizer(tmp_path, WORDS)


def test_config_validation():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="resume"):
        TrainConfig(resume="sometimes")
    with pytest.raises(ConfigError, match="warmup_ratio"):
        TrainConfig(warmup_ratio=1.5)
    assert "learning_rate" in TrainConfig.help()


def test_train_selects_best_checkpoint_and_freezes_backbone(tmp_path: Path, tok, monkeypatch):
    import adapterkit.metrics

    adapted = tiny_adapted()
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    scores = iter([0.9, 0.1])  # epoch 1 is best; epoch 2's weights must not be the final ones
    real_compute = adapterkit.metrics.compute_metrics

    def fake_compute(spec, preds, labels):
        return {**real_compute(spec, preds, labels), "score": next(scores)}

    monkeypatch.setattr(adapterkit.metrics, "compute_metrics", fake_compute)
    result = train(adapted, tok, SPEC, examples(24, 0), examples(16, 1), config(tmp_path / "run"))
    assert [h["score"] for h in result.history] == [0.9, 0.1]
    assert result.best_epoch == 1.0 and result.best_step == 3
    assert result.metrics["score"] == 0.9
    assert result.trainable_parameters == sum(before[n].numel() for n in trainable)
    assert result.best_checkpoint and result.best_checkpoint.endswith("checkpoint-3")
    # The best (epoch 1) weights are loaded at the end.
    best = load_file(str(Path(result.best_checkpoint) / TRAINABLE_NAME))
    params = dict(adapted.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in best.items())
    last = load_file(str(tmp_path / "run" / "checkpoint-6" / TRAINABLE_NAME))
    assert any(not torch.equal(params[k], v) for k, v in last.items())
    # Only trainable tensors changed; frozen ones are bit-identical.
    for n, p in adapted.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), n
    assert any(not torch.equal(params[n], before[n]) for n in trainable if ".adapters." in n)


def test_checkpoints_hold_only_adapter_and_head(tmp_path: Path, tok):
    adapted = tiny_adapted()
    train(adapted, tok, SPEC, examples(16, 0), examples(8, 1), config(tmp_path / "run", epochs=1))
    ckpt = Path(last_checkpoint(tmp_path / "run"))
    tensors = load_file(str(ckpt / TRAINABLE_NAME))
    head = set(adapted.head_parameter_names())
    assert tensors and all(".adapters.a." in k or k.removeprefix("model.") in head for k in tensors)
    assert any(".adapters.a." in k for k in tensors) and any(k.removeprefix("model.") in head for k in tensors)
    assert not (ckpt / FULL_NAME).exists()
    assert (ckpt / CHECKPOINT_INFO_NAME).is_file() and (ckpt / "optimizer.pt").is_file()
    assert not list(ckpt.glob("*.bin"))


def test_full_mode_saves_whole_model(tmp_path: Path, tok):
    adapted = tiny_adapted(adapter=False)
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    result = train(adapted, tok, SPEC, examples(16, 0), None, config(tmp_path / "run", epochs=1, train_mode="full",
                                                                       learning_rate=1e-3))
    assert result.trainable_parameters == sum(p.numel() for p in before.values())
    assert result.metrics == {} and result.history == []
    ckpt = Path(last_checkpoint(tmp_path / "run"))
    assert (ckpt / FULL_NAME).is_file() and not (ckpt / TRAINABLE_NAME).exists()
    embed = "model.bert.embeddings.word_embeddings.weight"
    assert not torch.equal(dict(adapted.named_parameters())[embed], before[embed])


def test_per_group_learning_rates(tmp_path: Path, tok):
    adapted = tiny_adapted(adapter_lr=5e-2)
    seen: list[list[tuple[str, float, float]]] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            seen.append([(g["name"], g["lr"], g.get("initial_lr")) for g in optimizer.param_groups])

    train(adapted, tok, SPEC, examples(16, 0), None, config(tmp_path / "run", epochs=1, learning_rate=1e-3),
          callbacks=[Record()])
    groups = {name: init for name, _, init in seen[0]}
    assert groups == {"a@0.05": 5e-2, "base": 1e-3}
    for step in seen:  # the schedule scales every group by the same factor
        lrs = {name: lr for name, lr, _ in step}
        assert lrs["a@0.05"] == pytest.approx(50 * lrs["base"], rel=1e-6)


def test_head_learning_rate_gets_its_own_group(tmp_path: Path, tok):
    adapted = tiny_adapted()
    seen: list[dict[str, tuple[float, int]]] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            seen.append({g["name"]: (g["initial_lr"], len(g["params"])) for g in optimizer.param_groups})

    train(adapted, tok, SPEC, examples(16, 0), None,
          config(tmp_path / "run", epochs=1, learning_rate=3e-4, head_learning_rate=3e-2), callbacks=[Record()])
    head = [p for p in adapted.head_parameters().values() if p.requires_grad]
    assert seen[0]["head@0.03"] == (3e-2, len(head)) and "base" not in seen[0]
    with pytest.raises(ConfigError, match="head_learning_rate"):
        config(tmp_path / "bad", head_learning_rate=0.0)


def test_extra_loss_hook_is_added(tmp_path: Path, tok):
    adapted = tiny_adapted()
    calls = []

    def extra(outputs, batch):
        calls.append(set(batch))
        return 0.0 * outputs.logits.sum() + 1.0

    result = train(adapted, tok, SPEC, examples(16, 0), None, config(tmp_path / "run", epochs=1), extra_loss=extra)
    assert len(calls) == 2 and "labels" in calls[0]
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses and all(v > 1.0 for v in losses)


class Killed(Exception):
    pass


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise Killed


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, tok):
    data, dev = examples(24, 0), examples(8, 1)
    kw = dict(epochs=2, eval_each_epoch=False, learning_rate=1e-2)

    straight = tiny_adapted(seed=3)
    train(straight, tok, SPEC, data, dev, config(tmp_path / "straight", **kw))

    killed = tiny_adapted(seed=3)
    with pytest.raises(Killed):
        train(killed, tok, SPEC, data, dev, config(tmp_path / "resumed", **kw), callbacks=[KillAfterSave(3)])
    assert last_checkpoint(tmp_path / "resumed").endswith("checkpoint-3")

    resumed = tiny_adapted(seed=3)
    steps = []

    class FirstStep(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            steps.append(state.global_step)

    result = train(resumed, tok, SPEC, data, dev, config(tmp_path / "resumed", resume=True, **kw),
                   callbacks=[FirstStep()])
    assert steps == [3] and result.global_step == 6
    a, b = dict(straight.named_parameters()), dict(resumed.named_parameters())
    for name, p in a.items():
        assert torch.allclose(p, b[name], atol=1e-6, rtol=0), name


def test_resume_auto_and_missing(tmp_path: Path, tok):
    adapted = tiny_adapted()
    with pytest.raises(ConfigError, match="resume"):
        train(adapted, tok, SPEC, examples(8, 0), None, config(tmp_path / "empty", resume=True, epochs=1))
    result = train(adapted, tok, SPEC, examples(8, 0), None, config(tmp_path / "auto", resume="auto", epochs=1))
    assert result.global_step == 1


def test_evaluate_classification(tok):
    adapted = tiny_adapted()
    metrics = evaluate(adapted, tok, SPEC, examples(10, 2), batch_size=4, max_length=16)
    assert 0.0 <= metrics["score"] <= 1.0 and metrics["score"] == metrics["accuracy"]


def test_last_checkpoint_skips_one_cut_short(tmp_path: Path):
    state = json.dumps({"global_step": 3, "max_steps": 9})
    for step, files in ((3, {TRAINABLE_NAME: "x", "trainer_state.json": state}),
                        (6, {TRAINABLE_NAME: "x"}),  # killed before the state was written
                        (9, {TRAINABLE_NAME: "x", "trainer_state.json": state[:17]})):  # state truncated (full disk)
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        for name, text in files.items():
            (ckpt / name).write_text(text)
    (tmp_path / "checkpoint-x").mkdir()
    said: list[str] = []
    assert last_checkpoint(tmp_path, say=said.append) == str(tmp_path / "checkpoint-3")
    assert said[0].startswith(f"{tmp_path / 'checkpoint-9'}: incomplete checkpoint (trainer_state.json is truncated")
    assert said[1] == f"{tmp_path / 'checkpoint-6'}: incomplete checkpoint (no trainer_state.json); skipping it"
    assert last_checkpoint(tmp_path / "missing") is None


def test_precision_is_validated_and_fp16_needs_cuda(tmp_path: Path, tok):
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a CUDA machine")
    with pytest.raises(ConfigError, match="precision: fp16 needs a CUDA GPU"):
        train(tiny_adapted(), tok, SPEC, examples(8, 0), None, config(tmp_path, precision="fp16", epochs=1))


def test_bf16_trains_under_autocast_with_fp32_weights(tmp_path: Path, tok):
    adapted = tiny_adapted()
    before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    seen: list[torch.dtype] = []
    down = next(m for n, m in adapted.named_modules() if n.endswith("down") and isinstance(m, torch.nn.Linear))
    hook = down.register_forward_hook(lambda mod, args, out: seen.append(out.dtype) if mod.training else None)
    result = train(adapted, tok, SPEC, examples(32, 0), examples(8, 1), config(tmp_path, precision="bf16", epochs=2))
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the adapter ran under bf16 autocast
    after = dict(adapted.named_parameters())
    assert all(after[n].dtype == torch.float32 for n in before)  # master weights stay fp32
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert torch.isfinite(torch.tensor(result.history[-1]["score"]))
    # after training the model runs in the precision its caller asks for (no autocast left behind)
    seen.clear()
    hook = down.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    evaluate(adapted, tok, SPEC, examples(4, 2), batch_size=4, max_length=16)
    evaluate(adapted, tok, SPEC, examples(4, 2), batch_size=4, max_length=16, precision="bf16")
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]


def test_bf16_evaluation_matches_fp32_closely(tok):
    from adapterkit.training import autocast, encode, predict_logits

    adapted = tiny_adapted()
    dataset = encode(tok, SPEC, examples(12, 3), 16)
    (fp32,) = predict_logits(adapted, tok, dataset, 4)
    (bf16,) = predict_logits(adapted, tok, dataset, 4, precision="bf16")
    assert bf16.dtype == fp32.dtype and bf16.shape == fp32.shape
    assert abs(bf16 - fp32).max() < 0.05 and not (bf16 == fp32).all()  # autocast really ran, and stayed close
    metrics = evaluate(adapted, tok, SPEC, examples(12, 3), batch_size=4, max_length=16, precision="bf16")
    assert 0.0 <= metrics["score"] <= 1.0
    with pytest.raises(ConfigError, match="precision"):
        autocast("half", "cpu")


def test_evaluation_every_n_steps_keeps_dev_loss_and_selects_the_best_step(tmp_path: Path, tok, monkeypatch):
    import adapterkit.metrics

    adapted = tiny_adapted()
    scores = iter([0.2, 0.9, 0.1])  # evaluations at steps 2, 4, 6: step 4 is best
    real_compute = adapterkit.metrics.compute_metrics

    def fake_compute(spec, preds, labels):
        return {**real_compute(spec, preds, labels), "score": next(scores)}

    monkeypatch.setattr(adapterkit.metrics, "compute_metrics", fake_compute)
    result = train(adapted, tok, SPEC, examples(24, 0), examples(16, 1), config(tmp_path / "run", eval_steps=2))
    assert [h["step"] for h in result.history] == [2, 4, 6]  # 3 steps per epoch, 2 epochs
    assert [h["score"] for h in result.history] == [0.2, 0.9, 0.1]
    logged = [e["eval_loss"] for e in result.log_history if "eval_loss" in e]
    assert [h["loss"] for h in result.history] == logged and all(v > 0 for v in logged)
    assert result.best_step == 4 and result.best_checkpoint.endswith("checkpoint-4")
    assert result.metrics["score"] == 0.9 and result.metrics["loss"] == logged[1]
    best = load_file(str(Path(result.best_checkpoint) / TRAINABLE_NAME))
    params = dict(adapted.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in best.items())  # the best step's weights are loaded at the end
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_epoch_evaluation_history_has_dev_loss(tmp_path: Path, tok):
    result = train(tiny_adapted(), tok, SPEC, examples(16, 0), examples(8, 1), config(tmp_path / "run"))
    assert [h["epoch"] for h in result.history] == [1.0, 2.0]
    assert all(isinstance(h["loss"], float) and h["loss"] > 0 for h in result.history)


def test_eval_steps_is_validated():
    with pytest.raises(ConfigError, match="eval_steps"):
        TrainConfig(eval_steps=0)
    with pytest.raises(ConfigError, match="save_steps"):
        TrainConfig(eval_steps=4, save_steps=2)
    assert TrainConfig(eval_steps=4, save_steps=2, eval_each_epoch=False).save_steps == 2


def test_the_trainer_overrides_no_private_method_and_edits_no_dict():
    """Public Trainer API only: no overrides of _save, _load_from_checkpoint, _load_best_model or any other
    private method, and no edits of a model's __dict__ (accelerate's autocast wrapper)."""
    import ast

    from adapterkit.training import trainer_class

    private = [n for n in vars(trainer_class()) if n.startswith("_") and not n.startswith("__")]
    assert private == []
    package = Path(__file__).resolve().parents[2] / "src" / "adapterkit" / "training"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "__dict__", f"{path.name}:{node.lineno} touches __dict__"


def test_patience_stops_early_and_is_validated(tmp_path: Path, tok):
    from adapterkit.heads import HeadConfig

    adapted = tiny_adapted()
    adapted.set_head(HeadConfig("mean"))
    # a learning rate too small to change the dev score: no evaluation after the first is better
    result = train(adapted, tok, SPEC, examples(16, 0), examples(8, 1),
                   config(tmp_path, epochs=6, learning_rate=1e-9, patience=2, save_total_limit=1))
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0]  # stopped after 2 evaluations without gain
    assert result.best_epoch == 1.0
    with pytest.raises(ConfigError, match="patience"):
        config(tmp_path, patience=0)
    with pytest.raises(ConfigError, match="patience: needs eval_each_epoch"):
        config(tmp_path, patience=2, eval_each_epoch=False)


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch):
    import warnings

    from adapterkit.training import inference

    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: False)
    with pytest.warns(RuntimeWarning, match="precision: bf16 on this CPU"):
        inference.autocast("bf16", "cpu")
    with pytest.warns(RuntimeWarning, match="use --precision fp32"):
        train(tiny_adapted(), tok, SPEC, examples(8, 0), None, config(tmp_path, precision="bf16", epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        inference.autocast("fp32", "cpu")
        inference.warn_slow_bf16("bf16", "cuda")  # a GPU has its own bf16
        monkeypatch.setattr(inference, "cpu_bf16_native", lambda: True)
        inference.autocast("bf16", "cpu")
    monkeypatch.undo()
    assert inference.cpu_bf16_native() in (True, False, None)  # the real probe answers without raising


def test_regression_bias_starts_at_the_training_labels_mean(tmp_path: Path, tok):
    """``regression_bias: mean`` puts the pooled head's bias at the label mean before the first step (zero keeps
    the initialisation); the model's own head (hf) is refused naming the field."""
    from adapterkit.heads import HeadConfig
    from adapterkit.training import init_regression_bias

    spec = TaskSpec("synthetic-reg", "regression", ("text",), "label", None, "spearman", {"train": "unused"})
    train_ex = [{**ex, "label": 2.0 + 1.5 * ex["label"]} for ex in examples(16, 0)]  # labels 2.0 / 3.5
    seen: dict[str, float] = {}

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            seen.setdefault("bias", float(model.pooled_head.classifier.bias.detach()))

    for mode, expected in (("mean", 2.75), ("zero", 0.0)):
        seen.clear()
        adapted = AdaptedModel(tiny_model("bert", head="regression", vocab_size=len(SPECIAL_TOKENS) + len(WORDS)))
        adapted.set_head(HeadConfig("mean"))
        adapted.add_adapter("a", PfeifferConfig(reduction_factor=4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(adapted, tok, spec, train_ex, None, config(tmp_path / mode, epochs=1, regression_bias=mode),
                  callbacks=[FirstStep()])
        assert seen["bias"] == pytest.approx(expected)
        zero_start = [w for w in caught if "the head starts at 0 but the training labels' mean is 2.75" in str(w.message)]
        assert len(zero_start) == (mode == "zero")  # labels 2.0-3.5 are > 1 std from 0: the trap is named
    own_head = AdaptedModel(tiny_model("bert", head="regression", vocab_size=len(SPECIAL_TOKENS) + len(WORDS)))
    with pytest.raises(ConfigError, match="regression_bias: 'mean' needs a pooled head"):
        init_regression_bias(own_head, train_ex)
    with pytest.raises(ConfigError, match="regression_bias"):
        TrainConfig(output_dir=str(tmp_path), regression_bias="median")


def test_zero_start_warning_only_where_labels_sit_away_from_zero() -> None:
    from adapterkit.training.probing import warn_zero_start

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_zero_start([{"label": v} for v in (-1.0, 0.5, 1.0, -0.2)], pooled=True)  # mean within one std of 0
        warn_zero_start([{"label": 3.0}], pooled=True)  # one label: no spread to compare with
    with pytest.warns(RuntimeWarning, match="consider a pooled head .* with --regression-bias mean"):
        warn_zero_start([{"label": v} for v in (4.0, 5.0, 4.5)], pooled=False)  # the model's own head


def test_close_distributed_destroys_the_process_group_once(tmp_path: Path) -> None:
    from adapterkit.training import close_distributed

    dist = torch.distributed
    assert close_distributed() is False  # nothing to close
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert close_distributed() is True and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert close_distributed() is False
