"""Continued masked-LM pretraining (DAPT / TAPT, Gururangan et al. 2020) of a backbone or of an adapter.

Domain-adaptive pretraining (DAPT) continues the masked-LM objective on unlabelled text of the target
domain; task-adaptive pretraining (TAPT) on the task's own training text. Both run through the one
Trainer path (:func:`adapterkit.training.train`) with dynamic masking: every batch draws a new mask
(transformers' ``DataCollatorForLanguageModeling``; 15% of the tokens, of which 80% become the mask token,
10% a random token and 10% stay), so each epoch sees the text masked differently.

The result of backbone pretraining is an ordinary Hugging Face model directory (weights, config,
tokenizer) that ``adapterkit train --model DIR`` accepts, so DAPT, then TAPT, then task training chain
as commands. Pretraining an adapter (``method``) leaves the backbone frozen and saves the adapter
(``adapterkit train --init-adapter DIR`` starts task training from it).

A model without a masked-LM head (the bundled MiniLM is a bare ``BertModel``) gets one built by
``AutoModelForMaskedLM`` from its config: the encoder weights are loaded, the head's transform is new and
its decoder is tied to the input word embeddings.

The loss is the usual mean cross-entropy over the masked tokens, but the vocabulary projection (the
model's output embeddings, the largest matrix of a small model) runs only on the hidden states of the
masked tokens (:func:`adapterkit.training.mlm.masked_lm_loss`), not on all of them: the same loss for
about half the step time of MiniLM (``MLMSpec.sparse_logits``; ``benchmarks/bench_pretrain.py``).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import check, opt
from .errors import ConfigError, DataError

#: Masking recipe of BERT / RoBERTa / DAPT-TAPT.
MLM_PROBABILITY = 0.15
MASK_REPLACE_PROB = 0.8
RANDOM_REPLACE_PROB = 0.1


@dataclass(frozen=True)
class MLMSpec:
    """What :func:`adapterkit.training.train` needs to run masked-LM training (``kind == "mlm"``).

    ``sparse_logits``: the vocabulary logits are computed only at the masked tokens
    (:func:`adapterkit.training.mlm.masked_lm_loss`);
    false: at every token, the model's own loss."""

    name: str = "mlm"
    mlm_probability: float = MLM_PROBABILITY
    mask_replace_prob: float = MASK_REPLACE_PROB
    random_replace_prob: float = RANDOM_REPLACE_PROB
    packing: bool = True
    sparse_logits: bool = True
    kind: str = "mlm"
    metric: str = "loss"

    def __post_init__(self) -> None:
        check(0 < self.mlm_probability < 1, "mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        check(0 <= self.mask_replace_prob <= 1, "mask_replace_prob", f"must be in [0, 1], got {self.mask_replace_prob}")
        check(0 <= self.random_replace_prob <= 1 - self.mask_replace_prob, "random_replace_prob",
              f"must be in [0, 1 - mask_replace_prob], got {self.random_replace_prob}")

    def collator(self, tokenizer: Any) -> Any:
        """The dynamic-masking collator (pads each batch; masks anew on every call)."""
        return mlm_collator(tokenizer, self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)


def require_mask_token(tokenizer: Any, source: object = "tokenizer") -> None:
    """ConfigError naming ``source`` when the tokenizer has no mask token (masked-LM training needs one)."""
    if getattr(tokenizer, "mask_token", None) is None or getattr(tokenizer, "mask_token_id", None) is None:
        raise ConfigError(f"{source}: tokenizer has no mask token (mask_token is None); masked-LM pretraining "
                          "needs one (e.g. [MASK] or <mask>); add it with tokenizer.add_special_tokens"
                          "({'mask_token': '[MASK]'}) and resize the embeddings, or use another model")


def mlm_collator(tokenizer: Any, mlm_probability: float = MLM_PROBABILITY, mask_replace_prob: float = MASK_REPLACE_PROB,
                 random_replace_prob: float = RANDOM_REPLACE_PROB) -> Any:
    """transformers' ``DataCollatorForLanguageModeling``: labels are -100 except at the chosen positions."""
    from transformers import DataCollatorForLanguageModeling

    require_mask_token(tokenizer)
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability,
                                           mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)


