"""Tokenisation helpers for the Trainer path: classification/regression and extractive QA.

Nothing is padded here: the data collator pads each batch dynamically.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adapterkit.errors import ConfigError, DataError

Example = dict[str, Any]


def _require_examples(examples: Sequence[Example], what: str) -> None:
    if not examples:
        raise DataError(f"{what}: no examples to encode")


def encode_classification(
    tokenizer: Any,
    examples: Sequence[Example],
    max_length: int = 128,
    label_dtype: str = "int",
) -> Any:
    """Tokenise ``{"text", "text_pair", "label"}`` examples into a ``datasets.Dataset``.

    Columns: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer returns
    them) and ``labels`` (int ids, or floats with ``label_dtype="float"``; left out when no example
    has a label). Sequences are truncated to ``max_length`` but not padded.
    """
    import datasets

    if label_dtype not in ("int", "float"):
        raise ConfigError(f"label_dtype: expected 'int' or 'float', got {label_dtype!r}")
    _require_examples(examples, "encode_classification")
    try:
        texts = [ex["text"] for ex in examples]
    except KeyError:
        raise DataError("encode_classification: field 'text' missing from an example") from None
    pairs = [ex.get("text_pair") for ex in examples]
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise DataError(
            f"encode_classification: field 'text_pair': set in {sum(has_pair)} of {len(pairs)} examples; "
            "all or none must have one"
        )
    enc = tokenizer(
        texts,
        pairs if all(has_pair) else None,
        truncation=True,
        max_length=max_length,
    )
    columns: dict[str, list[Any]] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        columns["token_type_ids"] = enc["token_type_ids"]
    labels = [ex.get("label") for ex in examples]
    if any(lab is not None for lab in labels):
        missing = [i for i, lab in enumerate(labels) if lab is None]
        if missing:
            raise DataError(f"encode_classification: field 'label' missing in example {missing[0]}")
        cast = float if label_dtype == "float" else int
        columns["labels"] = [cast(lab) for lab in labels]
    return datasets.Dataset.from_dict(columns)


def _require_fast(tokenizer: Any, what: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{what}: needs a fast (Rust) tokenizer for offset mappings; got {type(tokenizer).__name__}"
        )


def _tokenize_qa(
    tokenizer: Any, examples: Sequence[Example], max_length: int, doc_stride: int
) -> tuple[Any, int]:
    """Tokenise (question, context) pairs into overlapping windows; also return the context's sequence id."""
    if doc_stride >= max_length:
        raise ConfigError(f"doc_stride: must be smaller than max_length ({doc_stride} >= {max_length})")
    try:
        questions = [ex["question"].lstrip() for ex in examples]
        contexts = [ex["context"] for ex in examples]
    except KeyError as exc:
        raise DataError(f"QA example: field {exc.args[0]!r} missing") from None
    questions = _cap_questions(tokenizer, questions, max_length, doc_stride)
    pad_right = getattr(tokenizer, "padding_side", "right") == "right"
    return tokenizer(
        questions if pad_right else contexts,
        contexts if pad_right else questions,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    ), (1 if pad_right else 0)


