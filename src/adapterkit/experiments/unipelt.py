"""UniPELT (Mao et al., ACL 2022) against its components and full fine-tuning, each with and without TAPT.

Systems: ``full`` (full fine-tuning), ``adapter`` (Pfeiffer bottleneck 48), ``prefix`` (length 10, 512-wide
tanh reparameterisation), ``lora`` (r=8 on query and value), ``prompt`` (10 soft tokens), ``unipelt``
(gated A+P+L) and ``unipelt_prompt`` (UniPELT plus 10 soft tokens); each trained from the base model and,
with ``--tapt``, from a TAPT model (Gururangan et al. 2020: masked-LM pretraining continued on the task's
own training text, labels unused; one TAPT model per task and seed, cached under ``OUTPUT/tapt``). Beside
them, every table shows the trivial baseline ``majority`` (the majority class, the training mean for
regression; QA: the first words of the context, as many as the median training answer) and ``probe``, a
linear probe on the frozen base model (logistic/ridge regression; QA: the span head trained on the frozen
backbone).

Parts, chosen by ``--tasks``:

- GLUE tasks (``sst2``, ``cola``, ``mrpc``, ``stsb``, ``rte``: those with a training split in
  ``../shared/data``): K training examples (``--k-shots``, drawn with the seed), the next ``--dev-size``
  training examples as dev (epoch selection and early stopping), the official dev set as test;
- domain tasks ``chemprot`` and ``citation_intent`` (ACL-ARC): the official train/dev/test splits,
  micro- and macro-F1 reported;
- ``xquad_en_split``: XQuAD English split by article (train/dev/test, no article in two splits), EM/F1, and
  the trained model evaluated zero-shot on the same test articles in German (``--zero-shot-languages``).

Every run is logged to ``runs.jsonl`` (a rerun resumes; ``--report-only`` writes the report from the log).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import opt
from ..errors import ConfigError
from .common import check_systems, option_groups
from .common import learning_rates as common_learning_rates

DESCRIPTION = "UniPELT vs adapter, prefix, LoRA, prompt and full fine-tuning, each with and without TAPT"
BASELINES = ("majority", "probe")
TRAINED = ("full", "adapter", "prefix", "lora", "prompt", "unipelt", "unipelt_prompt")
SYSTEMS = (*BASELINES, *TRAINED)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "adapter": ("pfeiffer", {"bottleneck_size": 48}),
    "prefix": ("prefix", {"prefix_length": 10, "reparameterize": True, "bottleneck_size": 512, "learning_rate": 3e-4}),
    "lora": ("lora", {"r": 8, "alpha": 16.0, "targets": ["query", "value"]}),
    "prompt": ("prompt", {"num_tokens": 10}),
    "unipelt": ("unipelt", {}),
    "unipelt_prompt": ("unipelt_prompt", {}),
}
"""System -> (adapterkit method, its fields): the UniPELT paper's component settings. The prefix trains at its
own rate (3e-4; the paper uses 2e-4), below the run's: at 1e-3 and 3e-3 it never left the constant prediction
on ACL-ARC and ChemProt (the reparameterised prefix takes over attention), while the head at 3e-4 learns too
slowly for 20 epochs (docs/results/unipelt.md)."""
METHODS_OF_UNLOGGED_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "adapter": ("pfeiffer", {"bottleneck_size": 48}),
    "prefix": ("prefix", {"prefix_length": 10, "reparameterize": True, "bottleneck_size": 512}),
    "lora": ("lora", {"r": 8, "alpha": 16.0, "targets": ["query", "value"]}),
    "prompt": ("prompt", {"num_tokens": 10}),
    "unipelt": ("unipelt", {}),
    "unipelt_prompt": ("unipelt_prompt", {}),
}
"""``METHODS`` of the logs written before the method fields were recorded in ``settings.json``."""
LRS = {"full": 1e-4, "adapter": 3e-3, "prefix": 3e-3, "lora": 1e-3, "prompt": 3e-2, "unipelt": 1e-3,
       "unipelt_prompt": 1e-3}
"""Default learning rate per trained system (small training sets, batch 16, up to 20 epochs): the run's rate,
for the head and every adapter without a rate of its own (the prefix has one, see ``METHODS``)."""
LRS_OF_UNLOGGED_RUNS = {"full": 1e-4, "adapter": 3e-3, "prefix": 3e-3, "lora": 1e-3, "prompt": 3e-2,
                        "unipelt": 1e-3, "unipelt_prompt": 1e-3}
"""The rates of logs written before the learning rates were recorded in ``settings.json``."""
GLUE = ("sst2", "cola", "mrpc", "stsb", "rte")
DOMAIN = ("chemprot", "citation_intent")
QA = ("xquad_en_split",)
PAPER_GLUE_AVG = {100: {"full": 60.02, "adapter": 58.24, "prefix": 47.99, "lora": 49.26, "unipelt": 62.59},
                  1000: {"full": 71.93, "adapter": 70.95, "prefix": 71.81, "lora": 72.28, "unipelt": 73.31}}
"""Mao et al. (2022), Table 1: GLUE averages (8 tasks) with BERT-base at K training examples; not our model."""
HEAD_LR = 1e-2


def part_of(task: str) -> str:
    """``glue``, ``domain`` or ``qa``."""
    for part, tasks in (("glue", GLUE), ("domain", DOMAIN), ("qa", QA)):
        if task in tasks:
            return part
    raise ConfigError(f"tasks: {task!r}: not part of this experiment; use any of {[*GLUE, *DOMAIN, *QA]}")


@dataclass
class Options:
    """UniPELT experiment options besides the common ones."""

    k_shots: list[int] = opt([100, 500, 1000], "GLUE: comma-separated training sizes K")
    dev_size: int = opt(1000, "GLUE: dev = the training examples after the K drawn (selects the epoch)")
    test_size: int | None = opt(None, "cap on test examples (none: all)")
    domain_train_size: int | None = opt(None, "domain tasks: cap on training examples (none: the whole train split)")
    tapt: Literal["both", "with", "without"] = opt("both", "train each system from the base model (without), from "
                                                   "its TAPT model (with), or both")
    tapt_epochs: float = opt(3.0, "TAPT: masked-LM epochs over the task's training text")
    tapt_learning_rate: float = opt(1e-4, "TAPT: learning rate")
    tapt_max_texts: int | None = opt(20000, "TAPT: cap on training texts (drawn with the seed; none: all)")
    lrs: str | None = opt(None, "per-system learning rates, e.g. unipelt=5e-4,full=2e-5 (defaults: "
                          + ", ".join(f"{k} {v:g}" for k, v in LRS.items()) + "; --learning-rate sets them all)")
    qa_max_length: int = opt(256, "QA: maximum tokens per window (question + context)")
    zero_shot_languages: list[str] = opt(["de"], "QA: XQuAD languages the English-trained model is evaluated on")
    gate_reports: bool = opt(True, "UniPELT systems: write per-layer mean gate values on the test set (gates.json, "
                             "gates.png) under OUTPUT/gates")


OPTIONS = option_groups(
    {"output_dir": "runs/unipelt", "tasks": [*GLUE, *DOMAIN, *QA], "seeds": [42, 92, 111, 245, 651],
     "systems": list(SYSTEMS)},
    Options,
    {"epochs": 20.0, "learning_rate": None, "batch_size": 16, "patience": 5},
    {"learning_rate": "one learning rate for every trained system (default: per system, see --lrs)"},
    ("patience",),
    head=False,
)
SETTINGS = ("model", "epochs", "batch_size", "max_length", "qa_max_length", "dev_size",
            "test_size", "domain_train_size", "tapt_epochs", "tapt_learning_rate", "tapt_max_texts", "patience",
            "precision", "doc_stride")
"""Options that change results: a log is never extended under other values (see ResultLog). The learning
rates are recorded resolved, as ``system_lrs`` (defaults with ``--learning-rate`` and ``--lrs`` applied), and
the systems' method fields as ``methods``."""
KEYS = ("task", "k", "seed", "system", "tapt")


