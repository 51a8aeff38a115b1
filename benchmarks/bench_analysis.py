"""Per-layer CKA and RSA on a probe of 2,000 sentences x all 7 hidden states of MiniLM: our memory-bounded
implementation (adapterkit.analysis.similarity) against a naive NumPy one that materialises every n x n
matrix, in the same run, on the same features.

The base model is the bundled all-MiniLM-L6-v2; the "tuned" model is the same with a Houlsby adapter
whose weights are randomly perturbed (seeded), so that the two differ. Both run once over the probe
(SST-2 training sentences, a seeded sample) and the features of every layer are kept:

- sentence: one mean-pooled vector per sentence (n = 2,000 points per layer);
- tokens: a seeded sample of real (non-padding, non-special) tokens (n = --tokens points per layer).

Then, per feature set and metric, each implementation computes all 7 layers. Ours: CKA from
feature-space statistics accumulated in batches (d x d matrices; points fed 32 sentences or 512 tokens
at a time, as the streaming pipeline does) and RSA (Pearson) blockwise over 512-row blocks. Naive:
CKA via the centred n x n Gram matrices, RSA via the two n x n cosine matrices, their upper triangles
(np.triu_indices) and np.corrcoef; one layer at a time (all matrices of a layer live at once). Time:
wall clock (median of --repeats, implementations alternating); memory: tracemalloc peak of NumPy
allocations during the computation (the input features excluded). Values of the two must agree.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_analysis.py --data-dir ../shared/data [--sentences 2000]
        [--tokens 3000] [--repeats 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np
import torch

from adapterkit.analysis.similarity import CKAStats, rsa


def features(n_sentences: int, n_tokens: int, data_dir: str, seed: int = 0) -> tuple[dict, float]:
    from transformers import AutoModel, AutoTokenizer

    from adapterkit.analysis.representations import encode_probe, hidden_states, read_probe
    from adapterkit.methods.bottleneck import HoulsbyConfig
    from adapterkit.model import AdaptedModel, default_model_path

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path).eval()
    tuned = AdaptedModel(AutoModel.from_pretrained(path))
    tuned.add_adapter("h", HoulsbyConfig())
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in tuned.adapter_parameters("h").values():
            p.add_(0.05 * torch.randn_like(p))
    tuned.eval()
    probe = read_probe("sst2", data_dir=data_dir, split="train", limit=n_sentences, seed=seed)
    encoded = encode_probe(tokenizer, probe, 128)
    start = time.perf_counter()
    sent: list[list[list[np.ndarray]]] = [[[], []] for _ in range(7)]
    toks: list[list[list[np.ndarray]]] = [[[], []] for _ in range(7)]
    for b0 in range(0, len(encoded), 64):
        rows = encoded[b0: b0 + 64]
        batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows],
                              return_tensors="pt")
        special = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for i, r in enumerate(rows):
            special[i, : len(r["special_tokens_mask"])] = torch.tensor(r["special_tokens_mask"], dtype=torch.bool)
        keep = batch["attention_mask"].bool() & ~special
        for m, model in enumerate((base, tuned)):
            for layer, h in enumerate(hidden_states(model, dict(batch))):
                w = keep.float()
                sent[layer][m].append(((h * w[..., None]).sum(1) / w.sum(1, keepdim=True)).numpy())
                toks[layer][m].append(h[keep].numpy())
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    total = sum(len(t) for t in toks[0][0])
    pick = np.sort(rng.choice(total, min(n_tokens, total), replace=False))
    out = {"sentence": [(np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)) for a, b in sent],
           "tokens": [(np.concatenate(a)[pick].astype(np.float64), np.concatenate(b)[pick].astype(np.float64))
                      for a, b in toks],
           "total_tokens": total}
    return out, seconds


# --- the two implementations ------------------------------------------------------------------------


def ours_cka(layers: list, chunk: int) -> list[float]:
    out = []
    for x, y in layers:
        stats = CKAStats(x.shape[1], y.shape[1])
        for i in range(0, len(x), chunk):
            stats.update(x[i: i + chunk], y[i: i + chunk])
        out.append(stats.value())
    return out


def ours_rsa(layers: list, chunk: int) -> list[float]:
    return [rsa(x, y, "pearson", block_size=512).value for x, y in layers]


def naive_cka(layers: list, chunk: int) -> list[float]:
    out = []
    for x, y in layers:
        xc, yc = x - x.mean(0), y - y.mean(0)
        k, ell = xc @ xc.T, yc @ yc.T  # n x n Gram matrices
        out.append(float(np.sum(k * ell) / (np.linalg.norm(k) * np.linalg.norm(ell))))
    return out


def naive_rsa(layers: list, chunk: int) -> list[float]:
    out = []
    for x, y in layers:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        yn = y / np.linalg.norm(y, axis=1, keepdims=True)
        sa, sb = xn @ xn.T, yn @ yn.T  # n x n cosine matrices
        iu = np.triu_indices(len(x), 1)
        out.append(float(np.corrcoef(sa[iu], sb[iu])[0, 1]))
    return out


def measure(fn, layers: list, chunk: int) -> tuple[float, float, list[float]]:  # noqa: ANN001
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    values = fn(layers, chunk)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    feats, extract_s = features(args.sentences, args.tokens, args.data_dir)
    lines = [f"Probe: {args.sentences} SST-2 training sentences ({feats['total_tokens']} real tokens); "
             f"features of 7 hidden states x 2 models extracted in {extract_s:.1f}s (not included below).", "",
             "| features | n points / layer | metric | ours s | naive s | naive / ours | ours peak MiB | "
             "naive peak MiB | max abs diff |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for kind, chunk in (("sentence", 32), ("tokens", 512)):
        layers = feats[kind]
        n = len(layers[0][0])
        for metric, ours, naive in (("CKA", ours_cka, naive_cka), ("RSA pearson", ours_rsa, naive_rsa)):
            times: dict[str, list[float]] = {"ours": [], "naive": []}
            peaks: dict[str, float] = {}
            values: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for name, fn in (("ours", ours), ("naive", naive)):
                    s, peak, vals = measure(fn, layers, chunk)
                    times[name].append(s)
                    peaks[name] = max(peaks.get(name, 0.0), peak)
                    values[name] = vals
            t_ours, t_naive = statistics.median(times["ours"]), statistics.median(times["naive"])
            diff = max(abs(a - b) for a, b in zip(values["ours"], values["naive"], strict=True))
            lines.append(f"| {kind} | {n} | {metric} | {t_ours:.2f} | {t_naive:.2f} | {t_naive / t_ours:.1f}x | "
                         f"{peaks['ours']:.1f} | {peaks['naive']:.1f} | {diff:.1e} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
