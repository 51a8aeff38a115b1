"""Serving many adapters from one base model: mixed-adapter batches (part 1: routing), the adapter pool and the
HTTP server (part 2).

Every measurement is one function in :data:`MEASUREMENTS`, run by name with ``--only`` (default: all), so
other parts (a server, an adapter pool) add theirs beside these. All ratios come from the same run, with the
configurations interleaved repeat by repeat and the median kept.

- ``exactness``: for every method, the largest |mixed-batch row - that example run alone with its adapter
  active| (fp32; rows of different lengths, None rows among them), on the bundled MiniLM. Target <= 1e-5.
- ``pfeiffer`` / ``lora``: a mixed batch (``--batch`` x ``--seq`` tokens, eval) over ``--adapters`` adapters
  (row i gets adapter i mod N) against the same batch with one adapter active, and the bare model.
  Target: mixed <= 1.10 x single.
- ``peft``: our LoRA mixed batch against peft's (``adapter_names=`` in peft) on the same adapters, each with
  its own copy of the head on both sides (peft's sequence-classification adapters keep the head as
  ``modules_to_save``), with the largest logit difference between the two. Target: ours <= peft's.

- ``server-load``: ``adapterkit serve`` (a subprocess, the bundled MiniLM, ``--max-adapters 32``) over
  ``--served-adapters`` (100) randomly initialised small Pfeiffer adapters with random 2-label heads, saved to a
  temporary folder. ``--requests`` (1,000) requests of one SST-style sentence each, for adapters drawn
  uniformly at random, are sent once by one client at a time and once by ``--clients`` (16) concurrent
  clients; printed: throughput (requests/s), p50/p99 latency, adapter loads and evictions, and the ratio
  concurrent / one-at-a-time. Every answer is checked against a direct ``AdapterPool.predict`` of the same
  text with the same adapter (same adapter name, same label, score within 1e-4): a lost request (no 200
  answer) or an answer from another adapter is counted and fails the run.
- ``many-on-disk``: ``--disk-adapters`` (1,000) such adapters in one folder; a pool with no LRU limit
  answers one request for each in turn. Printed: the first request of an adapter (load + predict) against a
  request for an adapter already loaded (p50/p99), the load alone, the tensor bytes per adapter and the
  process's resident-memory growth per loaded adapter.

Usage::

    python benchmarks/bench_serving.py [--only exactness,pfeiffer,lora,peft] [--threads 2] [--repeats 5]
    OMP_NUM_THREADS=2 python benchmarks/bench_serving.py --only server-load,many-on-disk
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adapterkit.config import MethodConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import perturb_adapter, routed_vs_solo

ROOT = Path(__file__).resolve().parents[1]
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
        for n in names:  # peft's sequence-classification adapters carry the head (modules_to_save): so do ours
            save_peft_adapter(model, n, f"{tmp}/{n}", include_head=True)
            _only_classifier_saved(Path(tmp) / n)  # peft mixes batches only over Linear-like modules_to_save
            model.set_adapter_head(n, model.head_state_dict())
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


def _only_classifier_saved(directory: Path) -> None:
    """Keep the classifier (not BERT's pooler, which peft cannot mix per row) as the peft adapter's head."""
    config = directory / "adapter_config.json"
    meta = json.loads(config.read_text())
    meta["modules_to_save"] = ["classifier"]
    config.write_text(json.dumps(meta))


# --- part 2: the adapter pool and the HTTP server -----------------------------------------------


def log(message: str) -> None:
    print(message, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def sentences() -> list[str]:
    """SST-style sentences: the sample task shipped with the package (one text per request)."""
    path = ROOT / "src" / "adapterkit" / "data" / "sample" / "sentiment.tsv"
    rows = [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [r for r in rows if r]


def save_random_adapters(directory: Path, count: int, *, reduction_factor: int, seed: int = 0) -> list[str]:
    """``count`` Pfeiffer adapters on the bundled MiniLM with random weights and random 2-label heads."""
    from adapterkit.io import save_adapter
    from adapterkit.methods.bottleneck import PfeifferConfig
    from adapterkit.model import AdaptedModel, load_base_model

    hf, _ = load_base_model(None, "classification", 2, {0: "negative", 1: "positive"})
    model = AdaptedModel(hf)
    g = torch.Generator().manual_seed(seed)
    names = []
    start = time.perf_counter()
    for i in range(count):
        name = f"ad{i:04d}"
        model.add_adapter(name, PfeifferConfig(reduction_factor=reduction_factor))
        with torch.no_grad():
            for p in [*model.adapter_parameters(name).values(), *model.head_parameters().values()]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        save_adapter(model, name, directory / name, include_head=True)
        model.delete_adapter(name)
        names.append(name)
        if (i + 1) % max(1, count // 5) == 0:
            spent = time.perf_counter() - start
            log(f"  saved {i + 1}/{count} adapters ({spent:.0f} s, ETA {spent / (i + 1) * (count - i - 1):.0f} s)")
    return names


# --- server under load ---------------------------------------------------------------------------


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/predict", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:
        status, answer = -1, {"error": str(exc)}
    return status, answer, time.perf_counter() - start


def get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}{path}", timeout=60) as response:
        return json.loads(response.read())


def start_server(adapters_dir: Path, max_adapters: int, max_batch: int, max_wait_ms: float,
                 threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapterkit.cli", "serve", "--adapters-dir", str(adapters_dir), "--port", "0",
         "--max-adapters", str(max_adapters), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
         "--hub", "false"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def run_clients(url: str, jobs: list[tuple[str, str]], clients: int) -> tuple[list[Any], float]:
    """Send ``jobs`` (adapter, text) with ``clients`` threads, each taking the next job; (answers, seconds)."""
    answers: list[Any] = [None] * len(jobs)
    lock = threading.Lock()
    position = [0]

    def client() -> None:
        while True:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(jobs):
                return
            name, text = jobs[i]
            answers[i] = post(url, {"adapter": name, "texts": [text]})
            if (i + 1) % max(1, len(jobs) // 5) == 0:
                spent = time.perf_counter() - start
                log(f"  {i + 1}/{len(jobs)} requests sent ({spent:.0f} s, ETA {spent / (i + 1) * (len(jobs) - i - 1):.0f} s)")

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, time.perf_counter() - start


def check_answers(answers: list[Any], jobs: list[tuple[str, str]], expected: list[Any]) -> dict[str, int]:
    """Count lost requests (not a 200 answer) and wrong ones (another adapter, label or score)."""
    lost = wrong = 0
    for (status, answer, _), (name, _text), ref in zip(answers, jobs, expected, strict=True):
        if status != 200 or len(answer.get("predictions", [])) != 1:
            lost += 1
            continue
        got = answer["predictions"][0]
        if got["adapter"] != name or got["prediction"] != ref.prediction or abs(got["score"] - ref.score) > 1e-4:
            wrong += 1
    return {"lost": lost, "wrong": wrong}


def _quiet() -> None:
    from adapterkit.console import quiet_transformers

    quiet_transformers()


def measure_server_load(opts: argparse.Namespace) -> list[Table]:
    _quiet()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        rows = server_load(opts, Path(tmp))
    return [server_table(rows, opts)]


def server_load(opts: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from adapterkit.serving import AdapterPool

    log(f"server-load: saving {opts.served_adapters} Pfeiffer adapters (reduction factor {opts.reduction_factor})")
    directory = work / "load"
    names = save_random_adapters(directory, opts.served_adapters, reduction_factor=opts.reduction_factor)
    texts = sentences()
    rng = random.Random(0)
    jobs = [(rng.choice(names), rng.choice(texts)) for _ in range(opts.requests)]
    log(f"server-load: reference answers by direct AdapterPool.predict ({len(jobs)} examples)")
    reference = AdapterPool(None, adapters_dir=directory, max_adapters=None, batch_size=32)
    start = time.perf_counter()
    expected = reference.predict([t for _, t in jobs], [n for n, _ in jobs])
    direct_seconds = time.perf_counter() - start
    del reference
    rows = []
    for clients in (1, opts.clients):
        proc, url = start_server(directory, opts.max_adapters, opts.max_batch, opts.max_wait_ms, opts.threads)
        try:
            warm = post(url, {"adapter": names[0], "texts": [texts[0]]})  # first forward outside the timing
            assert warm[0] == 200, warm
            log(f"server-load: {len(jobs)} requests, {clients} client(s) at a time ...")
            answers, seconds = run_clients(url, jobs, clients)
            health = get(url, "/health")
        finally:
            proc.terminate()
            proc.wait(30)
        latencies = [a[2] for a in answers]
        counts = check_answers(answers, jobs, expected)
        rows.append({"clients": clients, "requests": len(jobs), "seconds": seconds, "throughput": len(jobs) / seconds,
                     "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                     "mean_batch": health["examples"] / max(1, health["batches"]),
                     "loads": health["adapter_loads"], "evictions": health["adapter_evictions"], **counts})
        log(f"  {rows[-1]}")
    rows.append({"direct_predict_seconds": direct_seconds})
    return rows


def server_table(rows: list[dict[str, Any]], opts: argparse.Namespace) -> Table:
    runs = [r for r in rows if "clients" in r]
    base = runs[0]
    direct = rows[-1]["direct_predict_seconds"]
    title = (f"Server under load: {opts.requests} requests (one text each) over {opts.served_adapters} adapters, LRU "
             f"{opts.max_adapters}, max batch {opts.max_batch}, wait {opts.max_wait_ms:g} ms, {opts.threads} threads; "
             f"every answer checked against direct AdapterPool.predict (which took {direct:.1f} s for the same "
             f"{opts.requests} examples in mixed batches of 32, every adapter loaded)")
    header = ["clients", "seconds", "requests/s", "x one client", "p50 latency (ms)", "p99 latency (ms)", "mean batch",
              "adapter loads", "evictions", "lost", "wrong adapter/answer"]
    body = [[str(r["clients"]), f"{r['seconds']:.1f}", f"{r['throughput']:.1f}",
             f"{r['throughput'] / base['throughput']:.2f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
             f"{r['mean_batch']:.1f}", str(r["loads"]), str(r["evictions"]), str(r["lost"]), str(r["wrong"])]
            for r in runs]
    if any(r["lost"] or r["wrong"] for r in runs):
        raise SystemExit("server-load: FAILED: requests were lost or answered with another adapter's output\n"
                         + markdown((title, header, body)))
    return title, header, body


# --- a thousand adapters on disk -----------------------------------------------------------------


def measure_many_on_disk(opts: argparse.Namespace) -> list[Table]:
    _quiet()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        return [disk_table(many_on_disk(opts, Path(tmp)))]


def many_on_disk(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    from adapterkit.serving import AdapterPool

    log(f"many-on-disk: saving {opts.disk_adapters} Pfeiffer adapters (reduction factor {opts.reduction_factor})")
    directory = work / "disk"
    # saved by a child process, so that this process's memory growth below is the loaded adapters' alone
    subprocess.run([sys.executable, __file__, "--save-only", str(directory), "--disk-adapters", str(opts.disk_adapters),
                    "--reduction-factor", str(opts.reduction_factor)], check=True)
    names = sorted(p.name for p in directory.iterdir())
    disk = sum(p.stat().st_size for p in directory.rglob("*.safetensors"))
    start = time.perf_counter()
    pool = AdapterPool(None, adapters_dir=directory, max_adapters=None)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    listed = len(pool.available())
    listing = time.perf_counter() - start
    text = sentences()[0]
    pool.predict([text], names[0])  # the first forward of the process outside the timing
    pool.evict(names[0])
    rss0 = rss_bytes()
    first, warm = [], []
    start = time.perf_counter()
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        pool.predict([text], name)
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pool.predict([text], name)
        warm.append(time.perf_counter() - t0)
        if (i + 1) % max(1, len(names) // 5) == 0:
            spent = time.perf_counter() - start
            log(f"  {i + 1}/{len(names)} adapters loaded ({spent:.0f} s, ETA {spent / (i + 1) * (len(names) - i - 1):.0f} s)")
    growth = rss_bytes() - rss0
    loaded = pool.loaded()
    tensor_bytes = sum(e["bytes"] for e in loaded)
    # a request for one of the first adapters once all are loaded: does a big pool slow the forward down?
    late = []
    for name in names[:50]:
        t0 = time.perf_counter()
        pool.predict([text], name)
        late.append(time.perf_counter() - t0)
    return {"adapters": len(names), "listed": listed, "listing_s": listing, "pool_startup_s": startup,
            "disk_bytes_per_adapter": disk / len(names), "first_p50_ms": 1000 * percentile(first, 50),
            "first_p99_ms": 1000 * percentile(first, 99), "warm_p50_ms": 1000 * percentile(warm, 50),
            "warm_p99_ms": 1000 * percentile(warm, 99), "late_p50_ms": 1000 * percentile(late, 50),
            "load_mean_ms": 1000 * pool.stats.load_seconds / max(1, pool.stats.loads),
            "tensor_bytes_per_adapter": tensor_bytes / len(loaded), "rss_bytes_per_adapter": growth / len(loaded),
            "loaded": len(loaded), "load_median_ms": 1000 * statistics.median(f - w for f, w in zip(first, warm, strict=True))}


def disk_table(r: dict[str, Any]) -> Table:
    title = (f"{r['adapters']} adapters on disk: one pool (no LRU limit) asked for every adapter in turn, one text "
             "per request")
    rows = [
        ("pool start (base model load)", f"{r['pool_startup_s']:.1f} s"),
        (f"listing the folder ({r['listed']} adapters)", f"{1000 * r['listing_s']:.0f} ms"),
        ("first request of an adapter (load + predict), p50 / p99", f"{r['first_p50_ms']:.1f} / {r['first_p99_ms']:.1f} ms"),
        ("request for a loaded adapter, p50 / p99", f"{r['warm_p50_ms']:.1f} / {r['warm_p99_ms']:.1f} ms"),
        ("first minus loaded request, median", f"{r['load_median_ms']:.1f} ms"),
        ("load alone (read, check, attach), mean", f"{r['load_mean_ms']:.1f} ms"),
        (f"request for one of the first 50 adapters with all {r['loaded']} loaded, p50", f"{r['late_p50_ms']:.1f} ms"),
        ("files on disk per adapter", f"{r['disk_bytes_per_adapter'] / 1024:.0f} KiB"),
        ("tensor bytes per loaded adapter (adapter + head)", f"{r['tensor_bytes_per_adapter'] / 1024:.0f} KiB"),
        ("resident memory growth per loaded adapter", f"{r['rss_bytes_per_adapter'] / 1024:.0f} KiB"),
    ]
    return title, ["measure", "value"], [list(row) for row in rows]


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], list[Table]]] = {
    "exactness": measure_exactness,
    "pfeiffer": measure_pfeiffer,
    "lora": measure_lora,
    "peft": measure_peft,
    "server-load": measure_server_load,
    "many-on-disk": measure_many_on_disk,
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
    parser.add_argument("--served-adapters", type=int, default=100, help="server-load: adapters the requests go to")
    parser.add_argument("--requests", type=int, default=1000, help="server-load: requests per run")
    parser.add_argument("--clients", type=int, default=16, help="server-load: concurrent clients (against one)")
    parser.add_argument("--max-adapters", type=int, default=32, help="server-load: the server's LRU limit")
    parser.add_argument("--max-batch", type=int, default=32, help="server-load: dynamic batching, examples")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server-load: dynamic batching, wait")
    parser.add_argument("--disk-adapters", type=int, default=1000, help="many-on-disk: adapters in the folder")
    parser.add_argument("--reduction-factor", type=int, default=32, help="Pfeiffer reduction factor (384 / 32 = 12)")
    parser.add_argument("--save-only", help=argparse.SUPPRESS)  # internal: save --disk-adapters adapters there
    opts = parser.parse_args()
    if opts.save_only:
        _quiet()
        save_random_adapters(Path(opts.save_only), opts.disk_adapters, reduction_factor=opts.reduction_factor, seed=1)
        return
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
