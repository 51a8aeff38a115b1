"""UniPELT: gated components (gate at 0 = the base layer, gradients reach every gate), the composition,
parameter counts on a BERT-base-shaped model against the paper, gate analysis and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit.errors import ConfigError
from adapterkit.methods.bottleneck import ParallelConfig, PfeifferConfig
from adapterkit.methods.gating import Gate, GateRecorder, gate_modules, write_gate_report
from adapterkit.methods.lora import LoRAConfig
from adapterkit.methods.prefix import PrefixTuningConfig
from adapterkit.methods.prompt import PromptTuningConfig
from adapterkit.methods.unipelt import (
    UniPELTConfig,
    UniPELTPromptConfig,
    component_parameter_counts,
    summarize_counts,
)
from adapterkit.model import AdaptedModel
from adapterkit.registry import config_from_dict, get_method
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model

BATCH = tiny_batch(batch_size=3, lengths=[8, 5, 3], num_labels=2)


def _logits(model: AdaptedModel) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"]).logits


def _randomize(model: AdaptedModel, name: str) -> None:
    """Make every component do something (Up and LoRA B start at zero), gates left as initialised."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in model.adapter_parameters(name).items():
            if ".gate." not in key:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _close_gates(model: AdaptedModel, name: str) -> None:
    with torch.no_grad():
        for gate in gate_modules(model, name).values():
            gate.linear.weight.zero_()
            gate.linear.bias.fill_(-1e4)  # sigmoid(-1e4) == 0.0 exactly in float32


@pytest.mark.parametrize("config", [
    PfeifferConfig(gated=True), PfeifferConfig(gated=True, original_ln=True), ParallelConfig(gated=True),
    LoRAConfig(gated=True), UniPELTConfig(components="AL"),
], ids=["pfeiffer", "pfeiffer-original-ln", "parallel", "lora", "unipelt-AL"])
def test_gate_at_zero_reproduces_the_base_layer_exactly(config):
    model = AdaptedModel(tiny_model("bert"))
    base = _logits(model)
    model.add_adapter("g", config)
    _randomize(model, "g")
    assert not torch.allclose(_logits(model), base, atol=1e-4)  # open gates: the adapter changes the output
    _close_gates(model, "g")
    assert torch.equal(_logits(model), base)


def test_prefix_gate_at_zero_zeroes_the_prefix_keys_and_values():
    """As in the paper: a closed prefix gate leaves zero keys/values, which still take a softmax share."""
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("p", PrefixTuningConfig(gated=True, prefix_length=3, bottleneck_size=8))
    _randomize(model, "p")
    module = next(m for _, m in model.adapter_modules("p") if hasattr(m, "prefix_kv"))
    hidden = torch.randn(2, 5, 32)
    key, value = module.prefix_kv(2, hidden)
    assert key.abs().sum() > 0 and value.abs().sum() > 0
    _close_gates(model, "p")
    key, value = module.prefix_kv(2, hidden)
    assert torch.count_nonzero(key) == 0 and torch.count_nonzero(value) == 0


@pytest.mark.parametrize("method", ["unipelt", "unipelt_prompt"])
def test_gradients_reach_every_gate(method):
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("u", get_method(method)(prefix=PrefixTuningConfig(prefix_length=3, bottleneck_size=8)))
    gates = gate_modules(model, "u")
    assert sorted({label for _, label in gates}) == ["attention", "ffn_output", "query", "value"]
    assert len(gates) == 2 * 4  # 2 layers x (adapter, prefix, query LoRA, value LoRA)
    _randomize(model, "u")
    model.train()
    model(**BATCH).loss.backward()
    for key, gate in gates.items():
        assert gate.linear.weight.grad is not None and gate.linear.weight.grad.abs().sum() > 0, key
        assert gate.linear.bias.grad is not None and gate.linear.bias.grad.abs().sum() > 0, key


def test_gates_mask_padding_by_default_and_follow_the_authors_on_request():
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("u", UniPELTConfig(components="L"))
    authors = AdaptedModel(tiny_model("bert"))
    authors.add_adapter("u", UniPELTConfig(components="L", gate_average="all"))
    authors.load_adapter_state_dict("u", model.adapter_state_dict("u"))
    padded = {"input_ids": BATCH["input_ids"], "attention_mask": BATCH["attention_mask"]}
    for m in (model, authors):
        m.eval()
        with torch.no_grad():
            m(**padded)
    ours = gate_modules(model, "u")[(0, "query")].last.flatten()
    theirs = gate_modules(authors, "u")[(0, "query")].last.flatten()
    assert ours[0] == pytest.approx(theirs[0].item(), abs=1e-7)  # the unpadded row agrees
    assert not torch.allclose(ours[1:], theirs[1:])  # padded rows differ
    short = {"input_ids": BATCH["input_ids"][2:, :3], "attention_mask": BATCH["attention_mask"][2:, :3]}
    with torch.no_grad():
        model(**short)  # the padded row alone, without its padding: same gate as with it
    assert gate_modules(model, "u")[(0, "query")].last.item() == pytest.approx(ours[2].item(), abs=1e-6)


