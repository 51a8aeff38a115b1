"""Cross-lingual zero-shot transfer: train on English, evaluate the same model unchanged on every language.

Suites (files relative to the data directory; ``{lang}`` is the language code):

- ``xnli``: ``xtreme/xnli/dev-{lang}.tsv``. The XTREME copy has no training split, and its rows are
  translations of each other (row i is the same pair in every language). So a seeded set of
  ``eval_size`` row indices is held out and evaluated in every language, and the English training (and
  dev) examples come from the other rows only: no test pair is seen in training in any language.
- ``pawsx``: ``xtreme/pawsx/train-en.tsv`` for training, ``xtreme/pawsx/test-{lang}.tsv`` for evaluation
  (XTREME layout: sentence1, sentence2, label; no header).
- ``xquad``: training on SQuAD v1.1 (``qa/squad_v1.1_dev/dev-v1.1.json``, one half of the official dev
  set by article), evaluation on the XQuAD questions (``qa/xquad/xquad.{lang}.json``, with answers) whose
  articles are in the other half (``test-v1.1.json``): 561 questions per language.

A language whose file is missing is named in a warning and reported as missing; the others carry on.
Any multilingual model works (``--model xlm-roberta-base``); the bundled MiniLM is English-only.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

XNLI_LANGUAGES = ("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
PAWSX_LANGUAGES = ("en", "de", "es", "fr", "ja", "ko", "zh")
XQUAD_LANGUAGES = ("en", "ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")


@dataclass(frozen=True)
class Suite:
    """A zero-shot benchmark: its task, languages and files."""

    name: str
    kind: str  # classification | qa
    languages: tuple[str, ...]
    eval_file: str  # pattern with {lang}
    train_file: str | None = None  # None: English rows of eval_file not held out (parallel rows)
    heldout_file: str | None = None  # QA: a file whose question ids are the evaluation set
    text_columns: tuple[str, ...] = ("premise", "hypothesis")
    labels: tuple[str, ...] | None = ("entailment", "neutral", "contradiction")
    fieldnames: tuple[str, ...] | None = ("premise", "hypothesis", "label")

    def spec(self, lang: str, file: str | Path | None = None) -> Any:
        """The TaskSpec of one language's evaluation file (or ``file``)."""
        from ..data.tasks import TaskSpec

        path = str(file) if file is not None else self.eval_file.format(lang=lang)
        if self.kind == "qa":
            return TaskSpec(f"{self.name}_{lang}", "qa", ("question", "context"), None, None, "squad_f1",
                            {"test": path}, fmt="squad")
        return TaskSpec(f"{self.name}_{lang}", "classification", self.text_columns, "label", self.labels, "accuracy",
                        {"test": path}, fmt="tsv_noheader", fieldnames=self.fieldnames)


SUITES: dict[str, Suite] = {
    "xnli": Suite("xnli", "classification", XNLI_LANGUAGES, "xtreme/xnli/dev-{lang}.tsv"),
    "pawsx": Suite("pawsx", "classification", PAWSX_LANGUAGES, "xtreme/pawsx/test-{lang}.tsv",
                   train_file="xtreme/pawsx/train-en.tsv", text_columns=("sentence1", "sentence2"),
                   labels=("0", "1"), fieldnames=("sentence1", "sentence2", "label")),
    "xquad": Suite("xquad", "qa", XQUAD_LANGUAGES, "qa/xquad/xquad.{lang}.json",
                   train_file="qa/squad_v1.1_dev/dev-v1.1.json", heldout_file="qa/squad_v1.1_dev/test-v1.1.json"),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"suites: unknown zero-shot suite {name!r}; known: {sorted(SUITES)}")
    return SUITES[name]


def _load(suite: Suite, path: Path, lang: str) -> list[dict[str, Any]]:
    from ..data.tasks import load_split

    return load_split(suite.spec(lang, path), "test", None)


