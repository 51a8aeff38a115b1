"""AdaptedModel: adapter lifecycle, parameter counts, train modes, optimizer groups, LoRA merging."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit import injection
from adapterkit.errors import ConfigError
from adapterkit.methods.bottleneck import HoulsbyConfig, PfeifferConfig
from adapterkit.methods.lora import LoRAConfig, LoRALinear
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model


@pytest.fixture
def model() -> AdaptedModel:
    return AdaptedModel(tiny_model("bert"))


IDS = tiny_batch()["input_ids"]


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def randomize(model: AdaptedModel, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_add_activate_deactivate_delete(model: AdaptedModel) -> None:
    base = logits(model)
    model.add_adapter("a", PfeifferConfig())
    assert model.active_adapters == ("a",) and list(model.adapter_configs) == ["a"]
    randomize(model, "a", 0)
    adapted = logits(model)
    assert not torch.equal(adapted, base)
    model.deactivate_adapters()
    assert model.active_adapters == ()
    assert torch.equal(logits(model), base)
    model.set_active_adapters("a")
    assert torch.equal(logits(model), adapted)
    with pytest.raises(ConfigError, match="already exists"):
        model.add_adapter("a", PfeifferConfig())
    with pytest.raises(ConfigError, match="no such adapter"):
        model.set_active_adapters("zzz")
    with pytest.raises(ConfigError, match="'.'"):
        model.add_adapter("a.b", PfeifferConfig())
    model.delete_adapter("a")
    assert model.adapter_configs == {} and model.active_adapters == ()
    assert injection.wrappers(model.model) == {}
    assert torch.equal(logits(model), base)
    with pytest.raises(ConfigError, match="no such adapter"):
        model.delete_adapter("a")


def test_add_inactive_keeps_current_activation(model: AdaptedModel) -> None:
    model.add_adapter("a", PfeifferConfig())
    model.add_adapter("b", LoRAConfig(), activate=False)
    assert model.active_adapters == ("a",)
    for wrapper in injection.wrappers(model.model).values():
        assert wrapper.active == ("a",)


def test_adding_an_inactive_adapter_does_not_make_it_trainable(model: AdaptedModel) -> None:
    model.add_adapter("a", PfeifferConfig())
    model.add_adapter("b", LoRAConfig(), activate=False)
    assert not any(p.requires_grad for p in model.adapter_parameters("b").values())
    grouped = {id(p) for g in model.parameter_groups(1e-3) for p in g["params"]}
    assert not grouped & {id(p) for p in model.adapter_parameters("b").values()}


def test_two_named_adapters(model: AdaptedModel) -> None:
    base = logits(model)
    model.add_adapter("a", PfeifferConfig())
    model.add_adapter("b", HoulsbyConfig())
    assert model.active_adapters == ("b",)  # adding activates only the new adapter
    randomize(model, "a", 1)
    randomize(model, "b", 2)
    model.set_active_adapters("a")
    only_a = logits(model)
    model.set_active_adapters("b")
    only_b = logits(model)
    model.set_active_adapters("a", "b")
    both = logits(model)
    assert len({tuple(t.flatten().tolist()) for t in (base, only_a, only_b, both)}) == 4
    model.delete_adapter("b")
    assert model.active_adapters == ("a",)
    assert torch.equal(logits(model), only_a)
    # keys are architecture independent and disjoint per adapter
    assert all(k.startswith("layers.") for k in model.adapter_state_dict("a"))


def test_count_parameters(model: AdaptedModel) -> None:
    total_base = sum(p.numel() for p in model.model.parameters())
    head = model.count_parameters()["head"]
    assert head == 32 * 32 + 32 + 32 * 2 + 2  # pooler + classifier
    model.add_adapter("pf", PfeifferConfig(bottleneck_size=4))
    model.add_adapter("lo", LoRAConfig(r=4))  # activating "lo" deactivates (and freezes) "pf"
    counts = model.count_parameters()
    lora = 2 * 2 * (4 * 32 + 32 * 4)  # 2 layers x (query, value) x (A + B)
    pfeiffer = 2 * (32 * 4 + 4 + 4 * 32 + 32)
    assert counts["adapter:lo"] == lora
    assert counts["adapter:pf"] == pfeiffer
    assert counts["total"] == total_base + lora + pfeiffer
    assert counts["trainable"] == head + lora  # only the active adapter and the head train
    assert counts["head"] == head


def test_set_train_mode(model: AdaptedModel) -> None:
    model.add_adapter("a", PfeifferConfig())
    adapter_ids = {id(p) for p in model.adapter_parameters("a").values()}
    head_names = set(model.head_parameter_names())
    assert head_names == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"
    }

    def trainable() -> tuple[set[str], bool]:
        names = {n for n, p in model.model.named_parameters() if p.requires_grad and id(p) not in adapter_ids}
        adapters = all(p.requires_grad for p in model.adapter_parameters("a").values())
        return names, adapters

    assert trainable() == (head_names, True)
    model.set_train_mode("head")
    assert trainable() == (head_names, False)
    model.set_train_mode("full")
    names, adapters = trainable()
    assert adapters and names == {n for n, p in model.model.named_parameters() if id(p) not in adapter_ids}
    model.set_train_mode("adapters")
    assert trainable() == (head_names, True)
    model.set_train_mode("head")
    model.set_active_adapters("a")  # re-activation keeps the chosen mode
    assert model.train_mode == "head" and trainable() == (head_names, False)
    with pytest.raises(ConfigError, match="train mode"):
        model.set_train_mode("everything")  # type: ignore[arg-type]


def test_parameter_groups_learning_rates(model: AdaptedModel) -> None:
    model.add_adapter("fast", PfeifferConfig(learning_rate=1e-2))
    model.add_adapter("plain", LoRAConfig(), activate=False)
    model.set_active_adapters("fast", "plain")
    groups = model.parameter_groups(1e-4, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"fast@0.01", "plain@0.0001", "base"}
    assert by_name["fast@0.01"]["lr"] == 1e-2
    assert by_name["plain@0.0001"]["lr"] == 1e-4
    assert {id(p) for p in by_name["fast@0.01"]["params"]} == {id(p) for p in model.adapter_parameters("fast").values()}
    assert {id(p) for p in by_name["base"]["params"]} == {
        id(p) for n, p in model.model.named_parameters() if n in model.head_parameter_names()
    }
    assert all(g["weight_decay"] == 0.01 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    torch.optim.AdamW(groups)  # the groups are valid optimizer input
    with_head = {g["name"]: g for g in model.parameter_groups(1e-4, head_lr=3e-3)}
    assert set(with_head) == {"fast@0.01", "plain@0.0001", "head@0.003"}
    assert {id(p) for p in with_head["head@0.003"]["params"]} == {id(p) for p in by_name["base"]["params"]}
    model.set_train_mode("full")
    groups = model.parameter_groups(1e-4)
    assert [g["name"] for g in groups] == ["base"]
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_lora_merge_unmerge(model: AdaptedModel) -> None:
    model.add_adapter("lo", LoRAConfig(r=4, targets=("query", "value", "ffn_out")))
    randomize(model, "lo", 3)
    query = model.model.bert.encoder.layer[0].attention.self.query
    original = query.base_layer.weight.detach().clone()
    unmerged = logits(model)
    model.merge_adapter("lo")
    assert all(m.merged for _, m in model.adapter_modules("lo") if isinstance(m, LoRALinear))
    assert not torch.equal(query.base_layer.weight, original)
    merged = logits(model)
    assert (merged - unmerged).abs().max() < 1e-5
    model.merge_adapter("lo")  # merging twice is a no-op
    assert (logits(model) - unmerged).abs().max() < 1e-5
    model.unmerge_adapter("lo")  # subtracts the delta: the original up to float rounding
    assert torch.allclose(query.base_layer.weight, original, atol=1e-6)
    assert torch.allclose(logits(model), unmerged, atol=1e-5)
    model.unmerge_adapter("lo")  # and so is unmerging twice
    assert torch.allclose(query.base_layer.weight, original, atol=1e-6)
    before = query.base_layer.weight.detach().clone()
    model.merge_adapter("lo", exact=True)  # exact mode keeps a copy: unmerge restores it bit for bit
    model.unmerge_adapter("lo")
    assert torch.equal(query.base_layer.weight, before)


def test_merging_a_bottleneck_adapter_fails(model: AdaptedModel) -> None:
    model.add_adapter("pf", PfeifferConfig())
    with pytest.raises(ConfigError, match="cannot be merged"):
        model.merge_adapter("pf")


def test_forward_and_config_pass_through(model: AdaptedModel) -> None:
    assert model.config is model.model.config
    info = model.base_model_info()
    assert info["model_type"] == "bert" and info["hidden_size"] == 32 and info["num_layers"] == 2
    out = model(input_ids=IDS, labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)


@pytest.mark.parametrize("method", [PfeifferConfig(dropout=0.5), LoRAConfig(dropout=0.5)])
def test_backbone_dropout_off_keeps_backbone_in_eval_but_adapters_and_head_train(method) -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("a", method)
    model.backbone_dropout = False
    model.train()
    for name, module in model.model.named_modules():
        in_adapter = ".adapters." in f".{name}."
        in_backbone = name.startswith("bert")
        expected = in_adapter or not in_backbone
        assert module.training is expected, name
    # the frozen path is deterministic; only the adapter's own dropout varies between calls
    model.set_active_adapters()
    out1, out2 = model(input_ids=IDS).logits, model(input_ids=IDS).logits
    assert not torch.equal(out1, out2)  # the head's own dropout still runs
    model.model.dropout.eval()  # the head's dropout off too: now the whole forward is deterministic
    assert torch.equal(model(input_ids=IDS).logits, model(input_ids=IDS).logits)
    # back to the default: dropout everywhere in training
    model.backbone_dropout = True
    model.train()
    assert all(m.training for m in model.model.modules())


def test_a_failing_build_leaves_the_model_untouched() -> None:
    from adapterkit.methods.base import Attachment
    from adapterkit.methods.bottleneck import Bottleneck, SequentialAdapter

    class HalfBad(PfeifferConfig):
        def build(self, ctx):
            good = super().build(ctx)
            bad = Attachment(1, "no_such_site", SequentialAdapter(Bottleneck(32, 4, "relu", "identity", 0.0, 1.0)))
            return [*good, bad]

    model = AdaptedModel(tiny_model("bert"))
    with pytest.raises(ConfigError, match="no_such_site"):
        model.add_adapter("x", HalfBad())
    assert injection.wrappers(model.model) == {} and model.adapter_configs == {}
    model.add_adapter("x", PfeifferConfig())  # the name is free again


# -- dtype and device placement ---------------------------------------------------------------------
def _configs(model: AdaptedModel) -> list[tuple[str, object]]:
    """(name, config) of every registered method that applies to ``model`` (fusion over two pfeiffers)."""
    from adapterkit.methods.fusion import FusionConfig
    from adapterkit.registry import METHODS

    out: list[tuple[str, object]] = []
    for method in sorted(METHODS):
        if method in ("prefix", "unipelt", "unipelt_prompt") and not model.spec.prefix_supported:  # UniPELT has a prefix
            continue
        if method == "fusion":
            out += [("f1", PfeifferConfig(init="near_identity")), ("f2", PfeifferConfig(init="near_identity")),
                    ("fusion", FusionConfig(adapters=("f1", "f2")))]
        else:
            config = METHODS[method]()
            if hasattr(config, "init") and method != "prompt":
                config = METHODS[method](init="near_identity")
            out.append((method, config))
    if model.spec.model_type == "bert":
        out.append(("original_ln", HoulsbyConfig(original_ln=True, init="near_identity")))
    return out


def _batch(model_type: str) -> dict[str, torch.Tensor]:
    from adapterkit.testing import LLAMA_STYLE_TYPES

    eos = 2 if model_type in LLAMA_STYLE_TYPES else 1 if model_type == "t5" else None
    return tiny_batch(eos_token_id=eos, num_labels=2)


@pytest.mark.parametrize("model_type", sorted(__import__("adapterkit.testing").testing.TINY_ARCHITECTURES))
def test_every_method_runs_on_a_bf16_model_of_every_architecture(model_type: str) -> None:
    """A model loaded in bf16 (the normal way to load a Llama) gets bf16 adapters: forward and backward run."""
    batch = _batch(model_type)
    for name, config in _configs(AdaptedModel(tiny_model(model_type))):
        model = AdaptedModel(tiny_model(model_type).to(torch.bfloat16))
        if name == "fusion":
            model.add_adapter("f1", PfeifferConfig(init="near_identity"))
            model.add_adapter("f2", PfeifferConfig(init="near_identity"))
        elif name in ("f1", "f2"):
            continue
        model.add_adapter(name, config)
        params = model.adapter_parameters(name)
        assert params and all(p.dtype == torch.bfloat16 for p in params.values()), (model_type, name)
        model.train()
        out = model(**batch)
        assert torch.isfinite(out.logits.float()).all(), (model_type, name)
        out.loss.backward()
        grads = [p.grad for p in params.values() if p.grad is not None]  # (AdapterDrop may skip some layers)
        assert grads and all(torch.isfinite(g.float()).all() for g in grads), (model_type, name)


@pytest.mark.parametrize("model_type", ["bert", "llama", "t5"])
def test_adapters_follow_the_model_to_a_device_before_and_after_add_adapter(model_type: str) -> None:
    """Placement on the wrapped layer's device: a model moved to "meta" before add_adapter gets meta adapters,
    and moving after moves them too (no GPU needed); a dtype change after add_adapter still runs."""
    for name, config in _configs(AdaptedModel(tiny_model(model_type))):
        if name in ("fusion", "f1", "f2"):
            continue
        before = AdaptedModel(tiny_model(model_type).to("meta"))
        before.add_adapter(name, config)
        assert all(p.device.type == "meta" for p in before.parameters()), (model_type, name)
        after = AdaptedModel(tiny_model(model_type))
        after.add_adapter(name, config)
        after.to("meta")
        assert all(p.device.type == "meta" for p in after.parameters()), (model_type, name)
    model = AdaptedModel(tiny_model(model_type))
    model.add_adapter("lo", LoRAConfig())
    model.add_adapter("pf", PfeifferConfig(init="near_identity"))
    model.set_active_adapters("lo", "pf")
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.no_grad():
        assert model(**_batch(model_type)).logits.dtype == torch.float64


@pytest.fixture
def no_download(monkeypatch):
    """Make any attempt to load from the Hub fail loudly: errors must come before from_pretrained."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained called with {args}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