def test_parameter_counts_on_bert_base_match_the_paper():
    """Mao et al. (2022) Table 4: adapter 895K, prefix 184K, LoRA 295K, UniPELT (APL) 1.4M; the gates add
    769 per gate and layer. The prefix counts as its prefix values (the MLP producing them is dropped)."""
    with torch.device("meta"):  # BERT-base shapes without allocating 110M weights
        model = AdaptedModel(tiny_model("bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                        intermediate_size=3072))
        model.add_adapter("apl", UniPELTConfig())
    counts = component_parameter_counts(model, "apl")
    assert counts["adapter"] == {"trainable": 894_528 + 12 * 769, "kept": 894_528 + 12 * 769, "gates": 12 * 769}
    assert counts["prefix"]["kept"] - counts["prefix"]["gates"] == 184_320 == 10 * 12 * 2 * 768
    assert counts["prefix"]["trainable"] - counts["prefix"]["gates"] == 7_680 + 393_728 + 9_455_616  # + the MLP
    assert counts["lora"] == {"trainable": 294_912 + 24 * 769, "kept": 294_912 + 24 * 769, "gates": 24 * 769}
    total = summarize_counts(counts)
    assert total["kept"] == 1_410_672 and round(total["kept"] / 1e5) / 10 == 1.4
    assert model.count_parameters()["adapter:apl"] == total["trainable"]
    with torch.device("meta"):
        model.add_adapter("ap", UniPELTConfig(components="AP"), activate=False)
    assert summarize_counts(component_parameter_counts(model, "ap"))["kept"] == 894_528 + 184_320 + 24 * 769  # 1.1M


def test_composition_round_trips_and_builds_only_its_components():
    cfg = UniPELTConfig.from_dict({"components": "pl", "gate_average": "all",
                                   "lora": {"method": "lora", "r": 4, "targets": ["query", "key"]}})
    assert cfg.components == "PL" and config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("u", cfg)
    sites = {key.split(".")[2] for key in model.adapter_state_dict("u") if key.startswith("layers.")}
    assert sites == {"attention", "query", "key"}
    assert all(g.average == "all" for g in gate_modules(model, "u").values())
    plain = AdaptedModel(tiny_model("bert"))
    plain.add_adapter("u", UniPELTConfig(gated=False))
    assert not gate_modules(plain, "u")  # NoGate: the components' plain modules
    preset = UniPELTPromptConfig()
    assert preset.prompt is not None and preset.prompt.num_tokens == 10 and preset.components == "APL"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"components: unknown component 'X'"):
        UniPELTConfig(components="AX")
    with pytest.raises(ConfigError, match="components: 'LA'"):
        UniPELTConfig(components="LA")
    with pytest.raises(ConfigError, match="prefix_length"):
        UniPELTConfig.from_dict({"prefix": {"method": "prefix", "prefix_length": 0}}, "cfg.json")
    with pytest.raises(ConfigError, match="gated: method 'adaptable' cannot be gated"):
        get_method("adaptable")(gated=True)
    with pytest.raises(ConfigError, match="gated"):
        get_method("prompt").from_dict({"gated": True}, "cfg.json")  # no such field: named
    with pytest.raises(ConfigError, match="adapter: method 'adapterdrop' cannot be gated"):
        UniPELTConfig.from_dict({"adapter": {"method": "adapterdrop"}})
    with pytest.raises(ConfigError, match="cannot be merged"):
        model = AdaptedModel(tiny_model("bert"))
        model.add_adapter("l", LoRAConfig(gated=True))
        model.merge_adapter("l")


def test_gate_analysis_writes_json_and_a_heat_map(tmp_path: Path):
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("u", UniPELTConfig(prefix=PrefixTuningConfig(prefix_length=3, bottleneck_size=8)))
    model.eval()
    with GateRecorder(model, "u") as recorder, torch.no_grad():
        model(input_ids=BATCH["input_ids"][:2], attention_mask=BATCH["attention_mask"][:2])
        model(input_ids=BATCH["input_ids"][2:], attention_mask=BATCH["attention_mask"][2:])
    means = recorder.means()
    assert set(means) == set(gate_modules(model, "u")) and all(0 < v < 1 for v in means.values())
    assert all(c == 3 for c in recorder.counts.values())  # every example once
    gate = gate_modules(model, "u")[(1, "value")]
    assert gate._forward_hooks == {}  # the recorder removed its hooks
    json_path, png = write_gate_report(means, str(tmp_path))
    table = json.loads(Path(json_path).read_text())
    assert table["layers"] == [0, 1] and table["gates"] == ["attention", "ffn_output", "query", "value"]
    assert table["mean"][1][3] == pytest.approx(means[(1, "value")])
    assert Path(png).stat().st_size > 1000
    with pytest.raises(ValueError, match="no gates"):
        plain = AdaptedModel(tiny_model("bert"))
        plain.add_adapter("p", PfeifferConfig())
        GateRecorder(plain, "p")
    assert isinstance(gate, Gate)


def test_cli_train_and_eval_write_the_gate_report(tmp_path: Path):
    """`adapterkit train --method unipelt` records the per-layer mean gates on the test set; so does `eval`."""
    from adapterkit.cli import main
    from adapterkit.testing import save_tiny_model

    words = ["good", "great", "bad", "awful", "the", "movie", "was"]
    model = save_tiny_model(tmp_path / "tiny", words=words)
    rows = ["sentence\tlabel"] + [f"the movie was {w}\t{int(w in ('good', 'great'))}" for w in words[:4] * 4]
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(model), "--train-file", str(tmp_path / "train.tsv"), "--dev-file",
                 str(tmp_path / "dev.tsv"), "--test-file", str(tmp_path / "test.tsv"), "--text-columns", "sentence",
                 "--method", "unipelt", "--adapter-config", '{"prefix": {"method": "prefix", "prefix_length": 2, '
                 '"bottleneck_size": 8}}', "--epochs", "1", "--max-length", "16", "--progress", "none",
                 "--output-dir", str(out)]) == 0
    table = json.loads((out / "gates.json").read_text())
    assert table["layers"] == [0, 1] and table["gates"] == ["attention", "ffn_output", "query", "value"]
    assert all(0 < v < 1 for row in table["mean"] for v in row) and (out / "gates.png").stat().st_size > 1000
    ev = tmp_path / "eval"
    assert main(["eval", str(out / "adapter"), "--model", str(model), "--test-file", str(tmp_path / "test.tsv"),
                 "--text-columns", "sentence", "--max-length", "16", "--output-dir", str(ev)]) == 0
    evaluated = json.loads((ev / "gates.json").read_text())["mean"]
    assert sum(evaluated, []) == pytest.approx(sum(table["mean"], []), abs=1e-6)  # the same test set, the same gates