# --- corpora ---------------------------------------------------------------------------------------


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        offset = exc.start + bom
        line = data[:offset].count(b"\n") + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1)
        raise DataError(f"{path}: line {line}: not UTF-8 (byte offset {offset}, byte {column + 1} of the line: "
                        f"0x{data[offset]:02x}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_corpus(path: str | Path, text_field: str = "text") -> list[str]:
    """Unlabelled texts from ``path``: a text file (one document per non-blank line) or JSON lines
    (``.jsonl``/``.json`` lines of objects; ``text_field`` holds the text). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    text = _decode(path, path.read_bytes())
    texts: list[str] = []
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or text_field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}: line {number}: field {text_field!r} missing (has {keys}); "
                            "choose the field with --text-field")
        value = row[text_field]
        if not isinstance(value, str):
            raise DataError(f"{path}: line {number}: field {text_field!r}: expected a string, got {value!r:.60}")
        if value.strip():
            texts.append(value.strip())
    if not texts:
        raise DataError(f"{path}: empty corpus: no text" + (f" in field {text_field!r}" if jsonl else " lines"))
    return texts


def task_texts(spec: Any, data_dir: Any = None, split: str = "train") -> list[str]:
    """A registered task's input text, labels dropped (TAPT): each text and text pair; for QA the distinct
    contexts and the questions."""
    from .data.tasks import load_split

    examples = load_split(spec, split, data_dir)
    texts: list[str] = []
    if spec.kind == "qa":
        seen: set[str] = set()
        for ex in examples:
            if ex["context"] not in seen:
                seen.add(ex["context"])
                texts.append(ex["context"])
        texts += [ex["question"] for ex in examples]
    else:
        for ex in examples:
            texts += [t for t in (ex["text"], ex.get("text_pair")) if t]
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"task {spec.name!r} split {split!r}: empty corpus: no text")
    return texts


# --- the model -------------------------------------------------------------------------------------


@dataclass
class MLMModel:
    """A masked-LM model, its tokenizer and what was done to get it."""

    model: Any
    tokenizer: Any
    built_head: bool
    carried: dict[str, Any]  # checkpoint tensors the MLM class does not use (e.g. a pooler), kept for saving
    source: str


def load_mlm_model(name_or_path: str | None, say: Any = print) -> MLMModel:
    """Load ``name_or_path`` (None: the bundled MiniLM) with a masked-LM head; build the head when missing.

    A checkpoint without MLM head weights (a bare encoder) gets ``AutoModelForMaskedLM`` built from its
    config with the encoder weights loaded and the decoder tied to the word embeddings; ``say`` reports it.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from .model import default_model_path

    path = name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    require_mask_token(tokenizer, path)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except ValueError as exc:  # no masked-LM class for this model type
        raise ConfigError(f"{path}: no masked-LM model class for this model type ({exc})") from None
    missing = sorted(info.get("missing_keys") or ())
    backbone = model.base_model_prefix + "."
    head_missing = [k for k in missing if not k.startswith(backbone)]
    encoder_missing = [k for k in missing if k.startswith(backbone)]
    if encoder_missing:
        raise ConfigError(f"{path}: {encoder_missing[0]}: encoder weight missing from the checkpoint "
                          f"({len(encoder_missing)} missing); is this a {model.config.model_type} checkpoint?")
    built = bool(head_missing)
    if built:
        if not getattr(model.config, "tie_word_embeddings", True):
            model.config.tie_word_embeddings = True
        model.tie_weights()
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        tied = out_emb is not None and out_emb.weight is in_emb.weight
        say(f"note: {path} has no masked-LM head ({len(head_missing)} head tensors missing, e.g. {head_missing[0]}): "
            f"built a new {type(model).__name__} head on the loaded encoder"
            + (", its decoder tied to the input word embeddings" if tied else ""))
    carried = _unused_checkpoint_tensors(Path(path), sorted(info.get("unexpected_keys") or ()), model.base_model_prefix)
    return MLMModel(model, tokenizer, built, carried, str(path))


def _unused_checkpoint_tensors(path: Path, keys: Sequence[str], prefix: str) -> dict[str, Any]:
    """Tensors of a local single-file checkpoint that the MLM class ignored (e.g. the pooler), under the names
    a task model expects (``prefix.`` added), so that the saved model keeps them."""
    file = path / "model.safetensors"
    if not keys or not file.is_file():
        return {}
    from safetensors import safe_open

    out = {}
    with safe_open(str(file), "pt") as f:
        names = set(f.keys())
        for key in keys:
            if key in names:
                out[key if key.startswith(prefix + ".") else f"{prefix}.{key}"] = f.get_tensor(key)
    return out


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
"""Files of a sentence-transformers model directory (with its numbered module folders, e.g. ``1_Pooling``) that
say how it pools; a pretrained copy keeps them, so that its task head pools as the source model's did."""


def save_pretrained_model(mlm: MLMModel, directory: str | Path) -> Path:
    """Save the masked-LM model, its tokenizer and the carried-over tensors as a model directory; a
    sentence-transformers source's pooling configuration (``modules.json``, ``1_Pooling/``, ...) is copied."""
    import shutil

    from safetensors.torch import load_file, save_file

    from .io import atomic_path

    directory = Path(directory)
    mlm.model.save_pretrained(directory)
    mlm.tokenizer.save_pretrained(directory)
    source = Path(mlm.source)
    if source.is_dir():
        for name in SENTENCE_TRANSFORMERS_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, directory / name)
        for folder in source.iterdir():  # 1_Pooling, 2_Normalize: small config folders, no weights
            if folder.is_dir() and folder.name[:1].isdigit() and "_" in folder.name:
                shutil.copytree(folder, directory / folder.name, dirs_exist_ok=True)
    weights = directory / "model.safetensors"
    if mlm.carried and weights.is_file():
        tensors = load_file(str(weights))
        tensors.update({k: v.contiguous() for k, v in mlm.carried.items() if k not in tensors})
        with atomic_path(weights) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
    return directory


