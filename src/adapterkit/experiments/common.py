"""What every experiment shares: resumable result logs, one training run per system, probes and summaries."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..reporting import format_mean_std, mean_std
from ..runner import _say


def int_list(value: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (argparse type)."""
    from ..cli import _csv

    return [int(v) for v in _csv(value)]


def add_common_arguments(p: Any, defaults: dict[str, Any], systems: Sequence[str]) -> None:
    """The options every experiment has (output directory, tasks, seeds, systems, epochs, lr, batch, progress)."""
    from ..cli import _bool, _csv

    def default(key: str) -> str:
        value = defaults[key]
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" if isinstance(
            value, float) else str(value)

    p.add_argument("--output-dir", help=f"results directory (default {default('output_dir')}); a rerun resumes")
    p.add_argument("--tasks", type=_csv, help=f"tasks (default {default('tasks')})")
    p.add_argument("--seeds", type=int_list, help=f"seeds (default {default('seeds')})")
    p.add_argument("--systems", type=_csv, help=f"systems (default all: {','.join(systems)})")
    p.add_argument("--epochs", type=float, help=f"epochs per run (default {default('epochs')})")
    p.add_argument("--lr", type=float, help=f"adapter learning rate (default {default('lr')})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {default('batch_size')})")
    p.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default log)")
    p.add_argument("--report-only", type=_bool, help="true: train nothing, write the report from the runs logged so "
                   "far (cells show how many seeds they have)")


class ResultLog:
    """Rows of a running experiment in a JSON-lines file; a rerun skips the rows already there.

    ``settings`` (the options that change results: epochs, learning rate, precision, ...) are kept in
    ``settings.json`` beside the log; a rerun with other settings is refused, so that one table never
    mixes runs made under different protocols.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if settings is not None:
            self._check_settings(settings)
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ConfigError(f"{self.path}: line {i + 1}: not valid JSON") from None
                # a last line cut short by a crash: dropped (its run is redone), and the file rewritten without
                # it, so that the next row does not get appended to the broken line
                from ..io import atomic_write_bytes

                atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode("utf-8"))

    def _check_settings(self, settings: dict[str, Any]) -> None:
        from ..io import atomic_write_json

        file = self.path.with_name("settings.json")
        settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
        stored: dict[str, Any] = {}
        if file.exists():
            try:
                stored = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{file}: not valid JSON ({exc})") from None
            if not isinstance(stored, dict):
                raise ConfigError(f"{file}: expected a JSON object of settings")
            for key, value in settings.items():
                if key in stored and stored[key] != value:
                    raise ConfigError(f"{file}: {key}: the runs in {self.path.name} used {stored[key]!r}, this run "
                                      f"asks for {value!r}; use the same {key} or another --output-dir")
        elif self.path.exists():
            return  # a log written before settings were recorded: nothing to compare with, nothing claimed
        if {**stored, **settings} != stored:
            atomic_write_json(file, {**stored, **settings})

    def unique(self, fields: Sequence[str]) -> list[dict[str, Any]]:
        """The rows, one per key (the last one logged wins, e.g. when two processes ran the same run)."""
        return list({self.key(r, fields): r for r in self.rows}.values())

    def key(self, row: dict[str, Any], fields: Sequence[str]) -> tuple:
        return tuple(row.get(f) for f in fields)

    def has(self, fields: Sequence[str], **values: Any) -> bool:
        want = tuple(values[f] for f in fields)
        return any(self.key(r, fields) == want for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:  # one line per row, flushed: a crash loses at most one
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        self.rows.append(row)


class Progress:
    """Log lines with elapsed time and ETA over a known number of runs."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done, self.start, self.ran = total, done, time.perf_counter(), 0

    def step(self, label: str) -> None:
        elapsed = time.perf_counter() - self.start
        eta = f", ETA {elapsed / self.ran * (self.total - self.done):.0f}s" if self.ran else ""
        _say(f"=== [{self.done + 1}/{self.total}] {label} (elapsed {elapsed:.0f}s{eta})")

    def finish(self) -> None:
        self.done += 1
        self.ran += 1


