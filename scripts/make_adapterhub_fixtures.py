"""Make the AdapterHub fixtures in tests/fixtures/adapterhub/ with the real ``adapters`` library.

``adapters`` needs transformers 4.x, so run this once in a throwaway environment, never in adapterkit's::

    python3 -m venv /tmp/ahvenv
    /tmp/ahvenv/bin/pip install torch==2.13.0 && /tmp/ahvenv/bin/pip install adapters numpy safetensors
    /tmp/ahvenv/bin/python scripts/make_adapterhub_fixtures.py tests/fixtures/adapterhub

For tiny BERT and RoBERTa configs it writes ``{arch}/base/`` (config.json + model.safetensors of the base
model, saved by transformers 4) and, per adapter config, ``{arch}/{config}/`` as ``model.save_adapter(...,
with_head=True)`` writes it (adapter_config.json, adapter weights, head_config.json, head weights) plus
``expected.safetensors``: fixed ``input_ids``/``attention_mask`` and the ``logits`` of the AdapterHub
model (adapter + classification head) on them, and ``hidden`` (its last hidden state, for adapters
without a head we can map). Adapter weights are drawn at random (not the near-zero init) so that they
change the outputs. The files are small (tiny model: hidden 32, 2 layers, vocabulary 48).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import AutoAdapterModel
from safetensors.torch import save_file

SIZES = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=24)
ARCHS = {
    "bert": transformers.BertConfig(**SIZES, type_vocab_size=2, pad_token_id=0),
    "roberta": transformers.RobertaConfig(**SIZES, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2),
}
# name in AdapterHub's config registry -> (config, weights saved as safetensors?)
ADAPTERS = {
    "seq_bn": ("seq_bn", True),
    "double_seq_bn": ("double_seq_bn", False),
    "par_bn": ("par_bn", True),
    "lora": (adapters.LoRAConfig(r=4, alpha=8, attn_matrices=["q", "k", "v"], intermediate_lora=True), True),
    # (adapters cannot save prefix tuning as safetensors: its modules share tensors)
    "prefix_tuning": (adapters.PrefixTuningConfig(prefix_length=5, bottleneck_size=16), False),
    "prefix_tuning_flat": (adapters.PrefixTuningConfig(prefix_length=3, flat=True), False),
}
NAME = "sst"  # the adapter's name inside the files


def inputs(pad: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, SIZES["vocab_size"], (2, 8), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 5:] = pad
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def main(out: Path) -> None:
    for arch, config in ARCHS.items():
        torch.manual_seed(0)
        base = transformers.AutoModel.from_config(config)
        base_dir = out / arch / "base"
        base.save_pretrained(base_dir, safe_serialization=True)
        batch = inputs(config.pad_token_id)
        with torch.no_grad():
            plain = base.eval()(**batch).last_hidden_state
        for fixture, (adapter_config, safetensors) in ADAPTERS.items():
            if arch == "roberta" and fixture.startswith(("lora", "prefix")):
                continue  # one architecture is enough for the non-bottleneck formats
            model = AutoAdapterModel.from_pretrained(base_dir)
            model.add_adapter(NAME, config=adapter_config)
            model.add_classification_head(NAME, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if f".{NAME}." in pname or pname.startswith(f"heads.{NAME}."):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            model.set_active_adapters(NAME)
            model.active_head = NAME
            model.eval()
            with torch.no_grad():
                out_ = model(**batch, output_hidden_states=True)
            if torch.allclose(out_.hidden_states[-1], plain, atol=1e-3):
                raise SystemExit(f"{arch}/{fixture}: the adapter did not change the outputs (not active?)")
            directory = out / arch / fixture
            model.save_adapter(str(directory), NAME, with_head=True, use_safetensors=safetensors)
            save_file({**{k: v.contiguous() for k, v in batch.items()}, "logits": out_.logits.contiguous(),
                       "hidden": out_.hidden_states[-1].contiguous()}, str(directory / "expected.safetensors"))
            print(f"{directory}: {sorted(p.name for p in directory.iterdir())}")
    (out / "VERSIONS.json").write_text(json.dumps({
        "adapters": adapters.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "script": "scripts/make_adapterhub_fixtures.py"}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/adapterhub"))