def test_a_missing_local_model_path_or_a_number_is_refused_clearly(tmp_path, no_download):
    from adapterkit.model import load_base_model

    for missing in (str(tmp_path / "runs" / "model"), "./no-such-model", "~/no-such-model-dir", "a/b/c"):
        with pytest.raises(ConfigError, match=f"model: {missing}: no such directory"):
            load_base_model(missing)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a model directory"):
        load_base_model(str(tmp_path / "file.txt"))
    for number in ("5", 5, 3.5, "1e-3"):
        with pytest.raises(ConfigError, match="is a number, not a model|is not a model"):
            load_base_model(number)


def test_an_unknown_hub_id_fails_at_once_offline_and_when_the_hub_is_unreachable(monkeypatch, no_download):
    from huggingface_hub import constants

    from adapterkit import model as model_module

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="'someone/no-such-model' is neither a local directory nor in the Hugging "
                       r"Face cache .*HF_HUB_OFFLINE"):
        model_module.load_base_model("someone/no-such-model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_module, "_hub_unreachable", lambda timeout=3.0: "huggingface.co cannot be reached: down")
    with pytest.raises(ConfigError, match=r"'someone/no-such-model' is neither .* cannot be reached to download it"):
        model_module.load_base_model("someone/no-such-model")
    with pytest.raises(ConfigError, match="not a valid Hub id"):
        model_module.load_base_model("bad name!")


def test_a_cached_hub_model_loads_without_network_when_the_hub_is_unreachable(monkeypatch):
    from adapterkit import model as model_module

    monkeypatch.setattr(model_module, "_hub_unreachable", lambda timeout=3.0: "down")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: "/cache/config.json")
    assert model_module.resolve_model("org/cached-model") == ("org/cached-model", {"local_files_only": True})


