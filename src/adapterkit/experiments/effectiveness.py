"""On the Effectiveness of Adapter-based Tuning (He et al., ACL 2021): Houlsby adapters against full fine-tuning.

Parts (``--parts``, all by default), every run logged to ``runs.jsonl`` (a rerun resumes):

- ``low``: low-resource subsets. For each task, training size N and seed: ``dev_size`` examples carved
  from the training file (they select the epoch), N drawn from the rest, the official test split (else
  the official dev split, optionally capped by ``test_size``) as test. Every run records its dev loss and
  dev score after each epoch (the overfitting curves, part (d)) and, after training, CKA and RSA of every
  layer against the untuned base model on a probe of the task's test sentences (part (e)). Trivial
  (majority / constant) and frozen-linear-probe baselines per task, size and seed.
- ``xnli``: train on English XNLI (rows not held out), evaluate unchanged in every XNLI language on the
  held-out rows (see ``analysis.crosslingual``); trivial and linear-probe baselines per language.
- ``lr``: one task and size over the learning-rate grid, for every system and seed.

Systems: ``houlsby64``, ``houlsby256`` (Houlsby adapters with bottleneck 64 / 256, backbone frozen, head
trained) and ``full`` (full fine-tuning). The claims table tests each claim with paired differences
(adapter minus full fine-tuning on the same task, size and seed): "holds" when the mean difference is
more than two standard errors in the claimed direction, "does not hold" when more than two standard
errors the other way, "inconclusive" otherwise (and with a single pair).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import opt
from ..errors import ConfigError
from .common import option_groups

DESCRIPTION = "Adapters vs full fine-tuning: low-resource, cross-lingual, overfitting, lr sensitivity, RSA/CKA"
SYSTEMS = ("houlsby64", "houlsby256", "full")
PARTS = ("low", "xnli", "lr")
@dataclass
class Options:
    """Effectiveness options besides the common ones."""

    parts: list[str] = opt(list(PARTS), "comma-separated parts: low (low-resource, curves, similarity), xnli, lr")
    sizes: list[int] = opt([100, 300, 1000], "comma-separated training sizes of the low-resource part")
    full_lr: float = opt(3e-5, "full fine-tuning learning rate")
    full_head_lr: float | None = opt(
        None, "learning rate of full fine-tuning's new task head (default: full_lr, as in the paper)")
    head_lr: float = opt(1e-2, "head-only learning rate (not a default system)")
    dev_size: int = opt(200, "dev examples carved from the training data (they select the epoch)")
    test_size: int | None = opt(1000, "cap on test examples (0 or none: all)")
    xnli_train_size: int = opt(1000, "English XNLI training examples")
    xnli_eval_size: int = opt(1000, "XNLI rows held out and evaluated in every language")
    xnli_epochs: float = opt(10.0, "epochs of the XNLI runs")
    languages: list[str] | None = opt(None, "XNLI languages (default: all 15; missing files are reported)")
    lr_task: str = opt("rte", "task of the learning-rate sweep")
    lr_size: int = opt(1000, "training size of the learning-rate sweep")
    lrs: list[float] = opt([1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "comma-separated learning-rate grid (all > 0)")
    lr_epochs: float = opt(10.0, "epochs of the sweep runs")
    similarity: bool = opt(True, "CKA/RSA per layer against the base model after each low-resource run")
    probe_size: int = opt(500, "probe sentences (the task's test sentences) for CKA/RSA")
    tokens: str = opt("sample:2000", "probe representations: all, sentence or sample:N tokens")
    correlation: Literal["pearson", "spearman"] = opt("pearson", "RSA correlation")


OPTIONS = option_groups(
    {"output_dir": "runs/effectiveness", "tasks": ["rte", "mrpc", "stsb", "cola", "sst2", "chemprot", "citation_intent"],
     "seeds": [42, 92, 111], "systems": list(SYSTEMS)},
    Options,
    {"epochs": 20.0, "learning_rate": 1e-3, "batch_size": 16},
    {"epochs": "epochs of the low-resource runs (best dev epoch kept)"},
    head=False,  # the analysis systems build their heads with load_base_model's default (pooling auto)
)
SETTINGS = ("model", "epochs", "learning_rate", "full_lr", "full_head_lr", "batch_size", "max_length", "dev_size",
            "test_size", "backbone_dropout", "xnli_train_size", "xnli_eval_size", "xnli_epochs", "lr_epochs",
            "probe_size", "tokens", "correlation", "precision")
"""Options that change results: a log is never extended under other values (see ResultLog)."""
LOW_KEYS = ("part", "task", "size", "seed", "system")


def _check(opts: dict[str, Any]) -> None:
    from ..analysis.sweep import check_grid

    bad = [s for s in opts["systems"] if s not in SYSTEMS]
    if bad:
        raise ConfigError(f"systems: unknown system {bad[0]!r}; known: {list(SYSTEMS)}")
    bad = [p for p in opts["parts"] if p not in PARTS]
    if bad:
        raise ConfigError(f"parts: unknown part {bad[0]!r}; known: {list(PARTS)}")
    check_grid(opts["lrs"])
    if opts.get("full_head_lr") is not None and opts["full_head_lr"] <= 0:
        raise ConfigError(f"full_head_lr: must be > 0, got {opts['full_head_lr']}")


def run(opts: dict[str, Any]) -> int:
    """Run the parts (resumable), then write results.md, results.json, the PNGs and the claims table."""
    from ..console import say as _say
    from .common import ResultLog, logged_settings

    _check(opts)
    opts = {**opts, "test_size": opts.get("test_size") or None}
    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", logged_settings(opts, SETTINGS))
    if not opts["report_only"]:
        if "low" in opts["parts"]:
            run_low(opts, log)
        if "xnli" in opts["parts"]:
            run_xnli(opts, log)
        if "lr" in opts["parts"]:
            run_lr(opts, log)
    report(log, opts)
    _say(f"effectiveness: wrote {out / 'results.md'}")
    return 0


# --- parts --------------------------------------------------------------------------------------------


def _probe(task: str, data_dir: Any, opts: dict[str, Any]) -> list:
    from ..analysis.representations import read_probe
    from ..data.tasks import get_task

    spec = get_task(task)
    split = "test" if "test" in spec.splits else "dev"
    return read_probe(task, data_dir=data_dir, split=split, limit=opts["probe_size"], seed=0)


def run_low(opts: dict[str, Any], log: Any) -> None:
    """Part (a), with the curves (d) and the per-layer similarity (e) of every run."""
    from ..analysis.commands import baselines
    from ..analysis.representations import SimilarityOptions, layer_similarity
    from ..analysis.systems import default_lr, full_head_lr, low_resource_split, parse_system, train_system
    from ..console import Progress
    from ..console import say as _say
    from ..data.tasks import get_task, resolve_data_dir

    data_dir = resolve_data_dir(opts.get("data_dir"))
    systems = [parse_system(s) for s in SYSTEMS if s in opts["systems"]]
    plan = [(t, n, s, sys) for s in opts["seeds"] for t in opts["tasks"] for n in opts["sizes"] for sys in systems]
    todo = [p for p in plan if not log.has(LOW_KEYS, part="low", task=p[0], size=p[1], seed=p[2], system=p[3].name)]
    progress = Progress(len(plan), len(plan) - len(todo))
    _say(f"effectiveness (low-resource): {len(plan)} runs, {len(plan) - len(todo)} already in {log.path}")
    sim = SimilarityOptions(tokens=opts["tokens"], correlation=opts["correlation"], max_length=opts["max_length"])
    cache: dict[tuple, Any] = {}
    for task, size, seed, system in todo:
        spec = get_task(task)
        if (task, size, seed) not in cache:
            cache = {k: v for k, v in cache.items() if k[0] in ("base", "probe")}
            cache[(task, size, seed)] = low_resource_split(spec, data_dir, size, seed, opts["dev_size"],
                                                           opts["test_size"])
        data = cache[(task, size, seed)]
        label = f"{task} N={size} seed={seed} {system.name}"
        progress.step(label)
        lr = default_lr(system, opts["learning_rate"], opts["full_lr"], opts["head_lr"])
        model, tokenizer, row = train_system(
            system, spec, data, model=opts.get("model"), lr=lr, seed=seed, epochs=opts["epochs"],
            batch_size=opts["batch_size"], max_length=opts["max_length"], eval_batch_size=opts["eval_batch_size"],
            precision=opts["precision"], progress=opts["progress"], label=label,
            backbone_dropout=opts.get("backbone_dropout", True), head_lr=full_head_lr(system, opts),
            output_dir=Path(opts["output_dir"]) / "work" / label.replace(" ", "_"))
        if opts["similarity"]:
            if ("base",) not in cache:
                from transformers import AutoModel

                from ..model import default_model_path

                cache[("base",)] = AutoModel.from_pretrained(opts.get("model") or default_model_path()).eval()
            if ("probe", task) not in cache:
                cache[("probe", task)] = _probe(task, data_dir, opts)
            res = layer_similarity(cache[("base",)], model, tokenizer, cache[("probe", task)], sim,
                                   names=("base model", label))
            row["similarity"] = {"layers": res.layers, **res.scores, "points": res.points}
            _say(f"[{label}] similarity to the base, top layer: " +
                 ", ".join(f"{m.upper()} {v[-1]:.3f}" for m, v in res.scores.items()))
        row.pop("seed", None)
        log.add({"part": "low", "task": task, "size": size, "seed": seed, **row, "train": len(data[0]),
                 "dev": len(data[1]), "test": len(data[2])})
        progress.finish()
    for task in opts["tasks"]:
        for size in opts["sizes"]:
            baselines(get_task(task), data_dir, size, opts["seeds"], opts, log, "low")


def _xnli_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {**opts, "train_size": opts["xnli_train_size"], "eval_size": opts["xnli_eval_size"],
            "epochs": opts["xnli_epochs"], "systems": [s for s in SYSTEMS if s in opts["systems"]]}


def run_xnli(opts: dict[str, Any], log: Any) -> None:
    """Part (b): English training, zero-shot evaluation in every XNLI language; baselines per language."""
    from ..analysis.commands import zero_shot_baselines, zero_shot_runs

    xopts = _xnli_opts(opts)
    zero_shot_runs(xopts, log, "xnli", part="xnli")
    zero_shot_baselines(xopts, log, "xnli", part="xnli")


def _lr_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {**opts, "task": opts["lr_task"], "train_size": opts["lr_size"], "epochs": opts["lr_epochs"],
            "systems": [s for s in SYSTEMS if s in opts["systems"]]}


def run_lr(opts: dict[str, Any], log: Any) -> None:
    """Part (c): the learning-rate grid on one task and size."""
    from ..analysis.commands import baselines, sweep
    from ..data.tasks import get_task, resolve_data_dir

    lopts = _lr_opts(opts)
    sweep(lopts, log, part="lr", label_prefix="effectiveness: ")
    baselines(get_task(lopts["task"]), resolve_data_dir(opts.get("data_dir")), lopts["train_size"], opts["seeds"],
              lopts, log, "lr")


# --- report -------------------------------------------------------------------------------------------


def _rows(log: Any, part: str) -> list[dict[str, Any]]:
    keys = {"low": LOW_KEYS, "xnli": ("part", "suite", "seed", "system"),
            "lr": ("part", "task", "size", "seed", "system", "lr")}[part]
    return [r for r in log.unique(keys) if r.get("part") == part]


def paired(values: dict[tuple, float], a: str, b: str) -> list[float]:
    """``values[(key..., a)] - values[(key..., b)]`` over the keys both systems have."""
    out = []
    for key, v in values.items():
        if key[-1] == a and key[:-1] + (b,) in values:
            other = values[key[:-1] + (b,)]
            if v is not None and other is not None and not (math.isnan(v) or math.isnan(other)):
                out.append(v - other)
    return out


def verdict(diffs: list[float]) -> str:
    """holds / does not hold / inconclusive: mean difference beyond two standard errors, or not."""
    from ..reporting import mean_std

    if len(diffs) < 2:
        return "inconclusive (one pair)" if diffs else "not measured"
    mean, std = mean_std(diffs)
    se = std / math.sqrt(len(diffs))
    if mean > 2 * se:
        return "holds"
    if mean < -2 * se:
        return "does not hold"
    return "inconclusive"


def _fmt(diffs: list[float], unit: str = "") -> str:
    from ..reporting import mean_std

    if not diffs:
        return "–"
    mean, std = mean_std(diffs)
    wins = sum(d > 0 for d in diffs)
    return f"{mean:+.2f}{unit} ± {std:.2f} over {len(diffs)} pairs ({wins}/{len(diffs)} positive)"


def _rise(curve: list[dict[str, Any]]) -> float | None:
    losses = [c["dev_loss"] for c in curve or [] if c.get("dev_loss") is not None]
    return losses[-1] - min(losses) if len(losses) >= 2 else None


def _drop(curve: list[dict[str, Any]]) -> float | None:
    scores = [c["dev_score"] for c in curve or [] if c.get("dev_score") is not None]
    return max(scores) - scores[-1] if len(scores) >= 2 else None


def _layer_mean(values: list[float]) -> float:
    """Mean similarity over the transformer layers (``values[0]`` is the embedding layer, shared by both)."""
    layers = values[1:] or values
    return sum(layers) / len(layers)


SIGNAL_MARGIN = 2.0
"""Points (x100) by which the frozen linear probe must beat the trivial baseline, mean over seeds, for a setting
(task, size) to count as one where the frozen model carries signal (the restricted form of claim (2a))."""


def _setting_scores(low: list[dict], task: str, size: Any) -> dict[tuple, float]:
    return {(r["seed"], r["system"]): r["test_score"] for r in low if r["task"] == task and r["size"] == size}


def probe_margin(low: list[dict], task: str, size: Any) -> float | None:
    """Mean over seeds of (linear probe - trivial) test score x100 on one setting; None without both."""
    d = paired(_setting_scores(low, task, size), "linear probe", "trivial")
    return 100 * sum(d) / len(d) if d else None


def pairs_table(low: list[dict], settings: list[tuple], adapters: list[str]) -> list[dict[str, Any]]:
    """Claim (2a) per setting: each adapter's paired test-score difference to full fine-tuning (x100, mean ± std
    over seeds), beside the frozen probe's margin over the trivial baseline (signal in the frozen model)."""
    from ..reporting import mean_std

    out = []
    for task, size in settings:
        scores = _setting_scores(low, task, size)
        line: dict[str, Any] = {"setting": f"{task}/{size}"}
        for ad in adapters:
            d = [100 * x for x in paired(scores, ad, "full")]
            line[f"{ad} - full"] = "{:+.1f} ± {:.1f} (n={})".format(*mean_std(d), len(d)) if d else "–"
        margin = probe_margin(low, task, size)
        line["probe - trivial"] = f"{margin:+.1f}" if margin is not None else "–"
        out.append(line)
    return out