def fit_and_test(adapted: Any, tokenizer: Any, spec: Any, data: tuple[list, list, list], *, label: str, seed: int,
                 lr: float, epochs: float, batch_size: int, max_length: int, output_dir: str | Path,
                 train_mode: str = "adapters", eval_batch_size: int = 64, backbone_dropout: bool = True,
                 progress: str = "log", callbacks: Sequence[Any] = (), extra_loss: Callable | None = None,
                 precision: str = "fp32", **train_fields: Any) -> dict[str, Any]:
    """Train the active adapters (or the full model) on ``data[0]``, select the best epoch on ``data[1]``,
    score ``data[2]``; returns a result row. Checkpoints are deleted after the run."""
    from ..training import TrainConfig, evaluate, train

    train_ex, dev_ex, test_ex = data
    config = TrainConfig(
        output_dir=str(output_dir), epochs=float(epochs), batch_size=batch_size, eval_batch_size=eval_batch_size,
        learning_rate=lr, max_length=max_length, seed=seed, train_mode=train_mode, backbone_dropout=backbone_dropout,
        save_total_limit=1, save_optimizer=False, cleanup_checkpoints=True, progress=progress,
        logging_steps=max(1, len(train_ex) // batch_size), precision=precision, **train_fields,
    )
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, config, callbacks=callbacks, extra_loss=extra_loss,
                   name=label)
    start = time.perf_counter()
    test = evaluate(adapted, tokenizer, spec, test_ex, eval_batch_size, max_length, precision=precision) if test_ex else {}
    counts = adapted.count_parameters()
    trainable = counts["total"] if train_mode == "full" else result.trainable_parameters
    _say(f"[{label}] test {test.get('score', float('nan')):.4f} ({spec.metric}, {len(test_ex or [])} examples, "
         f"{time.perf_counter() - start:.0f}s); dev {result.score}; train {result.train_seconds:.0f}s")
    return {"test_score": test.get("score"), "dev_score": result.score, "best_epoch": result.best_epoch,
            "trainable": trainable, "train_seconds": round(result.train_seconds, 2),
            "history": result.history}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def padded_batch(tokenizer: Any, spec: Any, examples: Sequence[Any], max_length: int) -> dict[str, torch.Tensor]:
    """``examples`` tokenised and padded into one batch of model inputs (no labels)."""
    from ..training import encode

    encoded = encode(tokenizer, spec, list(examples), max_length)
    rows = [{k: row[k] for k in MODEL_INPUTS if k in row} for row in encoded]
    return dict(tokenizer.pad(rows, return_tensors="pt"))


@torch.no_grad()
def sentence_features(adapted: Any, tokenizer: Any, spec: Any, examples: Sequence[Any], max_length: int,
                      batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled last hidden states of the backbone (with the active adapters), one row per example."""
    adapted.eval()
    backbone = adapted.model.base_model
    feats = []
    for i in range(0, len(examples), batch_size):
        batch = padded_batch(tokenizer, spec, examples[i: i + batch_size], max_length)
        hidden = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        feats.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(feats)


def probe_score(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor,
                num_labels: int, steps: int = 200, l2: float = 1e-3) -> float:
    """Dev accuracy of a logistic-regression probe fitted on frozen features (deterministic: full-batch LBFGS)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xd = (train_x - mean) / std, (dev_x - mean) / std
    weight = torch.zeros(xs.shape[1], num_labels, requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xd @ weight + bias).argmax(-1) == dev_y).float().mean())


def summarize(rows: Sequence[dict[str, Any]], settings: Sequence[tuple[str, ...]], setting_keys: Sequence[str],
              systems: Sequence[str], *, scale: float = 100.0) -> list[dict[str, Any]]:
    """One table row per system: ``mean ± std`` of the test score per setting, parameters and mean train time."""
    table = []
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        out: dict[str, Any] = {"system": system}
        for setting in settings:
            vals = [r["test_score"] for r in mine if tuple(r[k] for k in setting_keys) == setting
                    and r["test_score"] is not None]
            out["/".join(map(str, setting))] = f"{format_mean_std(vals, 1, scale)} (n={len(vals)})" if vals else "–"
        out["trainable"] = f"{int(mean_std([r['trainable'] for r in mine])[0]):,}"
        out["train_s"] = f"{mean_std([r['train_seconds'] for r in mine])[0]:.1f}"
        table.append(out)
    return table


def series_for_plot(rows: Sequence[dict[str, Any]], settings: Sequence[tuple[str, ...]], setting_keys: Sequence[str],
                    systems: Sequence[str], scale: float = 100.0) -> dict[str, tuple[list[float], list[float]]]:
    """``{system: (means, stds)}`` over ``settings`` for :func:`reporting.grouped_bar_plot`."""
    out = {}
    for system in systems:
        means, stds = [], []
        for setting in settings:
            vals = [scale * r["test_score"] for r in rows if r["system"] == system
                    and tuple(r[k] for k in setting_keys) == setting and r["test_score"] is not None]
            m, s = mean_std(vals)
            means.append(m)
            stds.append(s)
        if any(m == m for m in means):  # not all NaN
            out[system] = (means, stds)
    return out