def test_a_layers_prefix_and_lora_gates_are_computed_together(monkeypatch: pytest.MonkeyPatch):
    """They read the same tensor (the attention input): one Linear(hidden, 3) per layer, not three."""
    import torch.nn.functional as F

    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("u", UniPELTConfig(prefix=PrefixTuningConfig(prefix_length=3, bottleneck_size=8)))
    gates = gate_modules(model, "u")
    assert [len(gates[(0, label)]._group) for label in ("attention", "query", "value", "ffn_output")] == [3, 3, 3, 0]
    shapes: list[tuple[int, ...]] = []
    linear = F.linear

    def counting(x, weight, bias=None):
        if weight.shape[0] <= 3 and weight.shape[1] == 32:
            shapes.append(tuple(weight.shape))
        return linear(x, weight, bias)

    monkeypatch.setattr(F, "linear", counting)
    model.eval()
    with torch.no_grad():
        model(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"])
    # per layer: the three attention-input gates at once, then the adapter's gate; then the 2-label classifier
    assert shapes == [(3, 32), (1, 32), (3, 32), (1, 32), (2, 32)]


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_routing_unipelt_with_and_without_prompts_equals_solo_runs(arch: str) -> None:
    """Gates average over each row's own real tokens, prompt positions included and prompt padding not."""
    model = tiny_adapted(arch, {"u": UniPELTConfig(), "v": UniPELTPromptConfig(prompt=PromptTuningConfig(num_tokens=4,
                                init="random")), "p": PromptTuningConfig(num_tokens=2, init="random")})
    assert routed_vs_solo(model, padded_batch(arch), ["u", "v", None, "p", "v", "u"]) <= 1e-5