def english_data(suite: Suite, data_dir: str | Path, *, seed: int, train_size: int | None, dev_size: int,
                 eval_size: int | None = 1000) -> tuple[list, list, Any]:
    """(train, dev, heldout): English training and dev examples, and what to evaluate in every language
    (row indices for parallel files, question ids for QA, None when the evaluation files are separate)."""
    from ..data.sampling import carve_dev, subsample

    root = Path(data_dir).resolve()  # the per-language specs take absolute paths
    heldout: Any = None
    if suite.train_file is None:
        path = root / suite.eval_file.format(lang="en")
        if not path.is_file():
            raise DataError(f"{path}: file not found (the English file of {suite.name}, needed for training)")
        rows = _load(suite, path, "en")
        n_eval = min(eval_size or len(rows) // 2, len(rows) // 2)
        idx = np.random.default_rng(seed).choice(len(rows), n_eval, replace=False)
        heldout = {int(i) for i in idx}
        pool = [ex for i, ex in enumerate(rows) if i not in heldout]
    else:
        path = root / suite.train_file
        if not path.is_file():
            raise DataError(f"{path}: file not found (the English training file of {suite.name})")
        pool = _load(suite, path, "en")
        if suite.heldout_file:
            ids_path = root / suite.heldout_file
            if not ids_path.is_file():
                raise DataError(f"{ids_path}: file not found (the held-out articles of {suite.name})")
            heldout = {str(ex["id"]) for ex in _load(suite, ids_path, "en")}
    strat = suite.kind == "classification"
    train, dev = carve_dev(pool, dev_size, seed, stratify=strat)
    if train_size and len(train) > train_size:
        train = subsample(train, train_size, seed, stratify=strat)
    return train, dev, heldout


def select(suite: Suite, examples: Sequence[dict[str, Any]], heldout: Any) -> list[dict[str, Any]]:
    """The evaluation examples of one language: held-out row indices, held-out question ids, or all."""
    if heldout is None:
        return list(examples)
    if suite.kind == "qa":
        return [ex for ex in examples if str(ex["id"]) in heldout]
    return [ex for i, ex in enumerate(examples) if i in heldout]


def eval_sets(suite: Suite, data_dir: str | Path, heldout: Any = None, *, languages: Sequence[str] | None = None,
              log: Any = None) -> tuple[dict[str, tuple[Any, list[dict[str, Any]]]], list[str]]:
    """The evaluation examples of every language of ``suite``: ({lang: (spec, examples)}, missing files). A
    missing file is named in a warning and skipped; a file holding none of the held-out examples is an error."""
    sets: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    missing: list[str] = []
    for lang in languages or suite.languages:
        path = Path(data_dir).resolve() / suite.eval_file.format(lang=lang)
        if not path.is_file():
            message = f"{path}: file not found: {suite.name} language {lang!r} skipped"
            warnings.warn(message, stacklevel=2)
            if log:
                log(f"WARNING: {message}")
            missing.append(str(path))
            continue
        examples = select(suite, _load(suite, path, lang), heldout)
        if not examples:
            raise DataError(f"{path}: none of the held-out {suite.name} examples are in this file")
        sets[lang] = (suite.spec(lang, path), examples)
    return sets, missing


def zero_shot_eval(model: Any, tokenizer: Any, suite: Suite, data_dir: str | Path, heldout: Any = None, *,
                   languages: Sequence[str] | None = None, max_length: int = 128, batch_size: int = 64,
                   precision: str = "fp32", log: Any = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Evaluate ``model`` unchanged on every language of ``suite`` (:func:`eval_sets`); returns
    ({lang: {score, n, ...}}, missing files)."""
    from ..training import evaluate

    sets, missing = eval_sets(suite, data_dir, heldout, languages=languages, log=log)
    results: dict[str, dict[str, Any]] = {}
    for lang, (spec, examples) in sets.items():
        metrics = evaluate(model, tokenizer, spec, examples, batch_size, max_length, max(1, max_length // 4),
                           precision=precision)
        results[lang] = {"score": float(metrics["score"]), "n": len(examples), "metric": spec.metric}
        if log:
            log(f"zero-shot {suite.name} {lang}: {spec.metric} {metrics['score']:.4f} ({len(examples)} examples)")
    return results, missing


def zero_shot_table(rows: Sequence[dict[str, Any]], languages: Sequence[str], systems: Sequence[str],
                    scale: float = 100.0) -> list[dict[str, Any]]:
    """Per system: mean ± std over seeds of the score per language, the mean over non-English languages and
    the English-minus-others gap."""
    from ..reporting import format_mean_std, mean_std

    out = []
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        line: dict[str, Any] = {"system": system, "seeds": len(mine)}
        for lang in languages:
            vals = [r["languages"][lang]["score"] for r in mine if lang in r["languages"]]
            line[lang] = format_mean_std(vals, 1, scale) if vals else "missing"
        others = [mean_std([scale * v["score"] for k, v in r["languages"].items() if k != "en"])[0] for r in mine
                  if any(k != "en" for k in r["languages"])]
        en = [scale * r["languages"]["en"]["score"] for r in mine if "en" in r["languages"]]
        line["mean (non-en)"] = f"{mean_std(others)[0]:.1f}" if others else "–"
        line["en - others"] = f"{mean_std(en)[0] - mean_std(others)[0]:.1f}" if others and en else "–"
        out.append(line)
    return out


def zero_shot_plot(path: str | Path, rows: Sequence[dict[str, Any]], languages: Sequence[str],
                   systems: Sequence[str], title: str = "") -> Path:
    """Score per language (bars), one colour per system; mean ± std over seeds."""
    from ..reporting import grouped_bar_plot, mean_std

    present = [lang for lang in languages if any(lang in r["languages"] for r in rows)]
    series = {}
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if mine:
            stats = [mean_std([100 * r["languages"][lang]["score"] for r in mine if lang in r["languages"]])
                     for lang in present]
            series[system] = ([m for m, _ in stats], [s for _, s in stats])
    return grouped_bar_plot(path, present, series, title=title or "zero-shot score per language (x100)",
                            ylabel="score x100")
