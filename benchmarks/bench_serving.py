"""Serving many adapters from one base model: mixed-adapter batches (part 1: routing).

Every measurement is one function in :data:`MEASUREMENTS`, run by name with ``--only`` (default: all), so
other parts (a server, an adapter pool) add theirs beside these. All ratios come from the same run, with the
configurations interleaved repeat by repeat and the median kept.

- ``exactness``: for every method, the largest |mixed-batch row - that example run alone with its adapter
  active| (fp32; rows of different lengths, None rows among them), on the bundled MiniLM. Target <= 1e-5.
- ``pfeiffer`` / ``lora``: a mixed batch (``--batch`` x ``--seq`` tokens, eval) over ``--adapters`` adapters
  (row i gets adapter i mod N) against the same batch with one adapter active, and the bare model.
  Target: mixed <= 1.10 x single.
- ``peft``: our LoRA mixed batch against peft's (``adapter_names=`` in peft) on the same adapters, with the
  largest logit difference between the two. Target: ours <= peft's.

Usage::

    python benchmarks/bench_serving.py [--only exactness,pfeiffer,lora,peft] [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from adapterkit.config import MethodConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import perturb_adapter, routed_vs_solo

Table = tuple[str, list[str], list[list[str]]]
"""(title, header, rows) of one Markdown table."""


def token_batch(tokenizer: Any, batch: int, seq: int, *, padded: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random word-piece ids between [CLS] and [SEP]; ``padded``: rows of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    lengths = [seq - (7 * i) % (seq // 2) if padded else seq for i in range(batch)]
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length - 1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        ids[row, length:] = tokenizer.pad_token_id
        mask[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


_LOADED: dict[str, tuple[Any, Any]] = {}


def minilm(pooling: str = "auto") -> tuple[AdaptedModel, Any]:
    """A fresh AdaptedModel over (a copy of) the bundled MiniLM with a 2-class head; loaded from disk once."""
    if pooling not in _LOADED:
        torch.manual_seed(0)
        _LOADED[pooling] = load_base_model(None, "classification", 2, pooling=pooling)
    hf, tokenizer = _LOADED[pooling]
    return AdaptedModel(copy.deepcopy(hf)), tokenizer


def with_adapters(model: AdaptedModel, configs: dict[str, MethodConfig]) -> AdaptedModel:
    for seed, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config, activate=False)
        perturb_adapter(model, name, scale=0.05, seed=seed)
    return model.eval()


def timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable; one warm-up each, then the callables interleaved ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def mixed_names(batch: int, adapters: int, prefix: str) -> list[str]:
    return [f"{prefix}{i % adapters}" for i in range(batch)]


# -- measurements ------------------------------------------------------------------------------------------
def measure_exactness(opts: argparse.Namespace) -> list[Table]:
    from adapterkit.methods.adaptable import AdaptableConfig
    from adapterkit.methods.adapterdrop import AdapterDropConfig
    from adapterkit.methods.bottleneck import HoulsbyConfig, ParallelConfig, PfeifferConfig
    from adapterkit.methods.fusion import FusionConfig
    from adapterkit.methods.lora import LoRAConfig
    from adapterkit.methods.prefix import PrefixTuningConfig
    from adapterkit.methods.prompt import PromptTuningConfig
    from adapterkit.methods.unipelt import UniPELTConfig, UniPELTPromptConfig

    def two(make: Callable[[int], MethodConfig]) -> dict[str, MethodConfig]:
        return {"x": make(0), "y": make(1)}

    cases: dict[str, dict[str, MethodConfig]] = {
        "pfeiffer": two(lambda i: PfeifferConfig(init="near_identity", reduction_factor=16 // (i + 1))),
        "houlsby": two(lambda i: HoulsbyConfig(init="near_identity")),
        "parallel": two(lambda i: ParallelConfig(init="near_identity")),
        "pfeiffer original_ln": two(lambda i: PfeifferConfig(init="near_identity", original_ln=True)),
        "houlsby original_ln": two(lambda i: HoulsbyConfig(init="near_identity", original_ln=True)),
        "lora": two(lambda i: LoRAConfig(r=8 // (i + 1))),
        "prefix (lengths 10, 5)": two(lambda i: PrefixTuningConfig(prefix_length=10 // (i + 1))),
        "prompt (lengths 10, 5)": two(lambda i: PromptTuningConfig(num_tokens=10 // (i + 1), init="random")),
        "fusion": {"x": PfeifferConfig(init="near_identity"), "z": PfeifferConfig(init="near_identity"),
                   "y": FusionConfig(adapters=("x", "z"))},
        "adapterdrop": two(lambda i: AdapterDropConfig(init="near_identity")),
        "adaptable (eval)": two(lambda i: AdaptableConfig(init="near_identity", switch_init=(0.0, 1.0))),
        "unipelt": two(lambda i: UniPELTConfig()),
        "unipelt_prompt": two(lambda i: UniPELTPromptConfig()),
    }
    names = ["x", None, "y", "x", "y", None, "y", "x"]
    rows = []
    for label, configs in cases.items():
        model, tokenizer = minilm()
        with_adapters(model, configs)
        batch = token_batch(tokenizer, len(names), opts.exact_seq, padded=True)
        diff = routed_vs_solo(model, batch, names)
        rows.append([label, f"{diff:.2e}", "yes" if diff <= 1e-5 else "NO"])
        print(f"exactness {label}: {diff:.2e}", flush=True)
    model, tokenizer = minilm()  # each adapter with its own (pooled) head
    with_adapters(model, two(lambda i: PfeifferConfig(init="near_identity")))
    g = torch.Generator().manual_seed(5)
    for name in ("x", "y"):
        model.set_adapter_head(name, {k: v + 0.1 * torch.randn(v.shape, generator=g)
                                      for k, v in model.head_state_dict().items()})
    diff = routed_vs_solo(model, token_batch(tokenizer, len(names), opts.exact_seq, padded=True), names)
    rows.append(["pfeiffer, own heads", f"{diff:.2e}", "yes" if diff <= 1e-5 else "NO"])
    title = (f"Exactness: max |mixed row - solo row| (MiniLM, fp32, {len(names)} rows of up to {opts.exact_seq} tokens "
             "over 2 adapters and None)")
    return [(title, ["method", "max abs diff", "<= 1e-5"], rows)]


def _single_vs_mixed(opts: argparse.Namespace, label: str, make: Callable[[int], MethodConfig]) -> list[Table]:
    model, tokenizer = minilm()
    with_adapters(model, {f"a{i}": make(i) for i in range(opts.adapters)})
    batch = token_batch(tokenizer, opts.batch, opts.seq)
    names = mixed_names(opts.batch, opts.adapters, "a")

    model.set_active_adapters("a0")
    t = timed({"bare": lambda: _bare(model, batch), "single": lambda: model(**batch),
               "mixed": lambda: model(**batch, adapter_names=names)}, opts.repeats)
    ratio = t["mixed"] / t["single"]
    rows = [["bare model", f"{t['bare']:.3f}", f"{t['bare'] / t['single']:.3f}"],
            ["one adapter active", f"{t['single']:.3f}", "1.000"],
            [f"mixed over {opts.adapters} adapters", f"{t['mixed']:.3f}", f"{ratio:.3f}"]]
    verdict = "met" if ratio <= 1.10 else "MISSED"
    title = (f"{label}: batch {opts.batch} x {opts.seq} tokens, eval, CPU, {opts.threads} threads, median of "
             f"{opts.repeats} (target mixed <= 1.10 x single: {verdict})")
    print(f"{label}: single {t['single']:.3f}s mixed {t['mixed']:.3f}s ratio {ratio:.3f}", flush=True)
    return [(title, ["run", "seconds", "x single"], rows)]


def _bare(model: AdaptedModel, batch: dict[str, torch.Tensor]) -> Any:
    """The model with no adapter active (the active ones restored after)."""
    active = model.active_adapters
    model.set_active_adapters()
    try:
        return model(**batch)
    finally:
        model.set_active_adapters(*active)


def measure_pfeiffer(opts: argparse.Namespace) -> list[Table]:
    from adapterkit.methods.bottleneck import PfeifferConfig

    return _single_vs_mixed(opts, "Pfeiffer (reduction 16)", lambda i: PfeifferConfig(init="near_identity"))


def measure_lora(opts: argparse.Namespace) -> list[Table]:
    from adapterkit.methods.lora import LoRAConfig

    return _single_vs_mixed(opts, "LoRA (r 8, query + value)", lambda i: LoRAConfig(r=8))


def measure_peft(opts: argparse.Namespace) -> list[Table]:
    from peft import PeftModel

    from adapterkit.interop.peft import save_peft_adapter
    from adapterkit.methods.lora import LoRAConfig

    model, tokenizer = minilm(pooling="hf")  # peft runs the model's own head: compare the same head
    base_copy = copy.deepcopy(model.model)
    names = [f"l{i}" for i in range(opts.adapters)]
    with_adapters(model, {n: LoRAConfig(r=8) for n in names})
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            save_peft_adapter(model, n, f"{tmp}/{n}", include_head=False)
        peft_model = PeftModel.from_pretrained(base_copy, f"{tmp}/{names[0]}", adapter_name=names[0])
        for n in names[1:]:
            peft_model.load_adapter(f"{tmp}/{n}", adapter_name=n)
    peft_model.eval()
    batch = token_batch(tokenizer, opts.batch, opts.seq)
    routed = mixed_names(opts.batch, opts.adapters, "l")
    with torch.inference_mode():
        ours_logits = model(**batch, adapter_names=routed).logits
        peft_logits = peft_model(**batch, adapter_names=routed).logits
    agreement = float((ours_logits - peft_logits).abs().max())
    model.set_active_adapters(names[0])
    peft_model.set_adapter(names[0])
    t = timed({"ours single": lambda: model(**batch), "ours mixed": lambda: model(**batch, adapter_names=routed),
               "peft single": lambda: peft_model(**batch), "peft mixed": lambda: peft_model(**batch, adapter_names=routed)},
              opts.repeats)
    verdict = "met" if t["ours mixed"] <= t["peft mixed"] else "MISSED"
    rows = [[k, f"{v:.3f}", f"{v / t['peft mixed']:.3f}"] for k, v in t.items()]
    title = (f"LoRA mixed batch, adapterkit vs peft {__import__('peft').__version__} (adapter_names=), {opts.adapters} "
             f"adapters, batch {opts.batch} x {opts.seq}, {opts.threads} threads, median of {opts.repeats}; max logit "
             f"difference ours vs peft {agreement:.1e} (target ours mixed <= peft mixed: {verdict})")
    print(f"peft: {t} agreement {agreement:.1e}", flush=True)
    return [(title, ["run", "seconds", "x peft mixed"], rows)]


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], list[Table]]] = {
    "exactness": measure_exactness,
    "pfeiffer": measure_pfeiffer,
    "lora": measure_lora,
    "peft": measure_peft,
}
"""Name -> measurement; ``--only`` picks some. Each returns Markdown tables."""


def markdown(table: Table) -> str:
    title, header, rows = table
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma-separated, from {list(MEASUREMENTS)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exact-seq", type=int, default=32, help="tokens per row in the exactness check")
    opts = parser.parse_args()
    chosen = [m.strip() for m in opts.only.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MEASUREMENTS]
    if unknown:
        parser.error(f"--only: unknown {unknown}; known: {list(MEASUREMENTS)}")
    torch.set_num_threads(opts.threads)
    tables = []
    for name in chosen:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        tables += MEASUREMENTS[name](opts)
        print(f"[{name}] done in {time.perf_counter() - start:.0f}s", flush=True)
    print()
    print("\n\n".join(markdown(t) for t in tables))


if __name__ == "__main__":
    main()