def test_switching_touches_only_the_adapters_involved(model: AdaptedModel, monkeypatch) -> None:
    """With many adapters attached, add (inactive), switch and delete never walk the whole model (constant
    time in the number attached: benchmarks/bench_many_adapters.py), and leave the same state as a full
    recompute: at every site the active adapters there, and only the active adapter (and the head) trainable."""
    names = [f"a{i}" for i in range(12)]
    model.add_adapter("first", PfeifferConfig(reduction_factor=16))  # the first change freezes the backbone
    for name in names:
        model.add_adapter(name, LoRAConfig(r=1) if name[1:] in ("3", "7") else PfeifferConfig(reduction_factor=16),
                          activate=False)

    def whole_model_walk(*args, **kwargs):
        raise AssertionError("walked every wrapper of the model")

    monkeypatch.setattr(injection, "wrappers", whole_model_walk)
    monkeypatch.setattr(injection, "set_active", whole_model_walk)
    for name in ["a3", "a5", "a7", "a3", "first"]:
        model.set_active_adapters(name)
    model.set_active_adapters("a5", "a7")
    model.delete_adapter("a7")
    model.add_adapter("late", PfeifferConfig(reduction_factor=16), activate=False)
    monkeypatch.undo()

    assert model.active_adapters == ("a5",)
    for wrapper in injection.wrappers(model.model).values():
        assert [n for n in wrapper.active if n in wrapper.adapters] == [n for n in ("a5",) if n in wrapper.adapters]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.set_train_mode(model.train_mode)  # the full recompute
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".a5." in n for n in trainable) and not any(".a3." in n or ".late." in n for n in trainable)


