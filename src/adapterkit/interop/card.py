"""Adapter cards: the ``README.md`` of a saved adapter directory, with the YAML front matter the Hugging
Face Hub reads (``base_model``, ``library_name``, ``pipeline_tag``, ``tags``, ``model-index`` metrics)
and a short body (method, parameters, training settings, results, how to load it).

Written from what the save knows: the adapter's config and base model always, the head when saved, and
the run's task, metrics and training settings when the caller passes them (``extra`` of ``save_adapter``:
``task``, ``metric``, ``dev``, ``test``, ``training``, ``trainable_parameters``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
PIPELINES = {"ForSequenceClassification": "text-classification", "ForQuestionAnswering": "question-answering",
             "ForTokenClassification": "token-classification", "ForCausalLM": "text-generation",
             "ForConditionalGeneration": "text2text-generation"}
SKIP_METRICS = {"score", "loss", "runtime", "samples_per_second", "steps_per_second", "epoch"}


def hub_model_id(name_or_path: str | None) -> str | None:
    """The Hub id of a base model: the id itself, the bundled MiniLM's id for its local copy, None for
    other local paths (the Hub only accepts ids in ``base_model``)."""
    if not name_or_path:
        return None
    try:
        from ..model import default_model_path

        if Path(name_or_path).resolve() == Path(default_model_path()).resolve():
            return BUNDLED_MODEL_ID
    except Exception:  # the bundled model package is missing: nothing to compare with
        pass
    if Path(name_or_path).exists() or name_or_path.startswith(("/", ".", "~")):
        return None
    return name_or_path


def _metrics(results: Any, split: str) -> list[dict[str, Any]]:
    if not isinstance(results, dict):
        return []
    return [{"type": k, "value": round(float(v), 6), "name": f"{split} {k}"} for k, v in results.items()
            if k not in SKIP_METRICS and not k.endswith(tuple(f"_{s}" for s in SKIP_METRICS))
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def card_metadata(meta: dict[str, Any], *, library: str = "adapterkit") -> dict[str, Any]:
    """The YAML front matter of an adapter directory's card, from its ``adapter_config.json`` contents."""
    config = meta.get("config") or {}
    extra = meta.get("extra") or {}
    head = meta.get("head") or {}
    method = config.get("method") or config.get("peft_type", "").lower() or "adapter"
    cls = head.get("model_class") or ""
    pipeline = next((p for suffix, p in PIPELINES.items() if cls.endswith(suffix)), None)
    task = extra.get("task")
    out: dict[str, Any] = {}
    base = hub_model_id((meta.get("base_model") or {}).get("name_or_path"))
    if base:
        out["base_model"] = base
    out["library_name"] = library
    if pipeline:
        out["pipeline_tag"] = pipeline
    out["tags"] = [t for t in dict.fromkeys(["adapterkit", "adapter", method, task]) if t]
    metrics = _metrics(extra.get("dev"), "dev") + _metrics(extra.get("test"), "test")
    if metrics:
        out["model-index"] = [{"name": meta.get("name") or method, "results": [{
            "task": {"type": pipeline or "text-classification"},
            "dataset": {"name": task or "unknown", "type": task or "unknown"},
            "metrics": metrics,
        }]}]
    return out


def adapter_card(meta: dict[str, Any], *, adapter_parameters: int | None = None, head_parameters: int | None = None,
                 library: str = "adapterkit") -> str:
    """The card (front matter + Markdown body) for an adapter directory with ``meta`` as its config."""
    import yaml

    front = card_metadata(meta, library=library)
    config = meta.get("config") or {}
    extra = meta.get("extra") or {}
    base = meta.get("base_model") or {}
    name = meta.get("name") or "adapter"
    method = config.get("method", "adapter")
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {name}", "",
             f"A `{method}` adapter {'exported for peft by' if library == 'peft' else 'made with'} adapterkit for "
             f"`{front.get('base_model') or base.get('name_or_path') or base.get('model_type', 'its base model')}` "
             f"({base.get('model_type', '?')}, hidden size {base.get('hidden_size', '?')}, "
             f"{base.get('num_layers', '?')} layers)" + (f", trained on `{extra['task']}`." if extra.get("task") else "."),
             "", "## Parameters", "", "| what | count |", "|---|---|"]
    if adapter_parameters is not None:
        lines.append(f"| adapter | {adapter_parameters:,} |")
    if head_parameters is not None:
        lines.append(f"| task head | {head_parameters:,} |")
    if extra.get("trainable_parameters") is not None:
        lines.append(f"| trainable in the run | {int(extra['trainable_parameters']):,} |")
    lines += ["", "## Method config", "", "```json", _json(config), "```"]
    if extra.get("training"):
        lines += ["", "## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in extra["training"].items()]
    rows = [(split, m["type"], m["value"]) for split in ("dev", "test") for m in _metrics(extra.get(split), split)]
    if rows:
        lines += ["", "## Results", "", f"Primary metric: {extra.get('metric', 'score')}.", "",
                  "| split | metric | value |", "|---|---|---|"]
        lines += [f"| {s} | {k} | {v:.4f} |" for s, k, v in rows]
    if library == "peft":
        lines += ["", "## Use", "", "```python", "from peft import PeftModel",
                  "model = PeftModel.from_pretrained(base_model, \"path/or/owner/repo\")", "```", ""]
    else:
        lines += ["", "## Use", "", "```python", "from adapterkit.io import load_adapter",
                  "name = load_adapter(adapted_model, \"path/or/owner/repo\")  # an AdaptedModel of the same base",
                  "```", "", "or `adapterkit eval path/or/owner/repo --task ...` on the command line.", ""]
    return "\n".join(lines)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2)


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a card file (empty when it has none)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) or {} if end > 0 else {}