# --- pretraining -------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    output: str  # model directory (backbone) or adapter directory
    kind: str  # "model" or "adapter"
    train_seconds: float
    global_step: int
    train_loss: float | None
    tokens: int  # non-padding tokens in one epoch
    tokens_per_second: float  # over the optimizer steps of this process (a resumed run counts its own)
    trainable_parameters: int
    built_head: bool
    texts: int
    blocks: int


def pretrain(texts: Sequence[str], config: Any, *, model: str | None = None, method: str | None = None,
             adapter_config: dict[str, Any] | None = None, spec: MLMSpec | None = None, adapter_name: str | None = None,
             name: str = "pretrain", say: Any = print) -> PretrainResult:
    """Continue masked-LM pretraining on ``texts`` with :class:`~adapterkit.training.TrainConfig` ``config``.

    ``method`` None or ``"full"``: the whole backbone (and MLM head) trains, and the result is saved to
    ``config.output_dir/model`` as a model directory. A registered adapter method: only the adapter (and the
    MLM head's transform) trains, and the adapter is saved to ``config.output_dir/adapter``.
    """
    from transformers import set_seed

    from .io import atomic_write_json, save_adapter
    from .model import AdaptedModel
    from .registry import get_method
    from .training import encode, last_checkpoint, train

    spec = spec or MLMSpec()
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("texts: empty corpus: no text")
    full = method in (None, "full")
    if method == "head":
        raise ConfigError("method: 'head' cannot pretrain (the MLM head alone learns nothing about the domain); "
                          "use full or an adapter method")
    cfg = None if full else get_method(method).from_dict(adapter_config or {}, "adapter_config")
    if full and adapter_config:
        raise ConfigError("adapter_config: full pretraining has no adapter fields")
    set_seed(config.seed)
    mlm = load_mlm_model(model, say=say)
    adapted = AdaptedModel(mlm.model)
    adapter_name = adapter_name or (method if not full else None)
    if cfg is not None:
        adapted.add_adapter(adapter_name, cfg)
    config = config.replace(train_mode="full" if full else "adapters", eval_each_epoch=False)
    blocks = encode(mlm.tokenizer, spec, texts, config.max_length)
    tokens = int(sum(sum(m) for m in blocks["attention_mask"]))
    say(f"[{name}] {len(texts)} texts -> {len(blocks)} blocks of <= {config.max_length} tokens ({tokens} tokens); "
        f"masking {spec.mlm_probability:.0%} ({spec.mask_replace_prob:.0%} mask / {spec.random_replace_prob:.0%} random"
        f" / {1 - spec.mask_replace_prob - spec.random_replace_prob:.0%} kept); training "
        + ("the whole model" if full else f"adapter {adapter_name!r} ({method})"))
    resumed_at = 0
    if config.resume:
        found = last_checkpoint(config.output_dir)
        resumed_at = int(Path(found).name.removeprefix("checkpoint-")) if found else 0
    result = train(adapted, mlm.tokenizer, spec, texts, None, config, name=name)
    out = Path(config.output_dir)
    if full:
        target = save_pretrained_model(mlm, out / "model")
    else:
        target = out / "adapter"
        save_adapter(adapted, adapter_name, target, include_head=False,
                     extra={"pretraining": {"objective": "mlm", "texts": len(texts), "epochs": config.epochs}})
    losses = [e["train_loss"] for e in result.log_history if "train_loss" in e]
    epochs_done = (result.global_step - resumed_at) / max(1, _steps_per_epoch(len(blocks), config))
    res = PretrainResult(
        output=str(target), kind="model" if full else "adapter", train_seconds=result.train_seconds,
        global_step=result.global_step, train_loss=float(losses[-1]) if losses else None, tokens=tokens,
        tokens_per_second=tokens * epochs_done / max(result.train_seconds, 1e-9),
        trainable_parameters=result.trainable_parameters, built_head=mlm.built_head, texts=len(texts),
        blocks=len(blocks),
    )
    atomic_write_json(out / "pretrain_result.json", {**dataclasses.asdict(res), "source_model": mlm.source,
                                                     "method": method or "full", "spec": dataclasses.asdict(spec)})
    return res