def test_t5s_own_head_needs_a_tokenizer_that_ends_texts_with_eos(tmp_path) -> None:
    """T5ForSequenceClassification reads the </s> token: inputs from a tokenizer without it are refused, naming the
    model's tokenizer, instead of failing inside transformers; a pooled head (last token) does not need it."""
    from adapterkit.model import load_base_model
    from adapterkit.testing import save_tiny_model

    path = save_tiny_model(tmp_path / "t5", "t5", head="base")  # a whole-word BERT tokenizer: no </s>
    model, tokenizer = load_base_model(str(path), "classification", 2)
    batch = tokenizer(["the movie was good", "bad"], padding=True, return_tensors="pt")
    with pytest.raises(ConfigError, match=f"eos_token: the tokenizer of {path} does not end each text with </s>"):
        AdaptedModel(model)(**batch)
    model, _ = load_base_model(str(path), "classification", 2, pooling="last")
    assert model.adapterkit_head.pooling == "last"
    assert AdaptedModel(model)(**batch).logits.shape == (2, 2)
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                         special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)  # T5-style: each text ends with </s>
    model, tokenizer = load_base_model(str(path), "classification", 2)
    assert model.adapterkit_head.pooling == "hf"
    batch = tokenizer(["a b", "b"], ["a", "a b a"], padding=True, return_tensors="pt")
    assert torch.isfinite(AdaptedModel(model)(**batch, labels=torch.tensor([0, 1])).loss)
