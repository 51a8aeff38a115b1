"""``adapterkit convert``: read an adapter in one format onto its base model and write it in another.

Formats in: ``adapterkit``, ``peft`` (LoRA), ``adapterhub``; out: ``adapterkit``, ``peft`` (LoRA only). The
base model (default: the bundled MiniLM) gets the head the adapter was saved with (its number of labels
is read from the files), so the head converts too; without a saved head the bare backbone is used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AdapterLoadError, ConfigError

SOURCES = ("adapterkit", "peft", "adapterhub")
TARGETS = ("adapterkit", "peft")
_HEAD_OUTPUTS = ("classifier.weight", "classifier.out_proj.weight", "score.weight")


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterLoadError(f"{path}: cannot be read ({exc})") from None


def saved_head(source_format: str, directory: Path) -> tuple[int, dict[int, str] | None] | None:
    """(number of labels, id2label or None) of the classification head saved in ``directory``, or None."""
    if source_format == "adapterkit":
        head = _json(directory / "adapter_config.json").get("head") or {}
        if not head.get("num_labels") or not str(head.get("model_class", "")).endswith("ForSequenceClassification"):
            return None
        id2label = {int(k): v for k, v in (head.get("id2label") or {}).items()} or None
        return int(head["num_labels"]), id2label
    if source_format == "adapterhub":
        path = directory / "head_config.json"
        if not path.is_file():
            return None
        cfg = _json(path).get("config") or {}
        label2id = cfg.get("label2id") or {}
        return int(cfg.get("num_labels") or 2), ({int(v): k for k, v in label2id.items()} or None)
    from .peft import read_peft_tensors

    tensors, _ = read_peft_tensors(directory)
    for key, tensor in tensors.items():
        if key.endswith(_HEAD_OUTPUTS) and tensor.dim() == 2:
            return int(tensor.shape[0]), None
    return None


def load_base(model: str | None, head: tuple[int, dict[int, str] | None] | None) -> Any:
    """The Hugging Face model at ``model`` (default: the bundled MiniLM) with a classification head of the
    saved size, or the bare backbone."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from ..model import default_model_path

    path = model or default_model_path()
    if head is None:
        return AutoModel.from_pretrained(path)
    num_labels, id2label = head
    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **extra)


def convert_adapter(source_format: str, target_format: str, source: str | Path, target: str | Path, *,
                    model: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Convert the adapter at ``source`` (a directory, or a Hub repo id) and write it to ``target``.

    Returns a summary: name, method, head (number of labels or None), files written.
    """
    from ..io import load_adapter, save_adapter
    from ..model import AdaptedModel
    from .adapterhub import load_adapterhub_adapter
    from .hub import resolve_adapter_dir
    from .peft import load_peft_adapter, save_peft_adapter

    if source_format not in SOURCES:
        raise ConfigError(f"from: unknown format {source_format!r}; use one of {list(SOURCES)}")
    if target_format not in TARGETS:
        raise ConfigError(f"to: unknown format {target_format!r}; use one of {list(TARGETS)}")
    directory = resolve_adapter_dir(source)
    if not directory.is_dir():
        raise AdapterLoadError(f"{directory}: not a directory")
    head = saved_head(source_format, directory)
    adapted = AdaptedModel(load_base(model, head).eval())
    if source_format == "adapterkit":
        name = load_adapter(adapted, directory, name)
    elif source_format == "peft":
        name = load_peft_adapter(adapted, directory, name)
    else:
        name = load_adapterhub_adapter(adapted, directory, name)
    target = Path(target)
    if target_format == "peft":
        save_peft_adapter(adapted, name, target, include_head=head is not None)
    else:
        save_adapter(adapted, name, target, include_head=head is not None,
                     extra={"converted_from": {"format": source_format, "source": str(source)}})
    return {"name": name, "method": adapted.adapter_configs[name].method, "head": head[0] if head else None,
            "files": sorted(p.name for p in target.iterdir())}