def _cap_questions(tokenizer: Any, questions: list[str], max_length: int, doc_stride: int) -> list[str]:
    """Cut questions so long that a window would have no more context tokens than ``doc_stride`` (the
    tokenizer cannot slide such windows); a warning says how many were cut."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    if room < 1:
        raise ConfigError(f"max_length: {max_length} leaves no room for a question and a context window wider "
                          f"than doc_stride {doc_stride}")
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], 0
    for question, ids, offsets in zip(questions, enc["input_ids"], enc["offset_mapping"], strict=True):
        if len(ids) > room:  # one token of slack: a re-tokenised cut word may split differently
            question = question[: offsets[max(0, room - 2)][1]]
            cut += 1
        out.append(question)
    if cut:
        import warnings

        warnings.warn(f"QA: {cut} question(s) longer than {room} tokens cut to {room} tokens so that a window "
                      f"of {max_length} tokens keeps more than doc_stride={doc_stride} context tokens", stacklevel=3)
    return out


def _base_columns(enc: Any) -> dict[str, list[Any]]:
    cols = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        cols["token_type_ids"] = enc["token_type_ids"]
    return cols


def encode_qa_train(
    tokenizer: Any, examples: Sequence[Example], max_length: int = 384, doc_stride: int = 128
) -> Any:
    """Tokenise QA examples into sliding-window features with ``start_positions``/``end_positions``.

    A long context yields several features (windows overlapping by ``doc_stride`` tokens). The
    first reference answer is the target; when it is not fully inside a window, or the example has
    no answer, both positions point at the CLS token (index 0).
    """
    import datasets

    _require_fast(tokenizer, "encode_qa_train")
    _require_examples(examples, "encode_qa_train")
    enc, ctx_id = _tokenize_qa(tokenizer, examples, max_length, doc_stride)
    sample_map = enc["overflow_to_sample_mapping"]
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        example = examples[sample_map[i]]
        answers = example.get("answers") or {"text": [], "answer_start": []}
        if not answers["text"]:
            starts.append(0)
            ends.append(0)
            continue
        start_char = int(answers["answer_start"][0])
        end_char = start_char + len(answers["text"][0])
        seq_ids = enc.sequence_ids(i)
        ctx_start = seq_ids.index(ctx_id)
        ctx_end = len(seq_ids) - 1 - seq_ids[::-1].index(ctx_id)
        if offsets[ctx_start][0] > start_char or offsets[ctx_end][1] < end_char:
            starts.append(0)
            ends.append(0)
            continue
        tok = ctx_start
        while tok <= ctx_end and offsets[tok][0] <= start_char:
            tok += 1
        starts.append(tok - 1)
        tok = ctx_end
        while tok >= ctx_start and offsets[tok][1] >= end_char:
            tok -= 1
        ends.append(tok + 1)
    columns = _base_columns(enc)
    columns["start_positions"] = starts
    columns["end_positions"] = ends
    return datasets.Dataset.from_dict(columns)


def encode_qa_eval(
    tokenizer: Any, examples: Sequence[Example], max_length: int = 384, doc_stride: int = 128
) -> Any:
    """Tokenise QA examples for evaluation, keeping ``example_id`` and ``offset_mapping``.

    Offsets of tokens outside the context are ``None`` so that :func:`postprocess_qa` only
    considers context spans. Drop these two columns before feeding the model.
    """
    import datasets

    _require_fast(tokenizer, "encode_qa_eval")
    _require_examples(examples, "encode_qa_eval")
    enc, ctx_id = _tokenize_qa(tokenizer, examples, max_length, doc_stride)
    sample_map = enc["overflow_to_sample_mapping"]
    example_ids: list[str] = []
    offset_mapping: list[list[Any]] = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        example_ids.append(str(examples[sample_map[i]]["id"]))
        seq_ids = enc.sequence_ids(i)
        offset_mapping.append(
            [list(o) if seq_ids[k] == ctx_id else None for k, o in enumerate(offsets)]
        )
    columns = _base_columns(enc)
    columns["example_id"] = example_ids
    columns["offset_mapping"] = offset_mapping
    return datasets.Dataset.from_dict(columns)


def _column(features: Any, name: str) -> list[Any]:
    """One column of a Dataset, a dict of columns, or a list of feature dicts, as a list."""
    try:
        if isinstance(features, Mapping) or hasattr(features, "column_names"):
            return list(features[name])
        return [f[name] for f in features]
    except KeyError:
        raise DataError(f"postprocess_qa: features: column {name!r} missing (use encode_qa_eval)") from None


def snap_to_words(context: str, start: int, end: int) -> tuple[int, int]:
    """Widen the character span ``[start, end)`` of ``context`` so it neither begins nor ends inside a word.

    A word is a run of letters and digits (any script), so a span that a sub-word tokenizer cut in the
    middle of "Constitución" is widened to the whole word, as the SQuAD evaluation (which compares
    whole words) expects; punctuation next to the span is not added. Surrounding white space is trimmed.
    """
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    if start >= end:
        return start, end
    while start > 0 and context[start - 1].isalnum() and context[start].isalnum():
        start -= 1
    while end < len(context) and context[end].isalnum() and context[end - 1].isalnum():
        end += 1
    return start, end


def postprocess_qa_scored(
    examples: Sequence[Example],
    features: Any,
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_len: int = 30,
    snap_words: bool = True,
) -> dict[str, dict[str, Any]]:
    """Best answer per example id: ``{"text", "start", "score"}`` (character start in the context, and
    the span's start + end logit; text ``""``, start -1 and score None when no span is valid).

    ``features`` is the output of :func:`encode_qa_eval` (a Dataset or a list of dicts with
    ``example_id`` and ``offset_mapping``); the logits have one row per feature (rows may be padded
    past a feature's length). With ``snap_words`` the chosen span is widened to word boundaries
    (:func:`snap_to_words`).
    """
    feature_ids = _column(features, "example_id")
    offsets_all = _column(features, "offset_mapping")
    if len(start_logits) != len(feature_ids) or len(end_logits) != len(feature_ids):
        raise DataError(
            f"postprocess_qa: {len(feature_ids)} features but {len(start_logits)} start / "
            f"{len(end_logits)} end logit rows"
        )
    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for i, ex_id in enumerate(feature_ids):
        by_example[str(ex_id)].append(i)
    predictions: dict[str, dict[str, Any]] = {}
    for example in examples:
        ex_id = str(example["id"])
        context = example["context"]
        best_score = -np.inf
        best: tuple[int, int] | None = None
        for fi in by_example.get(ex_id, []):
            offsets = offsets_all[fi]
            s_log = np.asarray(start_logits[fi])[: len(offsets)]
            e_log = np.asarray(end_logits[fi])[: len(offsets)]
            s_idx = np.argsort(s_log)[::-1][:n_best]
            e_idx = np.argsort(e_log)[::-1][:n_best]
            for s in s_idx:
                if offsets[s] is None:
                    continue
                for e in e_idx:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_len:
                        continue
                    score = float(s_log[s] + e_log[e])
                    if score > best_score:
                        best_score = score
                        best = (offsets[s][0], offsets[e][1])
        if best is None:
            predictions[ex_id] = {"text": "", "start": -1, "score": None}
            continue
        lo, hi = snap_to_words(context, *best) if snap_words else best
        predictions[ex_id] = {"text": context[lo:hi], "start": lo, "score": best_score}
    return predictions


def postprocess_qa(
    examples: Sequence[Example],
    features: Any,
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_len: int = 30,
    snap_words: bool = True,
) -> dict[str, str]:
    """Best answer text per example id from per-feature start/end logits (see :func:`postprocess_qa_scored`).

    Spans score ``start + end`` logit and are widened to word boundaries of the context; an example
    with no valid span gets ``""``.
    """
    scored = postprocess_qa_scored(examples, features, start_logits, end_logits, n_best, max_answer_len, snap_words)
    return {ex_id: p["text"] for ex_id, p in scored.items()}


def encode_mlm(tokenizer: Any, texts: Sequence[str], max_length: int = 128, packing: bool = True) -> Any:
    """Tokenise unlabelled ``texts`` for masked-LM training into a ``datasets.Dataset``.

    ``packing`` (the Hugging Face ``run_mlm`` recipe): every text is tokenised with its special tokens,
    the token streams are concatenated and cut into blocks of ``max_length`` (the last block may be
    shorter), so no position is wasted on padding. Without it, each text is one example truncated to
    ``max_length``. Columns: ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (so special
    tokens are never masked) and ``token_type_ids`` when the tokenizer returns them.
    """
    import datasets

    if not texts:
        raise DataError("encode_mlm: no texts to encode")
    if packing:
        enc = tokenizer(list(texts), truncation=False, return_special_tokens_mask=True, verbose=False)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    names = [k for k in ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids") if k in enc]
    if not packing:
        return datasets.Dataset.from_dict({k: enc[k] for k in names})
    flat: dict[str, list[int]] = {k: [t for row in enc[k] for t in row] for k in names}
    total = len(flat["input_ids"])
    return datasets.Dataset.from_dict(
        {k: [flat[k][i : i + max_length] for i in range(0, total, max_length)] for k in names}
    )