def claims(low: list[dict], xnli: list[dict], lr: list[dict], adapters: list[str]) -> list[dict[str, Any]]:
    """The claims table: one row per claim and adapter size, from paired differences to full fine-tuning."""
    import statistics

    out = []
    for ad in adapters:
        for where, pick in (("top-layer", lambda v: v[-1]), ("mean over the layers'", _layer_mean)):
            for metric in ("rsa", "cka"):
                sims = {(r["task"], r["size"], r["seed"], r["system"]): pick(values) for r in low
                        if (values := (r.get("similarity") or {}).get(metric))}
                d = paired(sims, ad, "full")
                out.append({"claim": f"(1) less deviation from the base model: {where} {metric.upper()} higher",
                            "system": ad, "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        scores = {(r["task"], r["size"], r["seed"], r["system"]): r["test_score"] for r in low}
        d = [100 * x for x in paired(scores, ad, "full")]
        out.append({"claim": "(2a) better in low-resource settings (test score x100)", "system": ad,
                    "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        signal = {setting for setting in {key[:2] for key in scores}
                  if (m := probe_margin(low, *setting)) is not None and m > SIGNAL_MARGIN}
        d = [100 * x for x in paired({k: v for k, v in scores.items() if k[:2] in signal}, ad, "full")]
        out.append({"claim": f"(2a) the same, on the settings where the frozen probe beats the trivial baseline by "
                             f"more than {SIGNAL_MARGIN:g} points", "system": ad,
                    "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        others = {}
        for r in xnli:
            vals = [v["score"] for k, v in r.get("languages", {}).items() if k != "en"]
            if vals:
                others[(r["seed"], r["system"])] = 100 * sum(vals) / len(vals)
        d = paired(others, ad, "full")
        out.append({"claim": "(2b) better cross-lingual zero-shot (XNLI, mean over non-English languages, x100)",
                    "system": ad, "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        rises = {(r["task"], r["size"], r["seed"], r["system"]): _rise(r.get("curve")) for r in low}
        rises = {k: v for k, v in rises.items() if v is not None}
        d = [-x for x in paired(rises, ad, "full")]  # positive: the adapter's dev loss rises less
        out.append({"claim": "(3) overfits less: dev loss rises less after its minimum (full - adapter)",
                    "system": ad, "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        drops = {(r["task"], r["size"], r["seed"], r["system"]): _drop(r.get("curve")) for r in low}
        d = [-100 * x for x in paired({k: v for k, v in drops.items() if v is not None}, ad, "full")]
        out.append({"claim": "(3) overfits less: dev score falls less after its best epoch (full - adapter, x100)",
                    "system": ad, "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
        spread: dict[tuple, float] = {}
        for seed in sorted({r["seed"] for r in lr}):
            for system in (ad, "full"):
                vals = [100 * r["test_score"] for r in lr if r["seed"] == seed and r["system"] == system
                        and r.get("test_score") is not None]
                if len(vals) >= 2:
                    spread[(seed, system)] = statistics.stdev(vals)
        d = [-x for x in paired(spread, ad, "full")]  # positive: the adapter's scores vary less over the grid
        out.append({"claim": "(4) less sensitive to the learning rate: std of test score over the grid (full - adapter)",
                    "system": ad, "measurement (adapter - full)": _fmt(d), "verdict": verdict(d)})
    return out


def report(log: Any, opts: dict[str, Any]) -> None:
    """Markdown tables, JSON, the four PNG figures and the claims table, from the logged runs."""
    from ..analysis.crosslingual import SUITES, zero_shot_plot, zero_shot_table
    from ..analysis.sweep import aggregate, sweep_plot
    from ..console import say as _say
    from ..io import atomic_write_json
    from ..reporting import grouped_bar_plot, markdown_table
    from .common import series_for_plot, summarize, trivial_note

    out = Path(opts["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    adapters = [s for s in systems if s != "full"]
    low = [r for r in _rows(log, "low") if r["task"] in opts["tasks"] and r["size"] in opts["sizes"]
           and r["seed"] in opts["seeds"]]
    xnli = [r for r in _rows(log, "xnli") if r["seed"] in opts["seeds"]]
    lr = [r for r in _rows(log, "lr") if r["seed"] in opts["seeds"] and r.get("task") == opts["lr_task"]]
    lr_runs = [r for r in lr if r["system"] in systems]
    all_systems = [*systems, "linear probe", "trivial"]
    text = ["# On the effectiveness of adapter-based tuning: adapters vs full fine-tuning\n",
            f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}. Systems: Houlsby adapters with bottleneck 64 "
            f"and 256 (lr {opts['learning_rate']:g}; backbone frozen, head trained), full fine-tuning (lr "
            f"{opts['full_lr']:g}{_full_head(opts)}); "
            f"baselines: trivial (majority class / constant) and a frozen linear probe on mean-pooled features. "
            f"{opts['epochs']:g} epochs (best dev epoch kept), batch {opts['batch_size']}, dev {opts['dev_size']} "
            f"carved from train, test cap {opts['test_size'] or 'none'}, precision {opts.get('precision', 'fp32')}; "
            f"seeds {', '.join(map(str, opts['seeds']))}. Scores x100, mean ± std over seeds (n = runs).\n"]
    # (a) low resource
    planned = [(t, n) for t in opts["tasks"] for n in opts["sizes"]]
    ran = {(r["task"], r["size"]) for r in low if r["system"] in systems}
    settings = [p for p in planned if p in ran]
    pending = [f"{t}/{n}" for t, n in planned if (t, n) not in ran]
    low_table = summarize(low, settings, ("task", "size"), all_systems)
    text += ["## (a) Low-resource subsets: test score\n",
             markdown_table(low_table) if settings else "(no runs)\n", *trivial_note(low_table),
             *([f"No run yet: {', '.join(pending)}.\n"] if pending else [])]
    if settings and adapters:
        text += ["Paired differences to full fine-tuning per setting (same seed; x100), and the frozen linear "
                 "probe's margin over the trivial baseline (mean over seeds): where it is near 0 the frozen model "
                 "holds no usable signal for the task at that size.\n", markdown_table(pairs_table(low, settings,
                                                                                                  adapters))]
    plots = []
    if settings:
        plots.append(grouped_bar_plot(out / "low_resource.png", [f"{t} N={n}" for t, n in settings],
                                      series_for_plot(low, settings, ("task", "size"), all_systems),
                                      title="Low-resource test score (x100), mean ± std over seeds",
                                      ylabel="test score x100"))
    # (b) cross-lingual
    evaluated = {lang for r in xnli for lang in r.get("languages", {})}
    languages = [lang for lang in opts.get("languages") or SUITES["xnli"].languages if lang in evaluated]
    text += ["\n## (b) Cross-lingual zero-shot XNLI (trained on English)\n",
             markdown_table(zero_shot_table(xnli, languages, all_systems)) if xnli else "(no runs)\n"]
    missing = sorted({m for r in xnli for m in r.get("missing", [])})
    if missing:
        text.append("Languages not evaluated (file missing): " + ", ".join(f"`{m}`" for m in missing) + "\n")
    if xnli:
        plots.append(zero_shot_plot(out / "zero_shot_xnli.png", xnli, languages, all_systems,
                                    title="XNLI zero-shot from English: accuracy x100"))
    # (c) lr sweep
    base_lr = [r for r in lr if r["system"] in ("trivial", "linear probe")]
    table = aggregate(lr_runs, systems)
    for name in ("trivial", "linear probe"):
        vals = [100 * r["test_score"] for r in base_lr if r["system"] == name and r["test_score"] is not None]
        if vals:
            table.append({"system": name, "grid mean": round(sum(vals) / len(vals), 2), "runs": len(vals)})
    text += [f"\n## (c) Learning-rate sensitivity ({opts['lr_task']}, N={opts['lr_size']}, {opts['lr_epochs']:g} "
             "epochs)\n", "Per lr: mean ± std over seeds; grid mean / std / spread over the per-lr means.\n",
             markdown_table(table, digits=dict.fromkeys(("grid mean", "grid std", "spread (max-min)"), 2))
             if table else "(no runs)\n"]
    if lr_runs:
        plots.append(sweep_plot(out / "lr_sweep.png", lr_runs, systems,
                                title=f"{opts['lr_task']} N={opts['lr_size']}: test score against lr"))
    # (d) curves
    text += ["\n## (d) Overfitting: dev loss per epoch\n",
             "Per run: rise of the dev loss from its minimum to the last epoch, and fall of the dev score (x100) "
             "from its best epoch to the last; mean ± std over the runs (tasks and seeds) per training size.\n",
             markdown_table(rise_table(low, opts["sizes"], systems)) if settings else "(no runs)\n"]
    if settings:
        plots.append(curves_figure(out / "dev_loss.png", low, settings, systems))
    # (e) similarity
    sim_table = similarity_table(low, systems)
    text += ["\n## (e) Representational similarity to the base model per layer\n",
             f"Probe: up to {opts['probe_size']} test sentences of each task, tokens {opts['tokens']}, RSA "
             f"{opts['correlation']}; mean over runs (all tasks, sizes, seeds). Layer 0 = embeddings.\n",
             markdown_table(sim_table) if sim_table else "(no similarity measured)\n"]
    if sim_table:
        plots.append(similarity_figure(out / "similarity.png", low, systems))
    text += ["\n## Claims\n",
             "Paired differences to full fine-tuning on the same task, size and seed (XNLI: seed; lr: seed). "
             "holds / does not hold: mean beyond two standard errors of the pairs; otherwise inconclusive.\n",
             markdown_table(rows) if (rows := claims(low, xnli, lr_runs, adapters)) else
             "(no adapter has a full fine-tuning run to pair with)\n"]
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    atomic_write_json(out / "results.json", {"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                             "low": low, "xnli": xnli, "lr": lr})
    _say("\n".join(text))
    _say("plots: " + ", ".join(map(str, plots)))


def _full_head(opts: dict[str, Any]) -> str:
    rate = opts.get("full_head_lr")
    return f", head {rate:g} in parts (a) and (b)" if rate else ""


def rise_table(low: list[dict], sizes: list[int], systems: list[str]) -> list[dict[str, Any]]:
    from ..reporting import format_mean_std, mean_std

    out = []
    for system in systems:
        line: dict[str, Any] = {"system": system}
        for size in sizes:
            runs = [r for r in low if r["system"] == system and r["size"] == size]
            rises = [x for r in runs if (x := _rise(r.get("curve"))) is not None]
            line[f"N={size} rise"] = format_mean_std(rises, 3) if rises else "–"
            drops = [100 * x for r in runs if (x := _drop(r.get("curve"))) is not None]
            line[f"N={size} score drop"] = format_mean_std(drops, 1) if drops else "–"
            best = [r["best_epoch"] for r in runs if r.get("best_epoch") is not None]
            line[f"N={size} best epoch"] = f"{mean_std(best)[0]:.1f}" if best else "–"
        out.append(line)
    return out


def curves_figure(path: Path, low: list[dict], settings: list[tuple], systems: list[str]) -> Path:
    """Dev loss against epoch: one panel per task and size, one line per system (mean over seeds)."""
    from ..analysis.sweep import mean_curve
    from ..reporting import pyplot

    plt = pyplot()
    panels = [s for s in settings if any((r["task"], r["size"]) == s for r in low)][:12]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    for ax, (task, size) in zip(axes.flat, panels, strict=False):
        for i, system in enumerate(systems):
            xs, ys = mean_curve([r for r in low if (r["task"], r["size"], r["system"]) == (task, size, system)])
            if xs:
                ax.plot(xs, ys, marker=".", label=system, color=f"C{i}")
        ax.set_title(f"{task} N={size}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Dev loss per epoch (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _layer_means(low: list[dict], system: str, metric: str) -> list[float]:
    curves = [r["similarity"][metric] for r in low if r["system"] == system and metric in (r.get("similarity") or {})]
    if not curves:
        return []
    return [sum(c[i] for c in curves) / len(curves) for i in range(min(map(len, curves)))]


def similarity_table(low: list[dict], systems: list[str]) -> list[dict[str, Any]]:
    out = []
    for metric in ("cka", "rsa"):
        for system in systems:
            means = _layer_means(low, system, metric)
            if means:
                out.append({"metric": metric.upper(), "system": system,
                            **{("emb" if i == 0 else f"L{i}"): round(v, 3) for i, v in enumerate(means)}})
    return out


def similarity_figure(path: Path, low: list[dict], systems: list[str]) -> Path:
    from ..reporting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, metric in zip(axes, ("cka", "rsa"), strict=True):
        for i, system in enumerate(systems):
            means = _layer_means(low, system, metric)
            if means:
                ax.plot(range(len(means)), means, marker="o", label=system, color=f"C{i}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{metric.upper()} with the base model (mean over runs)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
