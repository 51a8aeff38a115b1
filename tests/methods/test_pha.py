"""PHA: generated adapter shapes on every architecture, gradients, materialize, the two losses by hand,
running-mean prototypes, save/load and bad input."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from adapterkit import io as akio
from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.methods.bottleneck import BottleneckConfig
from adapterkit.methods.pha import (
    NoPositivePairWarning,
    PHAConfig,
    RetrieverCollapseWarning,
    add_task,
    auxiliary_losses,
    generated_weights,
    instance_embeddings,
    instance_loss,
    materialize,
    pha_module,
    prototype_loss,
    prototype_only_parameters,
)
from adapterkit.model import AdaptedModel
from adapterkit.testing import TINY_ARCHITECTURES, tiny_batch, tiny_model

TASKS = ("sst2", "mrpc", "rte")
ARCHS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "t5", "llama"]


def model_with_pha(model_type: str = "bert", **fields: object) -> AdaptedModel:
    model = AdaptedModel(tiny_model(model_type, seed=0))
    model.add_adapter("pha", PHAConfig(**{"tasks": TASKS, **fields}))
    return model


def batch(task_ids: list[int], seed: int = 1) -> dict[str, torch.Tensor]:
    out = tiny_batch(len(task_ids), seed=seed, eos_token_id=1, num_labels=2, lengths=[8, 6, 7, 5, 8, 6][: len(task_ids)])
    out["task_ids"] = torch.tensor(task_ids)
    return out


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def test_arch_list_covers_the_tiny_models() -> None:
    assert set(ARCHS) <= set(TINY_ARCHITECTURES)


@pytest.mark.parametrize("model_type", ARCHS)
def test_generated_weight_shapes(model_type: str) -> None:
    model = model_with_pha(model_type)
    hidden = model.build_context().hidden_size
    n = len(model.layers)
    weights = generated_weights(model, "pha", "mrpc")
    if model_type == "t5":  # encoder adapters are learned and shared, decoder adapters generated
        encoder = {layer.index for layer in model.layers if layer.group is model.spec.groups[0]}
        assert set(weights) == {(i, "ffn_block") for i in range(n) if i not in encoder}
        shared = model.adapter_state_dict("pha")
        assert {f"layers.{i}.ffn_block.bottleneck.down.weight" for i in encoder} <= set(shared)
    else:
        assert set(weights) == {(i, "ffn_block") for i in range(n)}
    for w in weights.values():
        assert w["down.weight"].shape == (64, hidden) and w["down.bias"].shape == (64,)
        assert w["up.weight"].shape == (hidden, 64) and w["up.bias"].shape == (hidden,)
    module = pha_module(model, "pha")
    assert module.trunk[0].in_features == 128 and module.trunk[0].out_features == 128
    assert module.trunk[2].out_features == 64 and isinstance(module.trunk[3], nn.LayerNorm)
    assert module.retriever[0].in_features == hidden and module.retriever[2].out_features == 64
    assert module.prototypes.weight.shape == (3, 64)


def test_t5_generated_encoder_option_and_placements() -> None:
    model = model_with_pha("t5", encoder_adapter="generated")
    assert set(generated_weights(model, "pha", 0)) == {(i, "ffn_block") for i in range(len(model.layers))}
    houlsby = model_with_pha("bert", placement="houlsby", bottleneck_size=8)
    weights = generated_weights(houlsby, "pha", 0)
    assert set(weights) == {(i, s) for i in range(len(houlsby.layers)) for s in ("attn_output", "ffn_output")}
    assert pha_module(houlsby, "pha").layer_embedding.weight.shape == (2 * len(houlsby.layers), 64)


def test_hyperfanin_init_bounds() -> None:
    module = pha_module(model_with_pha(), "pha")
    hidden, d = module.hidden, 64
    assert module.weight_down.weight.abs().max() <= 1e-3 * math.sqrt(3 / (d * hidden))
    assert module.weight_up.weight.abs().max() <= 1e-3 * math.sqrt(3 / (d * 64))
    assert module.bias_up.weight.abs().max() <= 1e-3 * math.sqrt(3 / d)
    assert module.weight_up.weight.abs().max() > 0.5e-3 * math.sqrt(3 / (d * 64))  # uniform over the range
    for head in (module.weight_down, module.weight_up, module.bias_down, module.bias_up):
        assert torch.count_nonzero(head.bias) == 0
    plain = pha_module(model_with_pha(init_scale=1.0), "pha")  # init_scale replaces the authors' 1e-3
    assert 0.5 * math.sqrt(3 / (d * 64)) < plain.weight_up.weight.abs().max() <= math.sqrt(3 / (d * 64))
    with pytest.raises(ConfigError, match="init_scale"):
        PHAConfig(tasks=("a",), init_scale=0.0)


def test_gradients_reach_hypernetwork_retriever_prototypes_and_not_the_backbone() -> None:
    model = model_with_pha()
    model.train()
    out = model(**batch([0, 0, 1, 1]))
    aux = auxiliary_losses(out)
    assert set(aux) == {"pha.instance", "pha.prototype"} and all(v > 0 for v in aux.values())
    out.loss.backward()
    params = model.adapter_parameters("pha")
    for key in ("shared.trunk.0.weight", "shared.trunk.2.weight", "shared.trunk.3.weight", "shared.weight_down.weight",
                "shared.bias_down.weight", "shared.weight_up.weight", "shared.bias_up.weight",
                "shared.layer_embedding.weight", "shared.retriever.0.weight", "shared.retriever.2.weight",
                "shared.prototypes.weight"):
        assert params[key].grad is not None and params[key].grad.abs().sum() > 0, key
    protos = params["shared.prototypes.weight"].grad
    assert protos[2].abs().sum() > 0  # task 2 is absent from the batch: only the prototype loss reaches it
    head = set(model.head_parameter_names())
    adapter_ids = {id(p) for p in params.values()}
    leaked = [n for n, p in model.model.named_parameters() if p.grad is not None and n not in head
              and id(p) not in adapter_ids]
    assert leaked == []
    assert not any(p.requires_grad for n, p in model.model.named_parameters()
                   if n not in head and id(p) not in adapter_ids)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_retriever_keeps_the_contrastive_losses_out_of_the_adapters(detach: bool) -> None:
    model = model_with_pha(detach_retriever=detach, init_scale=0.1)
    model.train()
    sum(auxiliary_losses(model(**batch([0, 0, 1, 1]))).values()).backward()
    params = model.adapter_parameters("pha")
    for key in ("shared.retriever.0.weight", "shared.prototypes.weight"):  # trained by the losses either way
        assert params[key].grad is not None and params[key].grad.abs().sum() > 0, key
    reached = [key for key in ("shared.weight_down.weight", "shared.weight_up.weight", "shared.trunk.0.weight")
               if params[key].grad is not None and params[key].grad.abs().sum() > 0]
    assert reached == ([] if detach else ["shared.weight_down.weight", "shared.weight_up.weight",
                                          "shared.trunk.0.weight"])


@pytest.mark.parametrize("denominator", ["negatives", "all"])
def test_loss_is_task_loss_plus_weighted_auxiliary_losses(denominator: str) -> None:
    model = model_with_pha(instance_loss_weight=0.5, prototype_loss_weight=0.25, prototype_denominator=denominator)
    inputs = batch([0, 0, 1, 2])
    model.backbone_dropout = False  # the backbone runs as in evaluation, so z is the same in both passes
    model.train()
    out = model(**inputs)
    aux = auxiliary_losses(out)
    z = instance_embeddings(model, "pha", inputs)
    ids = inputs["task_ids"]
    expected_ins, _ = instance_loss(z, ids, 0.1)
    table = pha_module(model, "pha").prototypes.weight
    expected_pro = prototype_loss(z, table, ids, 0.1, denominator)
    assert torch.allclose(aux["pha.instance"], 0.5 * expected_ins, atol=1e-5)
    assert torch.allclose(aux["pha.prototype"], 0.25 * expected_pro, atol=1e-5)
    task = out.loss - sum(aux.values())
    assert task > 0 and torch.isfinite(out.loss)


def test_materialize_reproduces_the_generated_adapter_exactly() -> None:
    for model_type in ("bert", "t5", "distilbert"):
        model = model_with_pha(model_type)
        with torch.no_grad():  # move the hypernetwork away from its near-zero init, so the adapter matters
            for p in pha_module(model, "pha").parameters():
                p.add_(torch.randn_like(p) * 0.5)
        inputs = batch([1, 1, 1])
        before = logits(model, inputs)
        name = materialize(model, "pha", "mrpc")
        assert name == "pha-mrpc" and isinstance(model.adapter_configs[name], BottleneckConfig)
        model.set_active_adapters(name)
        after = logits(model, {k: v for k, v in inputs.items() if k != "task_ids"})
        assert torch.equal(before, after), model_type
        model.deactivate_adapters()
        assert not torch.allclose(logits(model, inputs), before)  # the adapter changes the outputs


def test_mixed_task_batch_uses_each_examples_own_weights() -> None:
    model = model_with_pha()
    with torch.no_grad():
        for p in pha_module(model, "pha").parameters():
            p.add_(torch.randn_like(p) * 0.5)
    inputs = batch([0, 2, 1, 0])
    mixed = logits(model, inputs)
    for task in range(3):
        alone = logits(model, {**inputs, "task_ids": torch.full((4,), task)})
        rows = inputs["task_ids"] == task
        assert torch.allclose(mixed[rows], alone[rows], atol=1e-5)
    one = logits(model, {**inputs, "task_ids": torch.zeros(4, dtype=torch.long)})
    assert not torch.allclose(one, mixed)


def test_prototype_vectors_from_the_batch_replace_the_task_prototypes() -> None:
    model = model_with_pha()
    with torch.no_grad():
        for p in pha_module(model, "pha").parameters():
            p.add_(torch.randn_like(p) * 0.5)
    inputs = batch([2, 2])
    table = pha_module(model, "pha").prototypes.weight.detach()
    via_ids = logits(model, inputs)
    given = {k: v for k, v in inputs.items() if k != "task_ids"}
    assert torch.allclose(logits(model, {**given, "prototypes": table[2]}), via_ids)
    assert torch.allclose(logits(model, {**given, "prototypes": table[[2, 2]]}), via_ids)
    with pytest.raises(ConfigError, match="prototypes"):
        logits(model, {**given, "prototypes": torch.zeros(2, 32)})


def test_instance_loss_equals_a_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    ids = torch.tensor([0, 0, 1, 2])  # anchors 0 and 1 have a positive; 2 and 3 have none
    t = 0.5
    zn = [[a / math.hypot(*r) for a in r] for r in z.tolist()]
    s = [[sum(a * b for a, b in zip(zn[i], zn[j], strict=True)) / t for j in range(4)] for i in range(4)]

    def term(i: int, p: int) -> float:
        return -(s[i][p] - math.log(sum(math.exp(s[i][a]) for a in range(4) if a != i)))

    expected = (term(0, 1) + term(1, 0)) / 2
    loss, anchors = instance_loss(z, ids, t)
    assert anchors == 2 and loss.item() == pytest.approx(expected, rel=1e-5)
    # two positives for one anchor: averaged over the positives
    ids3 = torch.tensor([0, 0, 0, 1])
    expected3 = ((term(0, 1) + term(0, 2)) / 2 + (term(1, 0) + term(1, 2)) / 2 + (term(2, 0) + term(2, 1)) / 2) / 3
    assert instance_loss(z, ids3, t)[0].item() == pytest.approx(expected3, rel=1e-5)
    none, count = instance_loss(z, torch.arange(4), t)
    assert count == 0 and none.item() == 0.0 and none.requires_grad is False


def test_prototype_loss_equals_a_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    protos = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    ids = torch.tensor([0, 1])
    t = 0.1

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))

    total = {"negatives": 0.0, "all": 0.0}
    for i, target in enumerate(ids.tolist()):
        s = [cos(z[i].tolist(), p) / t for p in protos.tolist()]
        total["negatives"] += -(s[target] - math.log(sum(math.exp(v) for k, v in enumerate(s) if k != target)))
        total["all"] += -(s[target] - math.log(sum(math.exp(v) for v in s)))
    assert prototype_loss(z, protos, ids, t).item() == pytest.approx(total["negatives"] / 2, rel=1e-5)
    assert prototype_loss(z, protos, ids, t, "all").item() == pytest.approx(total["all"] / 2, rel=1e-5)
    # instances exactly on their prototypes: the authors' form is far below 0, the standard form just above it
    on = protos[:2] * 5
    assert prototype_loss(on, protos, ids, t).item() < -2 < 0 < prototype_loss(on, protos, ids, t, "all").item() < 0.1
    with pytest.raises(ConfigError, match="prototype_denominator"):
        prototype_loss(z, protos, ids, t, "positive")
    with pytest.raises(ConfigError, match="two tasks"):
        prototype_loss(z, protos[:1], torch.tensor([0, 0]), t)


def test_warns_when_a_training_batch_has_no_positive_pair() -> None:
    model = model_with_pha()
    model.train()
    with pytest.warns(NoPositivePairWarning, match="no two examples of the same task"):
        model(**batch([0, 1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoPositivePairWarning)
        model(**batch([0, 1, 1]))
        model.eval()
        model(**batch([0, 1, 2]))  # evaluation computes no loss, so no warning


@pytest.mark.parametrize("model_type, fields, warns", [
    ("bert", {}, True),  # the encoder's retriever trains the adapters the heads read
    ("llama", {}, True),
    ("bert", {"detach_retriever": True}, False),
    ("bert", {"instance_loss_weight": 0.0, "prototype_loss_weight": 0.0}, False),
    ("t5", {}, False),  # the authors' layout: the retriever reads an encoder with shared adapters
    ("t5", {"encoder_adapter": "generated"}, True),
])
def test_warns_once_when_the_contrastive_losses_can_collapse_the_heads_input(model_type: str, fields: dict,
                                                                             warns: bool) -> None:
    model = model_with_pha(model_type, **fields)
    inputs = {k: v for k, v in batch([0, 0, 1, 1]).items() if k != "labels"}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.eval()
        model(**inputs)  # inference never warns
        model.train()
        model(**inputs)
        model(**inputs)
    collapse = [w for w in seen if issubclass(w.category, RetrieverCollapseWarning)]
    assert len(collapse) == (1 if warns else 0)
    if warns:
        assert "detach_retriever: true" in str(collapse[0].message)


def test_running_mean_prototypes_follow_the_instances() -> None:
    model = model_with_pha(prototypes="running_mean")
    module = pha_module(model, "pha")
    assert "shared.prototype_mean" in model.adapter_state_dict("pha")
    assert not any("prototypes.weight" in k for k in model.adapter_parameters("pha"))
    first, second = batch([0, 0, 1, 1], seed=1), batch([0, 0, 0, 1], seed=2)
    z1 = instance_embeddings(model, "pha", first)
    model.backbone_dropout = False  # the backbone runs as in evaluation: the same z as above
    model.train()
    model(**first)
    assert torch.allclose(module.prototype_mean[0], z1[:2].mean(0), atol=1e-5)
    assert module.prototype_count.tolist() == [2, 2, 0]
    z2 = instance_embeddings(model, "pha", second)  # with the adapters the updated prototypes generate
    model.train()
    model(**second)
    expected = torch.cat([z1[:2], z2[:3]]).mean(0)
    assert torch.allclose(module.prototype_mean[0], expected, atol=1e-5)
    assert module.prototype_count.tolist() == [5, 3, 0]
    ema = model_with_pha(prototypes="running_mean", prototype_momentum=0.9)
    ema.backbone_dropout = False
    z1 = instance_embeddings(ema, "pha", first)
    ema.train()
    ema(**first)
    z2 = instance_embeddings(ema, "pha", second)
    ema.train()
    ema(**second)
    m = pha_module(ema, "pha").prototype_mean[0]
    assert torch.allclose(m, 0.9 * z1[:2].mean(0) + 0.1 * z2[:3].mean(0), atol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = model_with_pha(prototypes="running_mean")
    model.train()
    model(**batch([0, 0, 1, 1]))
    with torch.no_grad():
        for p in pha_module(model, "pha").parameters():
            p.add_(torch.randn_like(p) * 0.5)
    inputs = batch([2, 0, 1])
    before = logits(model, inputs)
    akio.save_adapter(model, "pha", tmp_path / "pha")
    saved = json.loads((tmp_path / "pha" / "adapter_config.json").read_text())
    assert saved["config"]["method"] == "pha" and saved["config"]["tasks"] == list(TASKS)
    fresh = AdaptedModel(tiny_model("bert", seed=0))
    name = akio.load_adapter(fresh, tmp_path / "pha")
    assert name == "pha" and fresh.adapter_configs["pha"] == model.adapter_configs["pha"]
    assert torch.equal(logits(fresh, inputs), before)
    assert pha_module(fresh, "pha").prototype_count.tolist() == [2, 2, 0]


def test_materialized_adapter_saves_and_loads_as_a_plain_bottleneck(tmp_path: Path) -> None:
    model = model_with_pha()
    with torch.no_grad():
        for p in pha_module(model, "pha").parameters():
            p.add_(torch.randn_like(p) * 0.5)
    inputs = batch([0, 0])
    expected = logits(model, inputs)
    materialize(model, "pha", "sst2", "plain")
    akio.save_adapter(model, "plain", tmp_path / "plain")
    fresh = AdaptedModel(tiny_model("bert", seed=0))
    akio.load_adapter(fresh, tmp_path / "plain")
    assert fresh.adapter_configs["plain"].method == "bottleneck"
    assert fresh.count_parameters()["adapter:plain"] < model.count_parameters()["adapter:pha"]
    assert torch.equal(logits(fresh, {k: v for k, v in inputs.items() if k != "task_ids"}), expected)


def test_unknown_task_ids_and_missing_task_ids() -> None:
    model = model_with_pha()
    with pytest.raises(ConfigError, match=r"task_ids: unknown task ids \[3\].*0=sst2, 1=mrpc, 2=rte"):
        logits(model, batch([0, 3]))
    with pytest.raises(ConfigError, match="task_ids: .*3 tasks"):
        logits(model, {k: v for k, v in batch([0, 1]).items() if k != "task_ids"})
    with pytest.raises(ConfigError, match="integer"):
        logits(model, {**batch([0, 1]), "task_ids": torch.tensor([0.0, 1.0])})
    with pytest.raises(ConfigError, match="task: 'qqp'"):
        materialize(model, "pha", "qqp")
    single = AdaptedModel(tiny_model("bert"))
    single.add_adapter("one", PHAConfig())  # one task: task_ids may be left out
    assert logits(single, tiny_batch(2)).shape == (2, 2)


def test_saved_hypernetwork_with_other_prototype_dim_is_refused(tmp_path: Path) -> None:
    model = model_with_pha(prototype_dim=32)
    akio.save_adapter(model, "pha", tmp_path / "pha")
    path = tmp_path / "pha" / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"]["prototype_dim"] = 64
    path.write_text(json.dumps(meta))
    fresh = AdaptedModel(tiny_model("bert", seed=0))
    with pytest.raises(AdapterLoadError, match=r"adapter\.safetensors: prototype_dim: .*\(3, 32\)"):
        akio.load_adapter(fresh, tmp_path / "pha")
    assert fresh.adapter_configs == {}
    meta["config"]["prototype_dim"] = 32
    meta["config"]["tasks"] = ["a", "b"]
    path.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"adapter\.safetensors: tasks: 2 tasks"):
        akio.load_adapter(fresh, tmp_path / "pha")


def test_loading_onto_another_model_is_refused(tmp_path: Path) -> None:
    model = model_with_pha()
    akio.save_adapter(model, "pha", tmp_path / "pha")
    other = AdaptedModel(tiny_model("bert", hidden_size=48, intermediate_size=96))
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json: base_model\.hidden_size"):
        akio.load_adapter(other, tmp_path / "pha")
    t5 = AdaptedModel(tiny_model("t5"))
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json: base_model\.model_type"):
        akio.load_adapter(t5, tmp_path / "pha")


@pytest.mark.parametrize(("fields", "field"), [
    ({"tasks": ()}, "tasks"), ({"tasks": ("a", "a")}, "tasks"), ({"bottleneck_size": 0}, "bottleneck_size"),
    ({"activation": "rational"}, "activation"), ({"prototypes": "mean"}, "prototypes"),
    ({"prototype_momentum": 1.0}, "prototype_momentum"), ({"temperature": 0.0}, "temperature"),
    ({"instance_loss_weight": -1.0}, "instance_loss_weight"), ({"placement": "prefix"}, "placement"),
    ({"prototype_denominator": "positive"}, "prototype_denominator"),
])
def test_config_validation_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PHAConfig(**fields)


def test_add_task_and_train_only_its_prototype(tmp_path: Path) -> None:
    model = model_with_pha()
    module = pha_module(model, "pha")
    old = module.prototypes.weight.detach().clone()
    index = add_task(model, "pha", "cola", init="rte")
    assert index == 3 and model.adapter_configs["pha"].tasks == (*TASKS, "cola")
    assert torch.equal(module.prototypes.weight[3], old[2])
    with pytest.raises(ConfigError, match="width 5"):
        add_task(model, "pha", "qqp", init=torch.zeros(5))
    params = prototype_only_parameters(model, "pha", ["cola"])
    assert [p.shape for p in params] == [(4, 64)]
    model.train()
    out = model(**batch([3, 3, 0]))
    out.loss.backward()
    grad = module.prototypes.weight.grad
    assert grad[3].abs().sum() > 0 and grad[:3].abs().sum() == 0
    assert all(p.grad is None for k, p in model.adapter_parameters("pha").items() if "prototypes" not in k)
    akio.save_adapter(model, "pha", tmp_path / "pha")
    fresh = AdaptedModel(tiny_model("bert", seed=0))
    akio.load_adapter(fresh, tmp_path / "pha")
    assert fresh.adapter_configs["pha"].tasks == (*TASKS, "cola")


def test_routing_per_example_refuses_a_generated_adapter() -> None:
    model = model_with_pha()
    materialize(model, "pha", "rte", "plain")
    inputs = {k: v for k, v in batch([0, 0]).items() if k not in ("labels", "task_ids")}
    with pytest.raises(ConfigError, match="generated per example"):
        model(**inputs, adapter_names=["pha", "plain"])
    assert model(**inputs, adapter_names=["plain", None]).logits.shape == (2, 2)


def test_trains_through_the_one_trainer_path_with_running_mean_prototypes(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from adapterkit.data.tasks import TaskSpec
    from adapterkit.testing import SPECIAL_TOKENS, tiny_tokenizer
    from adapterkit.training import TRAINABLE_NAME, TrainConfig, last_checkpoint, train

    words = ["good", "bad", "the", "movie", "was"]
    tok = tiny_tokenizer(tmp_path, words)
    spec = TaskSpec("synthetic", "classification", ("text",), "label", ("0", "1"), "accuracy", {"train": "unused"})
    rows = [{"text": f"the movie was {'good' if i % 2 else 'bad'}", "text_pair": None, "label": i % 2} for i in range(16)]
    model = AdaptedModel(tiny_model("bert", vocab_size=len(SPECIAL_TOKENS) + len(words)))
    model.add_adapter("pha", PHAConfig(prototypes="running_mean"))  # one task: the batch needs no task_ids
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, learning_rate=1e-3,
                         logging_steps=1, progress="none", save_total_limit=None)
    result = train(model, tok, spec, rows, rows[:4], config)
    assert result.global_step == 2
    assert pha_module(model, "pha").prototype_count.tolist() == [16.0]
    saved = load_file(str(Path(last_checkpoint(tmp_path / "run")) / TRAINABLE_NAME))
    assert "shared.pha.prototype_mean" in saved and saved["shared.pha.prototype_count"].tolist() == [16.0]
    assert "shared.pha.weight_down.weight" in saved


def test_materialized_adapters_merge_like_ordinary_bottlenecks() -> None:
    from adapterkit.merging import merge_adapters

    model = model_with_pha()
    with torch.no_grad():
        for p in pha_module(model, "pha").parameters():
            p.add_(torch.randn_like(p) * 0.5)
    names = [materialize(model, "pha", task) for task in ("sst2", "rte")]
    states = [model.adapter_state_dict(n) for n in names]
    groups = model.neuron_groups(names[0])
    assert len(groups) == len(model.layers)  # one bottleneck per layer, permutable for OT merging
    for method in ("average", "ot_weights"):
        merged = merge_adapters(method, states, groups=groups) if method != "average" else merge_adapters(method, states)
        model.add_adapter(f"merged-{method}", model.adapter_configs[names[0]], activate=False)
        model.load_adapter_state_dict(f"merged-{method}", merged)
    model.set_active_adapters("merged-average")
    expected = {k: (states[0][k] + states[1][k]) / 2 for k in states[0]}
    assert all(torch.allclose(model.adapter_state_dict("merged-average")[k], v) for k, v in expected.items())
    assert logits(model, {k: v for k, v in batch([0, 0]).items() if k != "task_ids"}).shape == (2, 2)