def learning_rates(opts: dict[str, Any]) -> dict[str, float]:
    """``LRS`` with ``--learning-rate`` and ``--lrs`` applied (see :func:`.common.learning_rates`)."""
    return common_learning_rates(opts, LRS)


def _rates_before_they_were_logged(out: Path) -> dict[str, float]:
    """The per-system rates of a log whose ``settings.json`` predates ``system_lrs``: the defaults of then, with
    the ``lr`` and ``lrs`` options it recorded."""
    from ..config import read_json

    file = out / "settings.json"
    stored = read_json(file) if file.is_file() else {}
    return common_learning_rates({"learning_rate": stored.get("lr"), "lrs": stored.get("lrs")},
                                 LRS_OF_UNLOGGED_RUNS)


def _methods_record(methods: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """``METHODS`` as ``settings.json`` records it."""
    return {system: {"method": method, **fields} for system, (method, fields) in methods.items()}


def _own_rate_note(system: str) -> str:
    """`` (its adapter at R)`` when ``system``'s method fields give its adapter a rate of its own, else ``""``."""
    own = METHODS.get(system, ("", {}))[1].get("learning_rate")
    return f" (its adapter at {own:g})" if own else ""


def tapt_modes(opts: dict[str, Any]) -> list[bool]:
    """[False, True] for ``both``; [True] for ``with``; [False] for ``without``."""
    mode = opts.get("tapt") or "both"
    if mode not in ("both", "with", "without"):
        raise ConfigError(f"tapt: {mode!r}: use both, with or without")
    return {"both": [False, True], "with": [True], "without": [False]}[mode]


def _check(opts: dict[str, Any]) -> None:
    check_systems(opts["systems"], SYSTEMS)
    if not opts["tasks"]:
        raise ConfigError("tasks: none given")
    for task in opts["tasks"]:
        part_of(task)
    for name in ("k_shots",):
        if any(int(k) < 1 for k in opts[name]):
            raise ConfigError(f"{name}: every K must be >= 1, got {opts[name]}")
    if int(opts["dev_size"]) < 1:
        raise ConfigError(f"dev_size: must be >= 1, got {opts['dev_size']}")
    tapt_modes(opts)
    learning_rates(opts)


# --- data ------------------------------------------------------------------------------------------


def _cap(examples: list, size: int | None, seed: int) -> list:
    from ..data.sampling import subsample

    return subsample(examples, size, seed) if size and len(examples) > size else examples


def split(task: str, k: int | None, seed: int, opts: dict[str, Any], data_dir: Any) -> tuple[list, list, list]:
    """(train, dev, test) of ``task``: GLUE K-shot with the next ``dev_size`` as dev and the official dev as test;
    the domain tasks' and XQuAD's own splits."""
    from ..data.tasks import get_task, load_task

    spec = get_task(task)
    if part_of(task) == "glue":
        data = load_task(spec, data_dir, ["train", "dev"])
        train = list(data["train"])
        need = int(k or 0) + int(opts["dev_size"])
        if len(train) < need:
            raise ConfigError(f"k_shots: {task} has {len(train)} training examples, fewer than K={k} + dev_size="
                              f"{opts['dev_size']}")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        picked = [train[i] for i in order[:need]]
        return picked[: int(k or 0)], picked[int(k or 0):], _cap(data["dev"], opts.get("test_size"), seed)
    data = load_task(spec, data_dir, ["train", "dev", "test"])
    return (_cap(data["train"], opts.get("domain_train_size"), seed), data["dev"],
            _cap(data["test"], opts.get("test_size"), seed))


def zero_shot_sets(languages: list[str], data_dir: Any) -> dict[str, tuple[Any, list]]:
    """Language -> (spec, test examples) of XQuAD split by article (the English test articles)."""
    from ..data.tasks import get_task, load_task

    out = {}
    for lang in languages:
        spec = get_task(f"xquad_{lang}_split")
        out[lang] = (spec, load_task(spec, data_dir, ["test"])["test"])
    return out


# --- TAPT ------------------------------------------------------------------------------------------


def tapt_model(task: str, seed: int, opts: dict[str, Any], data_dir: Any) -> tuple[str, float]:
    """(model directory, seconds) of the TAPT model of ``task`` and ``seed``, pretrained on the task's training
    text once and cached in ``OUTPUT/tapt/TASK_seedSEED``."""
    from ..console import say
    from ..data.tasks import get_task
    from ..io import atomic_write_json
    from ..options import build
    from ..pretraining import pretrain, task_texts
    from ..training import TrainConfig

    directory = Path(opts["output_dir"]) / "tapt" / f"{task}_seed{seed}"
    done = directory / "tapt.json"
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        return str(directory / "model"), float(record["train_seconds"])
    texts = task_texts(get_task(task), data_dir, "train")
    cap = opts.get("tapt_max_texts")
    if cap and len(texts) > cap:
        texts = random.Random(seed).sample(texts, int(cap))
    config = build(TrainConfig, opts, output_dir=str(directory), seed=seed, epochs=float(opts["tapt_epochs"]),
                   learning_rate=float(opts["tapt_learning_rate"]), train_mode="full", eval_each_epoch=False,
                   patience=None, save_total_limit=1, save_optimizer=False, cleanup_checkpoints=True, resume=False,
                   logging_steps=50)
    say(f"TAPT [{task} seed={seed}]: masked-LM pretraining on {len(texts)} training texts of {task}")
    result = pretrain(texts, config, model=opts.get("model"), name=f"TAPT {task} seed={seed}", say=say)
    atomic_write_json(done, {"task": task, "seed": seed, "texts": len(texts), "train_seconds": result.train_seconds,
                             "global_step": result.global_step, "train_loss": result.train_loss,
                             "tokens_per_second": result.tokens_per_second})
    return result.output, float(result.train_seconds)


# --- one run -----------------------------------------------------------------------------------------


def _qa_first_words(spec: Any, data: tuple[list, list, list], zero_shot: dict[str, tuple[Any, list]]
                    ) -> dict[str, Any]:
    """QA's trivial baseline (:func:`adapterkit.analysis.systems.first_words_answers`) on dev, test and the
    zero-shot languages."""
    from ..analysis.systems import first_words_answers, first_words_count, qa_references
    from ..metrics import compute_metrics

    train, dev, test = data

    def score(examples: list) -> dict[str, float] | None:
        return compute_metrics(spec, first_words_answers(train, examples), qa_references(examples)) if examples \
            else None

    dev_m, test_m = score(dev), score(test)
    return {"dev_score": dev_m["score"] if dev_m else None, "test": test_m, "trainable": 0, "train_seconds": 0.0,
            "best_epoch": None, "history": [], "note": f"first {first_words_count(train)} context words",
            "zero_shot": {lang: score(examples) for lang, (_, examples) in zero_shot.items()}}


def run_one(task: str, spec: Any, system: str, tapt_dir: str | None, data: tuple[list, list, list],
            opts: dict[str, Any], *, seed: int, lr: float | None, label: str,
            zero_shot: dict[str, tuple[Any, list]]) -> dict[str, Any]:
    """Train and test one system; its result row (test metrics, zero-shot metrics, parameters, time)."""
    from transformers import set_seed

    from ..options import build
    from ..registry import get_method
    from ..runner import (
        NO_CHECKPOINTS,
        clamp_max_length,
        evaluate_split,
        load_model,
        run_baseline,
        run_system,
    )
    from ..training import TrainConfig

    out = Path(opts["output_dir"])
    qa = spec.kind == "qa"
    if system == "majority" and qa:
        return _qa_first_words(spec, data, zero_shot)
    set_seed(seed)
    adapted, tokenizer = load_model(spec, tapt_dir or opts.get("model"))
    mode = "full" if system == "full" else "head" if system == "probe" else "adapters"
    changes: dict[str, Any] = {"max_length": int(opts["qa_max_length"])} if qa else {}
    config = build(TrainConfig, opts, output_dir=str(out / "work" / label.replace(" ", "_")), seed=seed,
                   train_mode=mode, learning_rate=lr, logging_steps=max(1, len(data[0]) // opts["batch_size"]),
                   **{**NO_CHECKPOINTS, **changes})
    config = clamp_max_length(config, adapted.model, tokenizer)
    head = getattr(adapted, "head_config", None)
    pooling = {"pooling": None if qa or head is None else head.pooling}  # the TAPT model must pool as the base
    if system in BASELINES and not qa:
        row = run_baseline(system, adapted, tokenizer, spec, data, config, label=label)
        return {**pooling, **{k: row[k] for k in ("dev_score", "test", "trainable", "train_seconds", "best_epoch",
                                                  "history")}}
    if system in METHODS:
        method, fields = METHODS[system]
        adapted.add_adapter(system, get_method(method).from_dict(fields, f"system {system}"))
    if system == "probe":  # QA: the span head on the frozen backbone
        config = config.replace(learning_rate=HEAD_LR)
    gates = out / "gates" / label.replace(" ", "_") if opts.get("gate_reports") and system.startswith("unipelt") else None
    set_seed(seed)
    run = run_system(adapted, tokenizer, spec, data, config, label=label, test_source=f"{task} test",
                     gate_report=gates)
    row = run.row()
    result = {**pooling, "dev_score": row["dev_score"], "test": run.test, "trainable": row["trainable"],
              "train_seconds": row["train_seconds"], "best_epoch": row["best_epoch"], "history": row["history"]}
    if qa and zero_shot:
        result["zero_shot"] = {lang: evaluate_split(adapted, tokenizer, zs_spec, examples, config,
                                                    source=f"xquad_{lang}_split test")
                               for lang, (zs_spec, examples) in zero_shot.items()}
    return result


def run(opts: dict[str, Any]) -> int:
    """Run the grid (resumable), then write results.md, results.json and the plots."""
    from ..data.tasks import get_task, resolve_data_dir
    from .common import ResultLog, logged_settings

    _check(opts)
    rates = learning_rates(opts)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    out = Path(opts["output_dir"])
    # the resolved rates and the method fields are part of the protocol: a log is not extended under others
    log = ResultLog(out / "runs.jsonl",
                    {**logged_settings(opts, SETTINGS), "system_lrs": rates, "methods": _methods_record(METHODS)},
                    legacy={"system_lrs": _rates_before_they_were_logged(out),
                            "methods": _methods_record(METHODS_OF_UNLOGGED_RUNS)})
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    # seeds outermost: an experiment stopped early has whole seeds; within a cell the baselines first, then the
    # systems from the base model, then from the TAPT model
    plan = []
    for seed in opts["seeds"]:
        for task in opts["tasks"]:
            ks = [int(k) for k in opts["k_shots"]] if part_of(task) == "glue" else [None]
            for k in ks:
                for tapt in tapt_modes(opts):
                    plan += [(task, k, seed, s, tapt) for s in systems if not (tapt and s in BASELINES)]
    todo, progress = log.pending(KEYS, plan, "unipelt", opts["report_only"])
    cache: dict[tuple, tuple] = {}
    zero_shot = zero_shot_sets(opts["zero_shot_languages"], data_dir) if todo and any(
        part_of(t) == "qa" for t, *_ in todo) else {}
    for task, k, seed, system, tapt in todo:
        spec = get_task(task)
        if (task, k, seed) not in cache:
            cache.clear()
            cache[(task, k, seed)] = split(task, k, seed, opts, data_dir)
        data = cache[(task, k, seed)]
        label = f"{task} K={k if k is not None else 'all'} seed={seed} {system}{' +TAPT' if tapt else ''}"
        tapt_dir, tapt_seconds = tapt_model(task, seed, opts, data_dir) if tapt else (None, 0.0)
        progress.step(label)
        start = time.perf_counter()
        row = run_one(task, spec, system, tapt_dir, data, opts, seed=seed, lr=rates.get(system), label=label,
                      zero_shot=zero_shot)
        test = row.get("test") or {}
        log.add({"part": part_of(task), "task": task, "k": k, "seed": seed, "system": system, "tapt": tapt,
                 "lr": rates.get(system) if system in TRAINED else None, "test_score": test.get("score"),
                 "tapt_seconds": tapt_seconds, "train_examples": len(data[0]), "dev_examples": len(data[1]),
                 "test_examples": len(data[2]), "wall_seconds": round(time.perf_counter() - start, 1), **row})
        progress.finish()
    report(log.unique(KEYS), opts)
    return 0


# --- report ------------------------------------------------------------------------------------------


def _name(system: str, tapt: bool) -> str:
    return f"{system} +TAPT" if tapt else system


def _variants(rows: list[dict[str, Any]], systems: list[str]) -> list[tuple[str, bool]]:
    return [(s, t) for t in (False, True) for s in systems if any(r["system"] == s and r["tapt"] == t for r in rows)]


def _metric(row: dict[str, Any], key: str, lang: str | None = None) -> float | None:
    metrics = (row.get("zero_shot") or {}).get(lang) if lang else row.get("test")
    value = (metrics or {}).get(key)
    return None if value is None else float(value)


def _common_columns(mine: list[dict[str, Any]]) -> dict[str, str]:
    from ..reporting import mean_std

    return {"trainable": f"{int(mean_std([r['trainable'] for r in mine])[0]):,}" if mine else "–",
            "train_s": f"{mean_std([r['train_seconds'] for r in mine])[0]:.1f}" if mine else "–",
            "tapt_s": f"{mean_std([r.get('tapt_seconds') or 0.0 for r in mine])[0]:.1f}" if mine else "–"}


COMMON_HEADERS = {"trainable": "Trainable params", "train_s": "Train s (mean)", "tapt_s": "TAPT s (mean)"}


def _metric_table(rows: list[dict[str, Any]], systems: list[str], slots: list[tuple[str, str | None, str, str | None]],
                  plot_key: str, at_trivial: Callable[[dict[str, Any], str | None, str], bool]
                  ) -> tuple[list[dict[str, Any]], dict[str, tuple[list[float], list[float]]]]:
    """One row per system variant with a score cell x100 per ``(column, task or None for all, metric key,
    zero-shot language or None)`` slot, runs ``at_trivial`` marked; and ``{name: (means, stds)}`` x100 of the
    ``plot_key`` slots for the grouped-bar plot."""
    from ..reporting import mean_std
    from .common import score_cell

    table, series = [], {}
    for system, tapt in _variants(rows, systems):
        mine = [r for r in rows if r["system"] == system and r["tapt"] == tapt]
        cells: dict[str, Any] = {"system": _name(system, tapt)}
        means, stds = [], []
        for column, task, key, lang in slots:
            runs = [r for r in mine if (task is None or r["task"] == task) and _metric(r, key, lang) is not None]
            vals = [_metric(r, key, lang) for r in runs]
            cells[column] = score_cell(vals, 100.0, sum(at_trivial(r, lang, key) for r in runs))
            if key == plot_key:
                m, s = mean_std([100 * v for v in vals])
                means.append(m)
                stds.append(s)
        cells.update(_common_columns(mine))
        table.append(cells)
        series[_name(system, tapt)] = (means, stds)
    return table, series


def glue_tables(rows: list[dict[str, Any]], opts: dict[str, Any], systems: list[str]) -> tuple[list[str], dict]:
    """Per K: a table of test scores per task, the average over tasks (per seed, then mean ± std) and the
    paper's BERT-base averages; and ``{name: (ks, averages)}`` for the plot."""
    from ..data.tasks import get_task
    from ..reporting import markdown_table, mean_std
    from .common import score_cell, test_score_cell, trivial_note, trivial_runs

    tasks = [t for t in opts["tasks"] if part_of(t) == "glue"]
    text: list[str] = []
    series: dict[str, tuple[list[float], list[float]]] = {}
    if not tasks:
        return text, series
    glue = [r for r in rows if r["task"] in tasks]
    at_trivial = trivial_runs(glue, ("task", "k"))
    for k in [int(k) for k in opts["k_shots"]]:
        mine_k = [r for r in glue if r["k"] == k]
        if not mine_k:
            continue
        table = []
        for system, tapt in _variants(mine_k, systems):
            mine = [r for r in mine_k if r["system"] == system and r["tapt"] == tapt and r["test_score"] is not None]
            cells: dict[str, Any] = {"system": _name(system, tapt)}
            for task in tasks:
                cells[task] = test_score_cell([r for r in mine if r["task"] == task], at_trivial)
            per_seed = []
            for seed in opts["seeds"]:
                scores = {r["task"]: r["test_score"] for r in mine if r["seed"] == seed}
                if all(t in scores for t in tasks):
                    per_seed.append(sum(scores[t] for t in tasks) / len(tasks))
            cells["avg"] = score_cell(per_seed)
            paper = PAPER_GLUE_AVG.get(k, {}).get(system) if not tapt else None
            cells["paper"] = f"{paper:.2f}" if paper is not None else "–"
            cells.update(_common_columns(mine))
            table.append(cells)
            if per_seed:
                xs, ys = series.setdefault(_name(system, tapt), ([], []))
                xs.append(k)
                ys.append(100 * mean_std(per_seed)[0])
        columns = {"system": "System", **{t: f"{t} ({get_task(t).metric})" for t in tasks},
                   "avg": f"Avg ({len(tasks)} tasks)", "paper": "Paper avg, BERT-base, 8 tasks (not ours)",
                   **COMMON_HEADERS}
        text += [f"\n## GLUE, K = {k} training examples\n", markdown_table(table, columns), *trivial_note(table)]
    return text, series


def glue_task_series(rows: list[dict[str, Any]], opts: dict[str, Any], systems: list[str]
                     ) -> dict[str, dict[str, tuple[list[int], list[float], list[float]]]]:
    """``{task: {system: (ks, means, stds)}}``: each GLUE task's test score x100 against K, mean ± std over the
    seeds run at that K. Unlike the average over tasks, it needs no K to have every task done."""
    from ..reporting import mean_std

    out: dict[str, dict[str, tuple[list[int], list[float], list[float]]]] = {}
    for task in [t for t in opts["tasks"] if part_of(t) == "glue"]:
        mine_task = [r for r in rows if r["task"] == task and r["test_score"] is not None]
        for system, tapt in _variants(mine_task, systems):
            for k in sorted(int(k) for k in opts["k_shots"]):
                scores = [100 * r["test_score"] for r in mine_task
                          if r["k"] == k and r["system"] == system and r["tapt"] == tapt]
                if scores:
                    ks, means, stds = out.setdefault(task, {}).setdefault(_name(system, tapt), ([], [], []))
                    m, s = mean_std(scores)
                    ks.append(k)
                    means.append(m)
                    stds.append(s)
    return out


def domain_table(rows: list[dict[str, Any]], opts: dict[str, Any], systems: list[str]) -> tuple[list[str], dict]:
    """ChemProt and ACL-ARC: micro- and macro-F1 per system; and grouped-bar series of macro-F1."""
    from ..reporting import markdown_table
    from .common import trivial_note, trivial_runs

    tasks = [t for t in opts["tasks"] if part_of(t) == "domain"]
    mine_all = [r for r in rows if r["task"] in tasks]
    if not mine_all:
        return [], {}
    at_trivial = trivial_runs(mine_all, ("task", "k"))
    slots = [(f"{task}/{key}", task, key, None) for task in tasks for key in ("micro_f1", "macro_f1")]
    table, series = _metric_table(mine_all, systems, slots, "macro_f1", lambda row, lang, key: at_trivial(row))
    columns = {"system": "System", **{f"{t}/{key}": f"{t} {key.replace('_f1', '-F1')}" for t in tasks
                                      for key in ("micro_f1", "macro_f1")}, **COMMON_HEADERS}
    return ["\n## Domain tasks (official splits)\n", markdown_table(table, columns), *trivial_note(table)], series


def qa_table(rows: list[dict[str, Any]], opts: dict[str, Any], systems: list[str]) -> tuple[list[str], dict]:
    """XQuAD: EM/F1 on the English test articles and zero-shot on the same articles in other languages."""
    from ..reporting import markdown_table
    from .common import TRIVIAL_SYSTEMS, trivial_note

    mine_all = [r for r in rows if r["task"] in QA and r["task"] in opts["tasks"]]
    if not mine_all:
        return [], {}
    langs = list(opts["zero_shot_languages"])
    trivial = {(r["task"], r["seed"], lang, key): v for r in mine_all if r["system"] in TRIVIAL_SYSTEMS
               for lang in [None, *langs] for key in ("exact_match", "f1") if (v := _metric(r, key, lang)) is not None}

    def at_trivial(row: dict[str, Any], lang: str | None, key: str) -> bool:
        """The run scored exactly what the trivial baseline (the context's first words) scored on the same
        task, seed, language and metric."""
        base, value = trivial.get((row["task"], row["seed"], lang, key)), _metric(row, key, lang)
        return (row["system"] not in TRIVIAL_SYSTEMS and base is not None and value is not None
                and abs(value - base) <= 1e-9)
    slots = [(f"{lang or 'en'}/{key}", None, key, lang) for lang in [None, *langs] for key in ("exact_match", "f1")]
    table, series = _metric_table(mine_all, systems, slots, "f1", at_trivial)
    columns = {"system": "System", "en/exact_match": "EN EM", "en/f1": "EN F1",
               **{f"{lang}/{key}": f"{lang.upper()} {'EM' if key == 'exact_match' else 'F1'} (zero-shot)"
                  for lang in langs for key in ("exact_match", "f1")}, **COMMON_HEADERS}
    return ["\n## XQuAD (English train/dev/test by article; zero-shot on the same test articles)\n",
            markdown_table(table, columns), *trivial_note(table)], series


def report(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    """results.md (tables per part), results.json and the plots."""
    from ..console import say
    from ..reporting import grouped_bar_plot

    out = Path(opts["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r["seed"] in opts["seeds"] and r["task"] in opts["tasks"]]
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    rates = learning_rates(opts)
    text = [
        "# UniPELT, its components and full fine-tuning, with and without TAPT\n",
        f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}. Up to {opts['epochs']:g} epochs with early stopping "
        f"(patience {opts.get('patience')}) on dev, batch {opts['batch_size']}, max length {opts['max_length']} "
        f"(QA {opts['qa_max_length']}), precision {opts.get('precision', 'fp32')}; learning rates: "
        + ", ".join(f"{s} {rates[s]:g}{_own_rate_note(s)}" for s in systems if s in rates)
        + f". TAPT: {opts['tapt_epochs']:g} masked-LM epochs at lr {opts['tapt_learning_rate']:g} on at most "
        f"{opts.get('tapt_max_texts') or 'all'} training texts of the task, one TAPT model per task and seed. "
        f"GLUE: K training examples, the next {opts['dev_size']} as dev, the official dev set as test. Seeds: "
        f"{', '.join(map(str, opts['seeds']))}. Scores x100 (QA: EM/F1 in %), mean ± std over seeds (n = runs "
        f"done). `majority`: the trivial baseline (QA: the first words of the context); `probe`: a linear probe on "
        f"the frozen base model (QA: the span head trained on the frozen backbone). The paper's column is Mao et "
        f"al. (2022) with BERT-base on 8 GLUE tasks: a reference point, not a result of this model.\n",
    ]
    glue_text, glue_series = glue_tables(rows, opts, systems)
    domain_text, domain_series = domain_table(rows, opts, systems)
    qa_text, qa_series = qa_table(rows, opts, systems)
    text += glue_text + domain_text + qa_text
    plots = []
    if glue_series:
        plots.append(_glue_plot(out / "unipelt_glue.png", glue_series, opts))
    if len(opts["k_shots"]) > 1 and (task_series := glue_task_series(rows, opts, systems)):
        plots.append(_glue_task_plot(out / "unipelt_glue_tasks.png", task_series))
    if domain_series:
        tasks = [t for t in opts["tasks"] if part_of(t) == "domain"]
        plots.append(grouped_bar_plot(out / "unipelt_domain.png", tasks, domain_series,
                                      title="Domain tasks: test macro-F1 x100, mean ± std over seeds",
                                      ylabel="macro-F1 x100"))
    if qa_series:
        groups = ["en", *[f"{lang} (zero-shot)" for lang in opts["zero_shot_languages"]]]
        plots.append(grouped_bar_plot(out / "unipelt_qa.png", groups, qa_series,
                                      title="XQuAD test F1, mean ± std over seeds", ylabel="F1"))
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    say("\n".join(text))
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots))


def _glue_plot(path: Path, series: dict[str, tuple[list[float], list[float]]], opts: dict[str, Any]) -> Path:
    """GLUE average against K per system (TAPT dashed), with the paper's BERT-base averages as crosses."""
    from ..reporting import new_figure, save_figure

    fig, ax, path = new_figure(path, size=(7.5, 4.5))
    colors: dict[str, Any] = {}
    for name, (xs, ys) in series.items():
        system = name.removesuffix(" +TAPT")
        line = ax.plot(xs, ys, "--" if name.endswith("+TAPT") else "-", marker="o", label=name,
                       color=colors.get(system))
        colors.setdefault(system, line[0].get_color())
    for k, paper in PAPER_GLUE_AVG.items():
        for system, value in paper.items():
            if system in colors:
                ax.plot([k], [value], "x", color=colors[system], markersize=8)
    ax.set_xscale("log")
    ax.set_title("GLUE average test score x100 vs K (x: paper, BERT-base, 8 tasks)", fontsize=10)
    ax.set_xlabel("K (training examples)")
    ax.set_ylabel("average test score x100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def _glue_task_plot(path: Path, series: dict[str, dict[str, tuple[list[int], list[float], list[float]]]]) -> Path:
    """One panel per GLUE task: test score x100 against K per system (TAPT dashed), error bars = std over seeds."""
    from ..reporting import new_figure, save_figure

    fig, axes, path = new_figure(path, size=(4.2 * len(series), 4.2), panels=len(series))
    axes = axes if len(series) > 1 else [axes]
    names = list(dict.fromkeys(n.removesuffix(" +TAPT") for lines in series.values() for n in lines))
    for ax, (task, lines) in zip(axes, series.items(), strict=True):
        for name, (ks, means, stds) in lines.items():
            system = name.removesuffix(" +TAPT")
            ax.errorbar(ks, means, yerr=stds, fmt="--o" if name.endswith("+TAPT") else "-o", capsize=3,
                        label=name, color=f"C{names.index(system) % 10}")
        ax.set_xscale("log")
        ax.set_title(f"{task}: test score x100 vs K", fontsize=10)
        ax.set_xlabel("K (training examples)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score x100 (mean ± std over seeds)")
    axes[-1].legend(fontsize=7)
    return save_figure(fig, path)
