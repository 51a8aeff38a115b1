"""PHA (Zhao et al. 2023): multi-task training at several data sizes, then few-shot transfer to a held-out task.

**Grid** (the paper's Fig. 2 shape). For each training size N (examples per task) and seed, every system
trains on all ``--tasks`` at once (:mod:`adapterkit.training.multitask`: examples mixed in proportion to
task size, a head per task, the checkpoint with the best *mean* dev score kept) and is scored on each
task's test set. Data per task: ``--dev-size`` examples carved (per seed) from the training file select
the checkpoint; N training examples are drawn (per seed) from the rest; the official dev set is the test
set (capped at ``--test-size`` by a fixed draw, seed 32, the authors' data seed). QNLI ships without its
train split here, so its official dev set is split once (seed 32) into a test part (``--test-size``,
default 1000) and a training pool. Every system trains for the same number of epochs at a given N (passes
over the data): ``--epochs``, raised so that the joint run makes at least ``--min-steps`` optimizer steps.
Systems:

- ``majority``, ``probe``: per task, the most frequent training label (regression: the mean) and a linear
  probe on the frozen mean-pooled features; no gradient training;
- ``pfeiffer``: one Pfeiffer adapter (+ head) per task, each task trained alone (what HyperFormer's and
  PHA's tables call single-task adapters); each task keeps its own best epoch; parameters and time summed;
- ``shared``: one Pfeiffer adapter shared by all tasks, a head per task, trained jointly;
- ``full``: full fine-tuning, one backbone for all tasks, a head per task;
- ``hyperformer``: HyperFormer++ (one hypernetwork over task, layer and position embeddings);
- ``pha``: the prototype-based hyperadapter, with its instance and prototype contrastive losses.

**Transfer**. A PHA model trained on the source tasks (``--tasks`` without ``--holdout``, at
``--transfer-size`` per task) meets a new task (``--holdout``, and each of ``--transfer-tasks``) with k
examples per class (dev: another k per class from the training file; test: as in the grid, the official
test file where the task has one). ``pha`` fits only the new task's prototype (and its head), initialised
as ``--transfer-init`` says (:func:`adapterkit.methods.pha_transfer.transfer_to_task`); ``pha+hyper`` also
tunes the hypernetwork. Beside them: ``majority``, ``probe``, and a fresh ``pfeiffer`` adapter on the k
examples. When ``--tasks`` does not contain ``--holdout`` the grid's own PHA model at ``--transfer-size`` is
the source (no extra training).

Output (``--output-dir``): ``runs.jsonl`` (resumable), ``results.md`` (mean ± std over seeds, trainable
parameters, train time), ``results.json``, ``pha_sizes.png`` (mean test score over tasks against N per
system) and ``pha_transfer_TASK.png`` (score against k).
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import opt
from ..errors import ConfigError, DataError
from .common import learning_rates as common_learning_rates
from .common import option_groups

DESCRIPTION = "PHA vs HyperFormer++, per-task / shared adapters and full fine-tuning: multi-task sizes, then few-shot transfer"
SYSTEMS = ("majority", "probe", "pfeiffer", "shared", "full", "hyperformer", "pha")
TRANSFER_SYSTEMS = ("majority", "probe", "pfeiffer", "pha", "pha+hyper")
BASELINES = ("majority", "probe")
GENERATED = ("hyperformer", "pha")
LRS = {"pfeiffer": 3e-3, "shared": 3e-3, "full": 1e-4, "hyperformer": 3e-4, "pha": 3e-4, "pha_prototype": 1e-2,
       "pha+hyper": 3e-4}
"""Default learning rate per trained system (a few hundred steps at most, batch 32). The hypernetworks use the
authors' 3e-4: every weight of a generated adapter moves with all 64 inputs of its hypernetwork head, and at 1e-3 PHA's
training loss jumped to 7.8 in the first epoch on MiniLM (0.5 at 3e-4). ``pha_prototype``: the transfer system
``pha`` (the new prototype and head only); transfer ``pfeiffer`` uses ``pfeiffer``'s."""
DATA_SEED = 32
"""Seed of the fixed draws (test caps, QNLI's test/train split): the authors' ``data_seed``."""
KEYS = ("phase", "size", "target", "k", "seed", "system")


