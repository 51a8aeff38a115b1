"""``adapterkit analyze``: similarity (per-layer CKA/RSA), lr-sweep (scores over a learning-rate grid, dev
curves per epoch) and zero-shot (train on English, evaluate on every other language)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "similarity": {"models": [], "probe": None, "probe_split": None, "probe_column": None, "probe_size": 500,
                   "data_dir": None, "base_model": None, "metrics": ["cka", "rsa"], "tokens": "sample:2000",
                   "correlation": "pearson", "include_special": False, "batch_size": 32, "max_length": 128,
                   "seed": 0, "output_dir": "runs/analysis/similarity"},
}


def add_parsers(sub: Any) -> None:
    """Add ``analyze`` and its subcommands to the top-level subparsers ``sub``."""
    from ..cli import _bool, _csv

    an = sub.add_parser("analyze", help="analysis tools: per-layer similarity, lr sweeps and curves, zero-shot")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    si = an_sub.add_parser("similarity", help="per-layer CKA/RSA of tuned models against a base model",
                           argument_default=argparse.SUPPRESS)
    si.add_argument("models", nargs="+", metavar="MODEL",
                    help="BASE TUNED [TUNED...]: model directories, Hub ids or adapter directories (an adapter "
                    "directory means its base model with the adapter active); 'bundled' = the bundled MiniLM")
    si.add_argument("--probe", required=True, help="probe sentences: a .txt file (one per line), a CSV/TSV/JSONL/"
                    "Parquet file, or a registered task name")
    si.add_argument("--probe-split", help="task probe: split to read (default dev, else test, else train)")
    si.add_argument("--probe-column", help="table probe: the text column (default text/sentence/premise/question)")
    si.add_argument("--probe-size", type=int, help="keep a seeded sample of N probe sentences (default 500; 0 = all)")
    si.add_argument("--data-dir", help="data directory of registered tasks (default: $ADAPTERKIT_DATA_DIR)")
    si.add_argument("--base-model", help="base model for adapter directories (default: the one each adapter names)")
    si.add_argument("--metrics", type=_csv, help="cka, rsa or both (default cka,rsa)")
    si.add_argument("--tokens", help="all, sentence (mean-pooled) or sample:N tokens (default sample:2000)")
    si.add_argument("--correlation", choices=("pearson", "spearman"), help="RSA correlation (default pearson)")
    si.add_argument("--include-special", type=_bool, help="count [CLS]/[SEP]-like tokens (default false)")
    si.add_argument("--batch-size", type=int, help="probe sentences per forward pass (default 32)")
    si.add_argument("--max-length", type=int, help="maximum tokens per sentence (default 128)")
    si.add_argument("--seed", type=int, help="seed of the probe and token samples (default 0)")
    si.add_argument("--output-dir", help="where similarity.json and similarity.png go (default runs/analysis/similarity)")


def merge(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if k not in ("command", "analysis")}
    return {**DEFAULTS[args.analysis], **given}


def run(args: argparse.Namespace) -> int:
    opts = merge(args)
    if args.analysis == "similarity":
        return cmd_similarity(opts)
    raise ConfigError(f"analyze: unknown analysis {args.analysis!r}")


def _label(source: str, taken: set[str]) -> str:
    path = Path(source)
    label = f"{path.parent.name}/{path.name}" if path.name in ("adapter", "model") and path.parent.name else path.name
    label = label or source
    base, i = label, 2
    while label in taken:
        label, i = f"{base} ({i})", i + 1
    taken.add(label)
    return label


def cmd_similarity(opts: dict[str, Any]) -> int:
    """Per-layer similarity of each tuned model with the base model; writes JSON and a PNG."""
    from ..io import atomic_write_json
    from ..reporting import text_table
    from ..runner import _say
    from .representations import (
        SimilarityOptions,
        layer_similarity,
        load_for_analysis,
        read_probe,
        similarity_plot,
    )

    models = list(opts["models"])
    if len(models) < 2:
        raise ConfigError("models: give BASE and at least one TUNED model")
    sim = SimilarityOptions(metrics=tuple(opts["metrics"]), tokens=opts["tokens"], correlation=opts["correlation"],
                            include_special=bool(opts["include_special"]), batch_size=opts["batch_size"],
                            max_length=opts["max_length"], seed=opts["seed"])
    probe = read_probe(opts["probe"], data_dir=opts.get("data_dir"), split=opts.get("probe_split"),
                       column=opts.get("probe_column"), limit=opts.get("probe_size") or None, seed=opts["seed"])
    resolve = {"bundled": None}
    base, tokenizer, base_desc = load_for_analysis(resolve.get(models[0], models[0]), base=opts.get("base_model"))
    _say(f"similarity: base {base_desc}; probe {opts['probe']} ({len(probe)} sentences); tokens {sim.tokens}; "
         f"metrics {', '.join(sim.metrics)}")
    taken: set[str] = set()
    results = {}
    for source in models[1:]:
        tuned, _, desc = load_for_analysis(resolve.get(source, source), base=opts.get("base_model"))
        label = _label(source, taken)
        _say(f"similarity: {label} = {desc}")
        results[label] = layer_similarity(base, tuned, tokenizer, probe, sim, names=(models[0], source), progress=True)
    out = Path(opts["output_dir"])
    atomic_write_json(out / "similarity.json", {"base": models[0], "probe": str(opts["probe"]),
                                                 "models": {k: v.to_dict() for k, v in results.items()}})
    plot = similarity_plot(out / "similarity.png", results,
                           title=f"base {models[0]}; probe {opts['probe']} ({len(probe)} sentences, {sim.tokens})")
    rows = []
    for label, res in results.items():
        for i, layer in enumerate(res.layers):
            rows.append({"model": label, "layer": "emb" if layer == 0 else str(layer),
                         **{m.upper(): res.scores[m][i] for m in sim.metrics}})
    _say(text_table(rows, ["model", "layer", *[m.upper() for m in sim.metrics]]))
    _say(f"wrote {out / 'similarity.json'}, {plot}")
    return 0
