"""An adapter zoo: source adapters trained on source tasks, each saved with its task, track and scores.

A zoo is a directory of ordinary adapter directories plus ``zoo.json``, an index with one entry per
adapter (name, source task, track, method, base model, training size, dev score). ``build_zoo`` trains
the missing entries (a zoo is resumable: finished adapters are kept), ``read_zoo`` lists it, and
``select`` picks entries by track for the MerA "same-track" setting.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError

INDEX_NAME = "zoo.json"
TRACKS = ("sentiment", "nli", "paraphrase", "acceptability", "domain")
"""Tracks (task families): sentiment, NLI/entailment, paraphrase/similarity, acceptability, domain classification."""

TASK_TRACKS: dict[str, str] = {
    "sst2": "sentiment", "sample_sentiment": "sentiment", "rte": "nli", "qnli": "nli",
    **{f"xnli_{lang}": "nli" for lang in ("en", "de", "fr", "es", "zh", "ru")},
    "mrpc": "paraphrase", "stsb": "paraphrase", "cola": "acceptability", "chemprot": "domain",
    "citation_intent": "domain",
}


@dataclass(frozen=True)
class ZooSource:
    """One adapter to train: ``task`` (a registered task), its ``track``, and which slice of data it sees.

    ``part = (i, n)`` trains on the i-th of n disjoint slices of the (shuffled) training pool, so two
    adapters of one task can be trained on different data.
    """

    name: str
    task: str
    track: str
    seed: int = 1
    part: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ConfigError(f"zoo source name {self.name!r}: must be non-empty, without '.' or '/'")
        if self.track not in TRACKS:
            raise ConfigError(f"zoo source {self.name}: track: unknown {self.track!r}; known: {list(TRACKS)}")
        i, n = self.part
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"zoo source {self.name}: part: expected (i, n) with 0 <= i < n, got {self.part}")


DEFAULT_SOURCES: tuple[ZooSource, ...] = (
    ZooSource("sst2", "sst2", "sentiment"),
    ZooSource("cola", "cola", "acceptability"),
    ZooSource("stsb", "stsb", "paraphrase", part=(0, 2)),
    ZooSource("stsb_b", "stsb", "paraphrase", seed=2, part=(1, 2)),
    ZooSource("mrpc", "mrpc", "paraphrase"),
    ZooSource("rte", "rte", "nli"),
    ZooSource("qnli", "qnli", "nli"),
    ZooSource("xnli_en", "xnli_en", "nli"),
    ZooSource("chemprot", "chemprot", "domain"),
    ZooSource("citation_intent", "citation_intent", "domain"),
)
"""The default zoo: ten Pfeiffer adapters over five tracks (two STS-B adapters on disjoint halves)."""


def parse_source(text: str) -> ZooSource:
    """``NAME=TASK[:TRACK][@SEED][#I/N]`` or just ``TASK`` (track from ``TASK_TRACKS``)."""
    name, _, rest = text.partition("=")
    if not rest:
        name, rest = text.split(":")[0].split("@")[0].split("#")[0], text
    rest, _, part = rest.partition("#")
    rest, _, seed = rest.partition("@")
    task, _, track = rest.partition(":")
    track = track or TASK_TRACKS.get(task, "")
    if not track:
        raise ConfigError(f"sources: {text!r}: no known track for task {task!r}; write TASK:TRACK ({', '.join(TRACKS)})")
    try:
        part_t = tuple(int(x) for x in part.split("/")) if part else (0, 1)
        seed_i = int(seed) if seed else 1
    except ValueError:
        raise ConfigError(f"sources: {text!r}: expected NAME=TASK[:TRACK][@SEED][#I/N]") from None
    if len(part_t) != 2:
        raise ConfigError(f"sources: {text!r}: part: expected #I/N")
    return ZooSource(name.strip(), task.strip(), track, seed_i, part_t)  # type: ignore[arg-type]


@dataclass
class ZooEntry:
    """One adapter of a zoo, as listed in ``zoo.json``."""

    name: str
    task: str
    track: str
    path: str
    method: str
    base_model: dict[str, Any]
    train_size: int
    dev_size: int
    dev_score: float | None
    metric: str
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def directory(self, zoo_dir: str | Path) -> Path:
        return Path(zoo_dir) / self.path


def read_zoo(zoo_dir: str | Path) -> list[ZooEntry]:
    """The entries of ``zoo_dir/zoo.json`` (an empty list when there is no index yet)."""
    from .config import read_json

    path = Path(zoo_dir) / INDEX_NAME
    if not path.exists():
        return []
    data = read_json(path)
    entries = data.get("adapters")
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: adapters: expected a list")
    out = []
    known = set(ZooEntry.__dataclass_fields__)
    for i, item in enumerate(entries):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: adapters[{i}]: expected an object")
        missing = sorted(k for k in known - {"extra"} if k not in item)
        if missing:
            raise ConfigError(f"{path}: adapters[{i}].{missing[0]}: missing")
        out.append(ZooEntry(**{k: v for k, v in item.items() if k in known}))
    return out


def write_zoo(zoo_dir: str | Path, entries: list[ZooEntry]) -> Path:
    from .io import atomic_write_json

    path = Path(zoo_dir) / INDEX_NAME
    atomic_write_json(path, {"format": "adapterkit-zoo", "adapters": [asdict(e) for e in entries]})
    return path


def select(entries: list[ZooEntry], *, tracks: list[str] | None = None, exclude_tasks: list[str] | None = None,
           names: list[str] | None = None) -> list[ZooEntry]:
    """Entries on ``tracks`` (all when None), without ``exclude_tasks`` (e.g. the target task), by ``names``."""
    out = [e for e in entries if (tracks is None or e.track in tracks) and e.task not in (exclude_tasks or [])]
    if names is not None:
        missing = sorted(set(names) - {e.name for e in entries})
        if missing:
            raise ConfigError(f"zoo: no adapter named {missing[0]!r}; have {sorted(e.name for e in entries)}")
        out = [e for e in out if e.name in names]
    return out


def source_data(source: ZooSource, data_dir: Any, max_train: int, max_dev: int) -> tuple[list, list]:
    """(train, dev) for a source adapter: the task's train split (its dev split when it has no train split),
    sliced by ``source.part`` and capped; dev is the official dev set (or carved from the pool) capped."""
    import random

    from .data.sampling import carve_dev, subsample
    from .data.tasks import get_task, load_task

    spec = get_task(source.task)
    pool_split = "train" if "train" in spec.splits else "dev" if "dev" in spec.splits else None
    if pool_split is None:
        raise DataError(f"zoo source {source.name}: task {source.task!r} has no train or dev split")
    data = load_task(spec, data_dir, [s for s in ("train", "dev") if s in spec.splits])
    pool = list(data[pool_split])
    dev = data.get("dev") if pool_split == "train" else None
    i, n = source.part
    if n > 1:
        order = list(range(len(pool)))
        random.Random(0).shuffle(order)  # one fixed order, so slices of one task never overlap
        pool = [pool[j] for j in order[i::n]]
    if dev is None:
        pool, dev = carve_dev(pool, min(max_dev, max(1, len(pool) // 5)), source.seed)
    if len(pool) > max_train:
        pool = subsample(pool, max_train, source.seed)
    if len(dev) > max_dev:
        dev = subsample(dev, max_dev, source.seed)
    return pool, dev


ZOO_TRAINING: dict[str, Any] = {"epochs": 2.0, "learning_rate": 1e-3, "batch_size": 32, "logging_steps": 20}
"""Training options of a zoo's source adapters unless given (besides TrainConfig's defaults)."""


def build_zoo(zoo_dir: str | Path, sources: tuple[ZooSource, ...] | list[ZooSource] = DEFAULT_SOURCES, *,
              data_dir: Any = None, model: str | None = None, method: str = "pfeiffer",
              adapter_config: Any = None, max_train: int = 2000, max_dev: int = 500, force: bool = False,
              **training: Any) -> list[ZooEntry]:
    """Train every source adapter not yet in the zoo and index it; returns all entries.

    ``training`` are :class:`~adapterkit.training.TrainConfig` options (``epochs``, ``learning_rate``,
    ``batch_size``, ``max_length``, ``progress``, ...) over :data:`ZOO_TRAINING`.
    """
    from transformers import set_seed

    from .console import Progress, say
    from .data.tasks import get_task, resolve_data_dir
    from .io import read_adapter_config, save_adapter
    from .options import ModelOptions
    from .runner import NO_CHECKPOINTS, build_system, run_system
    from .training import TrainConfig

    zoo_dir = Path(zoo_dir)
    data_dir = resolve_data_dir(data_dir)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"sources: duplicate adapter names in {names}")
    entries = {e.name: e for e in read_zoo(zoo_dir)}
    todo = [s for s in sources if force or s.name not in entries or not entries[s.name].directory(zoo_dir).is_dir()]
    say(f"zoo {zoo_dir}: {len(sources) - len(todo)} adapters present, {len(todo)} to train")
    progress = Progress(len(todo))
    for source in todo:
        progress.step(f"zoo {source.name}: task {source.task}, track {source.track}")
        spec = get_task(source.task)
        train, dev = source_data(source, data_dir, max_train, max_dev)
        work = zoo_dir / "_work" / source.name
        config = TrainConfig(**{**ZOO_TRAINING, **training, **NO_CHECKPOINTS, "output_dir": str(work),
                                "seed": source.seed})
        set_seed(source.seed)
        adapted, tokenizer, name = build_system(spec, ModelOptions(model, method, adapter_config, source.name))
        run = run_system(adapted, tokenizer, spec, (train, dev, None), config, label=f"zoo:{source.name}")
        final = zoo_dir / source.name
        save_adapter(adapted, name, work / "adapter", include_head=True,
                     extra={"task": spec.name, "metric": spec.metric, "dev": run.result.metrics, "test": None})
        if final.exists():
            shutil.rmtree(final)
        (work / "adapter").rename(final)  # the adapter directory was written atomically; moving it is atomic too
        meta = read_adapter_config(final)
        entries[source.name] = ZooEntry(
            name=source.name, task=source.task, track=source.track, path=source.name,
            method=meta["config"]["method"], base_model=meta["base_model"], train_size=len(train), dev_size=len(dev),
            dev_score=run.result.score, metric=spec.metric, train_seconds=round(run.result.train_seconds, 1),
            extra={"seed": source.seed, "part": list(source.part), "epochs": config.epochs, "lr": config.learning_rate},
        )
        write_zoo(zoo_dir, [entries[n] for n in names if n in entries]
                  + [e for n, e in entries.items() if n not in names])
        shutil.rmtree(work, ignore_errors=True)
        progress.finish()
    shutil.rmtree(zoo_dir / "_work", ignore_errors=True)
    return read_zoo(zoo_dir)


def zoo_table(entries: list[ZooEntry]) -> list[dict[str, Any]]:
    """Rows for a printed or Markdown table of a zoo."""
    return [{"name": e.name, "task": e.task, "track": e.track, "method": e.method,
             "model": f"{e.base_model.get('model_type')}/{e.base_model.get('hidden_size')}",
             "train": e.train_size, "dev": e.dev_size, "metric": e.metric, "dev_score": e.dev_score,
             "seconds": e.train_seconds} for e in entries]