@dataclass
class Options:
    """PHA experiment options besides the common ones."""

    sizes: list[int] = opt([100, 500, 1000], "comma-separated training examples per task (N)")
    dev_size: int = opt(200, "dev examples per task, carved from its training file (select the checkpoint)")
    test_size: int | None = opt(1000, "cap on test examples per task (a fixed draw); QNLI: its test part")
    min_steps: int = opt(0, "raise the epochs of a grid cell so that the joint run makes at least this many steps")
    temperature: float = opt(1.0, "multi-task mixing: 1 = in proportion to task size; T > 1 flattens (p ∝ n^(1/T))")
    heads: Literal["per_task", "shared_labels"] = opt(
        "per_task", "task heads: one per task, or one per distinct label set (shared_labels)")
    lrs: str | None = opt(None, "per-system learning rates, e.g. pha=3e-3,full=5e-5 (defaults: "
                          + ", ".join(f"{k} {v:g}" for k, v in LRS.items()) + ")")
    pha_config: str | None = opt(None, "PHA fields as a JSON object (e.g. {\"prototypes\": \"running_mean\"})")
    hyperformer_config: str | None = opt(None, "HyperFormer++ fields as a JSON object")
    holdout: str | None = opt("rte", "GLUE task held out of the transfer source and transferred to (none: skip)")
    transfer_tasks: list[str] = opt(["citation_intent"], "other transfer targets (e.g. chemprot, citation_intent)")
    k_shots: list[int] = opt([4, 16, 32], "transfer: comma-separated examples per class")
    transfer_systems: list[str] = opt(list(TRANSFER_SYSTEMS), "transfer systems (default: all)")
    transfer_size: int | None = opt(None, "examples per source task of the transfer source (default: the largest N)")
    transfer_epochs: float = opt(20.0, "transfer: epochs on the k-shot set")
    transfer_init: Literal["nearest", "mean"] = opt(
        "nearest", "new prototype: the nearest trained prototype to the mean retriever embedding of the k-shot "
        "examples, or that mean itself")
    short_classes: Literal["split", "error"] = opt(
        "split", "transfer: a class with fewer than 2k examples (k for training, k for dev) is split in half "
        "between training and dev (split; ACL-ARC's rarest classes have 28-31 at k=32), or the run is refused "
        "before any training (error)")


OPTIONS = option_groups(
    {"output_dir": "runs/pha", "tasks": ["sst2", "cola", "mrpc", "stsb", "rte", "qnli"], "seeds": [42, 92, 111],
     "systems": list(SYSTEMS)},
    Options,
    {"epochs": 10.0, "learning_rate": None, "batch_size": 32, "lp_init": True},
    {"learning_rate": "one learning rate for every trained system (default: per system, see --lrs)",
     "lp_init": "every trained system's task heads start as linear probes on the frozen features (LP-FT), so that a "
     "few hundred steps are spent on the adapters, not on fitting random heads"},
    ("lp_init",),
    head=True,
)
SETTINGS = ("model", "epochs", "learning_rate", "lrs", "batch_size", "max_length", "precision", "pooling", "normalize",
            "dev_size", "test_size", "min_steps", "temperature", "heads", "pha_config", "hyperformer_config",
            "transfer_size", "transfer_epochs", "transfer_init", "backbone_dropout", "lp_init", "short_classes")
"""Options that change results: a log is never extended under other values (see ResultLog)."""


def learning_rates(opts: dict[str, Any]) -> dict[str, float]:
    """``LRS`` with ``--learning-rate`` and ``--lrs`` applied (see :func:`.common.learning_rates`)."""
    return common_learning_rates(opts, LRS)


def json_fields(opts: dict[str, Any], key: str) -> dict[str, Any]:
    """``--pha-config`` / ``--hyperformer-config``: a JSON object of method fields (empty when not given)."""
    from ..runner import adapter_overrides

    try:
        return adapter_overrides(opts.get(key))
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


# --- data -----------------------------------------------------------------------------------------