def _steps_per_epoch(n_blocks: int, config: Any) -> int:
    from .training import steps_per_epoch

    return steps_per_epoch(n_blocks, config.batch_size, 1, config.gradient_accumulation_steps)



# --- the command ---------------------------------------------------------------------------------------

@dataclass
class PretrainOptions:
    """What ``adapterkit pretrain`` reads and how it masks (model, method and training options are the usual ones)."""

    corpus: list[str] | None = opt(
        None, "unlabelled text: a text file (one document per line) or JSON lines (see --text-field); "
        "comma-separated for several files (DAPT)")
    text_field: str = opt("text", "JSON lines: the field holding the text")
    split: str = opt("train", "--task: the split whose text is used")
    mlm_probability: float = opt(
        MLM_PROBABILITY, "fraction of tokens masked (of those 80% become the mask token, 10% a random token, 10% stay)")
    packing: bool = opt(True, "true: concatenate texts and cut blocks of --max-length tokens; false: one truncated "
                        "example per text")
    sparse_logits: bool = opt(True, "true: vocabulary logits only at the masked tokens (the same loss, about half "
                              "the step time of MiniLM); false: at every token, through the model's own loss")


PRETRAIN_TRAINING = ("seed", "epochs", "learning_rate", "batch_size", "weight_decay", "warmup_ratio", "output_dir",
                     "resume", "save_steps", "logging_steps", "progress", "max_length", "eval_batch_size", "precision")
"""The TrainConfig options ``adapterkit pretrain`` offers."""


def corpus_texts(opts: dict[str, Any]) -> tuple[list[str], str]:
    """(texts, description) from ``--corpus`` files (comma-separated) or ``--task`` (TAPT)."""
    from .data.tasks import get_task, resolve_data_dir

    corpora = opts.get("corpus") or []
    if isinstance(corpora, str):
        corpora = [c for c in corpora.split(",") if c.strip()]
    if corpora and opts.get("task"):
        raise ConfigError("corpus: give --corpus FILE (DAPT) or --task NAME (TAPT), not both")
    if corpora:
        texts = [t for path in corpora for t in read_corpus(path, opts.get("text_field") or "text")]
        return texts, ", ".join(str(c) for c in corpora)
    if opts.get("task"):
        spec = get_task(opts["task"])
        split = opts.get("split") or "train"
        return task_texts(spec, resolve_data_dir(opts.get("data_dir")), split), f"task {spec.name} [{split}] text"
    raise ConfigError("corpus: give --corpus FILE (a text file, or JSON lines with --text-field) or --task NAME")


def run_pretraining(opts: dict[str, Any], say: Any = print) -> PretrainResult:
    """``adapterkit pretrain``: read the corpus, pretrain, save, print a summary."""
    from .options import build
    from .runner import adapter_overrides
    from .training import TrainConfig

    texts, source = corpus_texts(opts)
    method = opts.get("method") or "full"
    config = build(TrainConfig, opts, train_mode="full" if method == "full" else "adapters", eval_each_epoch=False)
    spec = MLMSpec(mlm_probability=float(opts.get("mlm_probability") or MLM_PROBABILITY),
                   packing=bool(opts.get("packing", True)), sparse_logits=bool(opts.get("sparse_logits", True)))
    say(f"pretrain: {len(texts)} texts from {source}")
    result = pretrain(texts, config, model=opts.get("model"), method=method,
                      adapter_config=adapter_overrides(opts.get("adapter_config")) or None, spec=spec,
                      adapter_name=opts.get("adapter_name"), say=say)
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    say(f"pretrain: {result.global_step} steps in {result.train_seconds:.1f}s ({result.tokens_per_second:.0f} tokens/s), "
        f"final training loss {loss}")
    if result.kind == "model":
        say(f"saved: {result.output}  (next: adapterkit train --model {result.output} ...)")
    else:
        say(f"saved: {result.output}  (next: adapterkit train --init-adapter {result.output} ...)")
    return result