class TaskData:
    """A task's training pool and fixed test set, loaded once; per-seed dev/train draws from the pool."""

    def __init__(self, spec: Any, data_dir: Any, test_size: int | None) -> None:
        from ..data.sampling import carve_dev, subsample
        from ..data.tasks import load_task

        self.spec = spec
        data = load_task(spec, data_dir, [s for s in ("train", "dev", "test") if s in spec.splits])
        if data.get("train"):
            self.pool = list(data["train"])
            # GLUE: the official dev set is the test set; other tasks: their test file where they have one
            test = data.get("dev") if spec.name in GLUE_TASKS or not data.get("test") else data["test"]
        elif data.get("dev"):  # QNLI here: dev only -> a fixed test part and a training pool
            n_test = min(test_size or 1000, len(data["dev"]) // 2)
            self.pool, test = carve_dev(data["dev"], n_test, DATA_SEED, stratify=spec.kind == "classification")
        else:
            raise ConfigError(f"tasks: {spec.name}: needs a train or dev split (splits: {list(spec.splits)})")
        if test_size and len(test) > test_size:
            test = subsample(test, test_size, DATA_SEED)
        self.test = list(test or [])

    def grid_split(self, size: int, dev_size: int, seed: int) -> tuple[list, list]:
        """(train, dev): dev carved from the pool (the same for every N), then N training examples from the rest."""
        from ..data.sampling import carve_dev, subsample

        stratify = self.spec.kind == "classification"
        rest, dev = carve_dev(self.pool, min(dev_size, len(self.pool) // 2), seed, stratify=stratify)
        return subsample(rest, size, seed, stratify=stratify), dev

    def short_classes(self, k: int) -> dict[Any, int]:
        """Classes of the pool with fewer than 2k examples (k for training and k for dev): {label: count}."""
        counts = Counter(ex["label"] for ex in self.pool)
        return {lab: n for lab, n in sorted(counts.items()) if n < 2 * k}

    def require_k(self, k: int) -> None:
        """DataError naming the task, k and the classes when a class has fewer than 2k examples."""
        if few := self.short_classes(k):
            labels = list(self.spec.labels or [])
            detail = ", ".join(f"class {lab!r}{f' ({labels[lab]})' if isinstance(lab, int) and lab < len(labels) else ''}"
                               f" has {n}" for lab, n in few.items())
            raise DataError(f"{self.spec.name}: k_shots: k={k} needs {2 * k} examples per class (k for training, k "
                            f"for dev) but {detail} (--short-classes split uses them all)")

    def kshot_split(self, k: int, seed: int, short: str = "error") -> tuple[list, list]:
        """(train, dev): k examples per class for each, disjoint, from the pool. ``short``: ``error`` refuses a
        class with fewer than 2k examples; ``split`` gives half of such a class to training (the larger half)
        and the rest to dev."""
        import random

        from ..data.sampling import k_shot

        if short != "split":
            self.require_k(k)
        few = self.short_classes(k)
        enough = [ex for ex in self.pool if ex["label"] not in few]
        dev = k_shot(enough, k, seed)
        taken = {id(ex) for ex in dev}
        train = k_shot([ex for ex in enough if id(ex) not in taken], k, seed)
        rng = random.Random(seed)
        for label in few:
            mine = [ex for ex in self.pool if ex["label"] == label]
            rng.shuffle(mine)
            half = (len(mine) + 1) // 2
            train, dev = train + mine[:half], dev + mine[half:]
        return train, dev


GLUE_TASKS = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli", "qqp")


# --- systems --------------------------------------------------------------------------------------


def _model(spec: Any, opts: dict[str, Any]) -> tuple[Any, Any]:
    """The model with ``spec``'s head pooled as ``--pooling`` says; the model's own head (``hf``) becomes [CLS] through
    the pooler, as the multi-task heads do, so that every system has the same kind of head (and LP-FT works)."""
    from ..heads import own_head_config
    from ..runner import load_model
    from .common import head_of

    adapted, tokenizer = load_model(spec, opts.get("model"), head_of(opts))
    if adapted.pooled_head is None and spec.kind in ("classification", "regression"):
        adapted.set_head(own_head_config(adapted.model))
    return adapted, tokenizer


def build_multitask(system: str, mt_spec: Any, opts: dict[str, Any]) -> tuple[Any, Any, str, Any]:
    """(adapted, tokenizer, train_mode, extra_loss) of a multi-task ``system`` with task heads for ``mt_spec``."""
    from ..methods.bottleneck import PfeifferConfig
    from ..training.multitask import add_task_heads

    adapted, tokenizer = _model(mt_spec.tasks[0], opts)
    add_task_heads(adapted, mt_spec, opts.get("heads") or "per_task")
    if system in ("pfeiffer", "shared"):
        adapted.add_adapter(system, PfeifferConfig())
        return adapted, tokenizer, "adapters", None
    if system == "full":
        return adapted, tokenizer, "full", None
    if system in GENERATED:
        add_generated(adapted, system, mt_spec, opts)
        return adapted, tokenizer, "adapters", None
    raise ConfigError(f"systems: unknown system {system!r}; known: {list(SYSTEMS)}")


def add_generated(adapted: Any, system: str, mt_spec: Any, opts: dict[str, Any]) -> None:
    """Add the PHA / HyperFormer++ adapter for ``mt_spec``'s tasks (PHA's contrastive losses come with its outputs'
    loss: nothing else to add)."""
    from ..registry import get_method

    key = "pha_config" if system == "pha" else "hyperformer_config"
    fields = {"tasks": list(mt_spec.names), **json_fields(opts, key)}
    adapted.add_adapter(system, get_method(system).from_dict(fields, key))


def grid_epochs(opts: dict[str, Any], n_train: int) -> float:
    """Epochs of a grid cell: ``--epochs``, raised to reach ``--min-steps`` optimizer steps over ``n_train``."""
    per_epoch = max(1, math.ceil(n_train / opts["batch_size"]))
    return float(max(opts["epochs"], math.ceil(opts.get("min_steps") or 0) / per_epoch))


def train_config(opts: dict[str, Any], out: Path, label: str, **changes: Any) -> Any:
    from ..options import build
    from ..runner import NO_CHECKPOINTS
    from ..training import TrainConfig

    return build(TrainConfig, opts, output_dir=str(out / "work" / label.replace(" ", "_").replace("=", "")),
                 **{**NO_CHECKPOINTS, **changes})


def run_grid_cell(system: str, specs: list, data: dict[str, TaskData], size: int, seed: int, opts: dict[str, Any],
                  out: Path, rates: dict[str, float], label: str, keep: Path | None = None) -> dict[str, Any]:
    """One grid cell: ``system`` trained on every task at N = ``size``; per-task and mean test scores."""
    from transformers import set_seed

    from ..training.multitask import MultiTaskSpec, evaluate_tasks, train_multitask

    splits = {s.name: data[s.name].grid_split(size, opts["dev_size"], seed) for s in specs}
    tests = {s.name: data[s.name].test for s in specs}
    epochs = grid_epochs(opts, sum(len(tr) for tr, _ in splits.values()))
    if system in BASELINES:
        return _baseline_cell(system, specs, splits, tests, opts, out, seed, label)
    groups = [[s] for s in specs] if system == "pfeiffer" else [list(specs)]
    scores, devs, trainable, seconds, best = {}, {}, 0, 0.0, []
    for group in groups:
        mt = MultiTaskSpec(tuple(group))
        set_seed(seed)
        adapted, tokenizer, mode, extra = build_multitask(system, mt, opts)
        part = f"{label} {group[0].name}" if system == "pfeiffer" else label
        config = train_config(opts, out, part, seed=seed, epochs=epochs, train_mode=mode,
                              learning_rate=rates[system],
                              logging_steps=max(1, sum(len(splits[s.name][0]) for s in group) // opts["batch_size"]))
        adapted.set_train_mode(mode)
        result = train_multitask(adapted, tokenizer, mt, {s.name: splits[s.name][0] for s in group},
                                 {s.name: splits[s.name][1] for s in group}, config,
                                 temperature=float(opts.get("temperature") or 1.0), extra_loss=extra, name=part)
        test = evaluate_tasks(adapted, tokenizer, mt, tests, config)
        for s in group:
            scores[s.name] = test[s.name]["score"]
            devs[s.name] = result.metrics.get(f"{s.name}_score")
        trainable += result.trainable_parameters
        seconds += result.train_seconds
        best.append(result.best_epoch)
        if keep is not None and system == "pha":
            save_source(adapted, tokenizer, mt, keep)
    from ..console import say

    say(f"[{label}] test " + ", ".join(f"{t} {v:.4f}" for t, v in scores.items()))
    return {"scores": scores, "dev_scores": devs, "test_score": _mean(scores.values()),
            "dev_score": _mean(v for v in devs.values() if v is not None), "trainable": trainable,
            "train_seconds": round(seconds, 2), "best_epoch": best if len(best) > 1 else best[0], "epochs": epochs}


def _baseline_cell(system: str, specs: list, splits: dict, tests: dict, opts: dict[str, Any], out: Path, seed: int,
                   label: str) -> dict[str, Any]:
    from ..options import build
    from ..runner import run_baseline
    from ..training import TrainConfig

    scores, devs, trainable, seconds = {}, {}, 0, 0.0
    for spec in specs:
        adapted, tokenizer = _model(spec, opts)
        config = build(TrainConfig, opts, output_dir=str(out / "work"), seed=seed)
        train, dev = splits[spec.name]
        row = run_baseline(system, adapted, tokenizer, spec, (train, dev, tests[spec.name]), config,
                           label=f"{label} {spec.name}")
        scores[spec.name], devs[spec.name] = row["test_score"], row["dev_score"]
        trainable += row["trainable"]
        seconds += row["train_seconds"]
    return {"scores": scores, "dev_scores": devs, "test_score": _mean(scores.values()),
            "dev_score": _mean(devs.values()), "trainable": trainable, "train_seconds": round(seconds, 2),
            "best_epoch": None, "epochs": None}


def _mean(values: Any) -> float | None:
    vals = [0.0 if v != v else float(v) for v in values if v is not None]  # a NaN correlation counts as 0
    return sum(vals) / len(vals) if vals else None


# --- transfer -------------------------------------------------------------------------------------


def save_source(adapted: Any, tokenizer: Any, mt_spec: Any, directory: Path) -> None:
    """Keep a trained PHA model (adapter + task heads) as the transfer source."""
    from ..io import atomic_save_tensors, atomic_write_json, save_adapter

    save_adapter(adapted, "pha", directory / "adapter")
    atomic_save_tensors(directory / "heads.safetensors",
                        {k: v.detach().contiguous() for k, v in adapted.pooled_head.state_dict().items()},
                        {"format": "pt"})
    atomic_write_json(directory / "source.json", {"tasks": list(mt_spec.names)})


def load_source(directory: Path, opts: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    """(adapted, tokenizer, source task names) of a saved transfer source (the task heads are not needed)."""
    from ..config import read_json
    from ..data.tasks import get_task
    from ..io import load_adapter

    tasks = read_json(directory / "source.json")["tasks"]
    adapted, tokenizer = _model(get_task(tasks[0]), opts)
    load_adapter(adapted, directory / "adapter", "pha", load_head=False)
    return adapted, tokenizer, tasks


def train_source(specs: list, data: dict[str, TaskData], size: int, seed: int, opts: dict[str, Any], out: Path,
                 rates: dict[str, float], directory: Path) -> None:
    """Train PHA on the source tasks (no test scoring) and save it to ``directory``."""
    from transformers import set_seed

    from ..training.multitask import MultiTaskSpec, train_multitask

    mt = MultiTaskSpec(tuple(specs))
    splits = {s.name: data[s.name].grid_split(size, opts["dev_size"], seed) for s in specs}
    set_seed(seed)
    adapted, tokenizer, mode, extra = build_multitask("pha", mt, opts)
    label = f"source N={size} seed={seed}"
    config = train_config(opts, out, label, seed=seed, epochs=grid_epochs(opts, sum(len(t) for t, _ in splits.values())),
                          train_mode=mode, learning_rate=rates["pha"],
                          logging_steps=max(1, size * len(specs) // opts["batch_size"]))
    train_multitask(adapted, tokenizer, mt, {k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()},
                    config, temperature=float(opts.get("temperature") or 1.0), extra_loss=extra, name=label)
    save_source(adapted, tokenizer, mt, directory)


def run_transfer_cell(system: str, target: TaskData, k: int, seed: int, opts: dict[str, Any], out: Path,
                      rates: dict[str, float], source: Path, label: str) -> dict[str, Any]:
    """One transfer cell: ``system`` on k examples per class of ``target``; its test score."""
    from transformers import set_seed

    from ..runner import run_baseline, run_system

    spec = target.spec
    train, dev = target.kshot_split(k, seed, opts.get("short_classes") or "error")
    data = (train, dev, target.test)
    epochs = float(opts["transfer_epochs"])
    rate = rates["pha_prototype"] if system == "pha" else rates.get(system, LRS["pfeiffer"])
    config = train_config(opts, out, label, seed=seed, epochs=epochs, learning_rate=rate,
                          logging_steps=max(1, len(train) // opts["batch_size"]))
    set_seed(seed)
    if system in BASELINES:
        adapted, tokenizer = _model(spec, opts)
        row = run_baseline(system, adapted, tokenizer, spec, data, config, label=label)
        return {k_: row[k_] for k_ in ("test_score", "dev_score", "trainable", "train_seconds")}
    if system == "pfeiffer":
        from ..methods.bottleneck import PfeifferConfig

        adapted, tokenizer = _model(spec, opts)
        adapted.add_adapter("pfeiffer", PfeifferConfig())
        row = run_system(adapted, tokenizer, spec, data, config, label=label).row()
        return {k_: row[k_] for k_ in ("test_score", "dev_score", "trainable", "train_seconds")}
    if system in ("pha", "pha+hyper"):
        from ..methods.pha_transfer import transfer_to_task
        from ..training.multitask import evaluate_tasks

        adapted, tokenizer, _ = load_source(source, opts)
        start = time.perf_counter()
        done = transfer_to_task(adapted, tokenizer, "pha", spec, train, dev, config,
                                init=opts.get("transfer_init") or "nearest",
                                tune="prototype" if system == "pha" else "prototype+hypernetwork",
                                temperature=float(opts.get("temperature") or 1.0), label=label)
        test = evaluate_tasks(adapted, tokenizer, done.spec, {spec.name: target.test}, config)
        return {"test_score": test[spec.name]["score"], "dev_score": done.score,
                "trainable": done.trainable_parameters, "train_seconds": round(time.perf_counter() - start, 2),
                "init": done.init_note}
    raise ConfigError(f"transfer_systems: unknown system {system!r}; known: {list(TRANSFER_SYSTEMS)}")


# --- the run --------------------------------------------------------------------------------------


def plan(opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the experiment, seeds outermost, cheap baselines first; transfer after the grid."""
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    runs = [{"phase": "grid", "size": n, "target": None, "k": None, "seed": s, "system": sys}
            for s in opts["seeds"] for n in opts["sizes"] for sys in systems]
    targets = [*([opts["holdout"]] if opts.get("holdout") else []), *opts.get("transfer_tasks", [])]
    tsystems = [s for s in TRANSFER_SYSTEMS if s in opts["transfer_systems"]]
    runs += [{"phase": "transfer", "size": None, "target": t, "k": k, "seed": s, "system": sys}
             for s in opts["seeds"] for t in targets for k in opts["k_shots"] for sys in tsystems]
    return runs


def check(opts: dict[str, Any]) -> None:
    from ..data.tasks import get_task

    for key, known in (("systems", SYSTEMS), ("transfer_systems", TRANSFER_SYSTEMS)):
        unknown = [s for s in opts[key] if s not in known]
        if unknown:
            raise ConfigError(f"{key}: unknown system {unknown[0]!r}; known: {list(known)}")
    if not opts["tasks"]:
        raise ConfigError("tasks: give at least one task")
    for name in [*opts["tasks"], *([opts["holdout"]] if opts.get("holdout") else []), *opts["transfer_tasks"]]:
        spec = get_task(name)
        if spec.kind not in ("classification", "regression"):
            raise ConfigError(f"tasks: {name}: kind {spec.kind!r}: this experiment takes classification and "
                              "regression tasks")
    for name in [*([opts["holdout"]] if opts.get("holdout") else []), *opts["transfer_tasks"]]:
        if get_task(name).kind != "classification":
            raise ConfigError(f"transfer_tasks: {name}: k examples per class needs a classification task")
    if any(n < 1 for n in opts["sizes"]) or any(k < 1 for k in opts["k_shots"]):
        raise ConfigError("sizes: and k_shots: must be >= 1")
    learning_rates(opts)


def run(opts: dict[str, Any]) -> int:
    """Run the grid and the transfer (resumable), then write results.md, results.json and the plots."""
    from ..console import say
    from ..data.tasks import get_task, resolve_data_dir
    from .common import ResultLog, logged_settings

    check(opts)
    rates = learning_rates(opts)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    out = Path(opts["output_dir"])
    runs = plan(opts)
    cache: dict[str, TaskData] = {}

    def task_data(name: str) -> TaskData:
        if name not in cache:
            cache[name] = TaskData(get_task(name), data_dir, opts.get("test_size"))
        return cache[name]

    if opts.get("short_classes") == "error" and not opts["report_only"]:
        # refused before anything is written or trained, not at the transfer after hours of training
        for name in sorted({r["target"] for r in runs if r["phase"] == "transfer"}):
            for k in opts["k_shots"]:
                task_data(name).require_k(k)
    log = ResultLog(out / "runs.jsonl", logged_settings(opts, SETTINGS))
    todo, progress = log.pending(KEYS, runs, "pha", opts["report_only"])
    specs = [get_task(t) for t in opts["tasks"]]
    holdout = opts.get("holdout")
    source_tasks = [s for s in specs if s.name != holdout]
    transfer_size = opts.get("transfer_size") or max(opts["sizes"])
    reuse = holdout not in opts["tasks"]  # the grid's PHA model is a valid source
    for r in todo:
        label = (f"{r['system']} N={r['size']} seed={r['seed']}" if r["phase"] == "grid"
                 else f"transfer {r['target']} k={r['k']} seed={r['seed']} {r['system']}")
        progress.step(label)
        source = out / "sources" / f"seed{r['seed']}_N{transfer_size}"
        if r["phase"] == "grid":
            keep = source if reuse and r["system"] == "pha" and r["size"] == transfer_size else None
            row = run_grid_cell(r["system"], specs, {s.name: task_data(s.name) for s in specs}, r["size"], r["seed"],
                                opts, out, rates, label, keep)
        else:
            if r["system"] in ("pha", "pha+hyper") and not (source / "source.json").is_file():
                say(f"[{label}] training the transfer source: PHA on {[s.name for s in source_tasks]}, "
                    f"N={transfer_size}")
                train_source(source_tasks, {s.name: task_data(s.name) for s in source_tasks}, transfer_size,
                             r["seed"], opts, out, rates, source)
            row = run_transfer_cell(r["system"], task_data(r["target"]), r["k"], r["seed"], opts, out, rates, source,
                                    label)
        lr = rates["pha_prototype"] if r["phase"] == "transfer" and r["system"] == "pha" else rates.get(r["system"])
        log.add({**r, "lr": lr, **row})
        progress.finish()
    report(log.unique(KEYS), opts)
    return 0


# --- report ---------------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    """Tables (mean ± std over seeds) and plots from the logged runs."""
    from ..console import say
    from ..data.tasks import get_task
    from ..reporting import markdown_table, mean_std
    from .common import test_score_cell, trivial_note, trivial_runs

    out = Path(opts["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r["seed"] in opts["seeds"]]
    grid = [r for r in rows if r["phase"] == "grid" and r["size"] in opts["sizes"]]
    at_trivial = trivial_runs(grid, ("size",))
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    rates = learning_rates(opts)
    metrics = ", ".join(f"{t} {get_task(t).metric}" for t in opts["tasks"])
    text = ["# PHA: multi-task training at several data sizes, then few-shot transfer\n",
            f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; tasks: {', '.join(opts['tasks'])} "
            f"(metrics: {metrics}). Per task: N training examples, {opts['dev_size']} dev examples carved from the "
            f"training file (checkpoint selection by the mean dev score), test: the official dev set (at most "
            f"{opts.get('test_size')}, fixed draw). Batch {opts['batch_size']}, max length {opts['max_length']}, "
            f"epochs {opts['epochs']:g} (min steps {opts.get('min_steps') or 0}), mixing temperature "
            f"{opts.get('temperature') or 1.0:g}, heads {opts.get('heads')}; learning rates: "
            + ", ".join(f"{s} {rates[s]:g}" for s in systems if s in rates)
            + ". Scores x100, mean ± std over seeds (n = seeds done).\n"]
    table = []
    for system in systems:
        mine = [r for r in grid if r["system"] == system]
        if not mine:
            continue
        cells: dict[str, Any] = {"system": system}
        for n in opts["sizes"]:
            runs = [r for r in mine if r["size"] == n and r["test_score"] is not None]
            cells[f"n{n}"] = test_score_cell(runs, at_trivial)
        cells["trainable"] = f"{int(mean_std([r['trainable'] for r in mine])[0]):,}"
        for n in opts["sizes"]:
            secs = [r["train_seconds"] for r in mine if r["size"] == n]
            cells[f"t{n}"] = f"{mean_std(secs)[0]:.0f}" if secs else "–"
        table.append(cells)
    columns = {"system": "System", **{f"n{n}": f"N={n} mean score" for n in opts["sizes"]},
               "trainable": "Trainable params", **{f"t{n}": f"Train s (N={n})" for n in opts["sizes"]}}
    text += ["\n## Multi-task: mean test score over tasks\n", markdown_table(table, columns), *trivial_note(table)]
    for n in opts["sizes"]:
        per = []
        # one row per run and task, scored as that task alone, so a collapsed task is marked inside a mean that is not
        task_runs = {t: [{"system": r["system"], "seed": r["seed"], "test_score": r["scores"][t]} for r in grid
                         if r["size"] == n and r["scores"].get(t) is not None] for t in opts["tasks"]}
        at_trivial_task = {t: trivial_runs(task_runs[t], ()) for t in opts["tasks"]}
        for system in systems:
            if not any(r["system"] == system and r["size"] == n for r in grid):
                continue
            cells = {"system": system}
            for t in opts["tasks"]:
                cells[t] = test_score_cell([r for r in task_runs[t] if r["system"] == system], at_trivial_task[t])
            per.append(cells)
        if per:
            text += [f"\n### Per task, N={n}\n", markdown_table(per, {"system": "System", **{t: t for t in opts["tasks"]}}),
                     *trivial_note(per)]
    gaps = verdict_lines(grid, opts)
    if gaps:
        text += ["\n## PHA against the best other trained system, per N\n", *gaps]
    transfer = [r for r in rows if r["phase"] == "transfer"]
    tsystems = [s for s in TRANSFER_SYSTEMS if s in opts["transfer_systems"]]
    targets = [*([opts["holdout"]] if opts.get("holdout") else []), *opts.get("transfer_tasks", [])]
    plots = [p for p in [_size_plot(out / "pha_sizes.png", grid, systems, opts)] if p]
    for target in targets:
        mine = [r for r in transfer if r["target"] == target and r["k"] in opts["k_shots"]]
        if not mine:
            continue
        ttable = []
        at_trivial_k = trivial_runs(mine, ("k",))
        for system in tsystems:
            cells = {"system": system}
            for k in opts["k_shots"]:
                runs = [r for r in mine if r["system"] == system and r["k"] == k and r["test_score"] is not None]
                cells[f"k{k}"] = test_score_cell(runs, at_trivial_k)
            params = [r["trainable"] for r in mine if r["system"] == system]
            cells["trainable"] = f"{int(mean_std(params)[0]):,}" if params else "–"
            ttable.append(cells)
        text += [f"\n## Few-shot transfer to {target} ({get_task(target).metric})\n",
                 markdown_table(ttable, {"system": "System", **{f"k{k}": f"k={k}" for k in opts["k_shots"]},
                                         "trainable": "Trainable params"}), *trivial_note(ttable)]
        plot = _transfer_plot(out / f"pha_transfer_{target}.png", mine, tsystems, opts["k_shots"], target)
        if plot:
            plots.append(plot)
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    say("\n".join(text))
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots))


def verdict_lines(grid: list[dict[str, Any]], opts: dict[str, Any]) -> list[str]:
    """Per N: PHA's mean score minus the best other trained system's (the claim: largest at the smallest N)."""
    from ..reporting import mean_std

    lines = []
    others = [s for s in ("pfeiffer", "shared", "full", "hyperformer") if s in opts["systems"]]
    for n in opts["sizes"]:
        def score(system: str, n: int = n) -> float:
            return mean_std([r["test_score"] for r in grid if r["system"] == system and r["size"] == n
                             and r["test_score"] is not None])[0]

        pha = score("pha")
        rivals = {s: score(s) for s in others if score(s) == score(s)}
        if pha != pha or not rivals:
            continue
        best = max(rivals, key=rivals.get)
        lines.append(f"- N={n}: PHA {100 * pha:.1f}, best other {best} {100 * rivals[best]:.1f}: "
                     f"gap {100 * (pha - rivals[best]):+.1f} points")
    return lines


def _size_plot(path: Path, grid: list[dict[str, Any]], systems: list[str], opts: dict[str, Any]) -> Path | None:
    """Mean test score over tasks against N (log axis), one line per system, error bars = std over seeds."""
    from ..reporting import mean_std, new_figure, save_figure

    series = {}
    for system in systems:
        xs, ys, es = [], [], []
        for n in opts["sizes"]:
            vals = [100 * r["test_score"] for r in grid if r["system"] == system and r["size"] == n
                    and r["test_score"] is not None]
            if vals:
                m, s = mean_std(vals)
                xs.append(n)
                ys.append(m)
                es.append(s)
        if xs:
            series[system] = (xs, ys, es)
    if not series:
        return None
    fig, ax, path = new_figure(path, size=(6.5, 4.2))
    for name, (xs, ys, es) in series.items():
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name,
                    linestyle="--" if name in BASELINES else "-")
    ax.set_xscale("log")
    ax.set_xlabel("training examples per task (N)")
    ax.set_ylabel("mean test score over tasks x100")
    ax.set_title(f"Multi-task: {', '.join(opts['tasks'])}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _transfer_plot(path: Path, rows: list[dict[str, Any]], systems: list[str], ks: list[int], target: str
                   ) -> Path | None:
    from ..reporting import line_plot, mean_std

    series = {}
    for system in systems:
        xs, ys = [], []
        for k in ks:
            vals = [100 * r["test_score"] for r in rows if r["system"] == system and r["k"] == k
                    and r["test_score"] is not None]
            if vals:
                xs.append(k)
                ys.append(mean_std(vals)[0])
        if xs:
            series[system] = (xs, ys)
    if not series:
        return None
    return line_plot(path, series, title=f"few-shot transfer to {target}", xlabel="k (examples per class)",
                     ylabel="test score x100", logx=True)
