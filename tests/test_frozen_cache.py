"""The frozen-layer cache: exact logits and gradients on hits, skipped lower layers, eval untouched, errors."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from adapterkit import frozen_cache, injection
from adapterkit.data.tasks import TaskSpec
from adapterkit.errors import ConfigError
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.prompt import PromptTuningConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import SPECIAL_TOKENS, tiny_batch, tiny_model, tiny_tokenizer
from adapterkit.training import TrainConfig, train

POOL_LENGTHS = (8, 5, 3, 7, 2, 6)


def adapted4(model_type: str = "bert", layers: tuple[int, ...] = (2, 3), seed: int = 0, **overrides) -> AdaptedModel:
    """A 4-layer tiny model with a Pfeiffer adapter (small random Up, so every weight gets a gradient)."""
    adapted = AdaptedModel(tiny_model(model_type, seed=seed, num_hidden_layers=4, **overrides))
    adapted.add_adapter("a", PfeifferConfig(reduction_factor=4, layers=layers, init="near_identity"))
    adapted.backbone_dropout = False
    adapted.train()
    return adapted


def pool(pad: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Examples of different lengths: (token ids, label)."""
    batch = tiny_batch(len(POOL_LENGTHS), max(POOL_LENGTHS), lengths=POOL_LENGTHS, num_labels=2, seed=3)
    return [(batch["input_ids"][i, :n], int(batch["labels"][i])) for i, n in enumerate(POOL_LENGTHS)]


def collate(examples: list[tuple[torch.Tensor, int]], width: int | None = None, pad: int = 0) -> dict[str, torch.Tensor]:
    width = width or max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad)
    mask = torch.zeros_like(ids)
    for row, (x, _) in enumerate(examples):
        ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in examples])}


def run(adapted: AdaptedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the loss gradients of adapter "a" (the head's dropout seeded the same every time)."""
    torch.manual_seed(7)
    out = adapted(**batch)
    params = adapted.adapter_parameters("a")
    grads = torch.autograd.grad(out.loss, list(params.values()))
    return out.logits.detach(), dict(zip(params, grads, strict=True))


def assert_same(a: tuple, b: tuple) -> None:
    assert torch.allclose(a[0], b[0], atol=1e-6, rtol=0)
    for key, grad in a[1].items():
        assert torch.allclose(grad, b[1][key], atol=1e-6, rtol=0), key
        assert grad.abs().sum() > 0, key


def count_calls(adapted: AdaptedModel) -> list[int]:
    """Forward-hook counters on the original layer modules (they stay hooked inside the cache's wrappers)."""
    counts = [0] * len(adapted.layers)
    for i, layer in enumerate(adapted.layers):

        def hook(module, args, output, i=i):
            counts[i] += 1

        injection.get_module(adapted.model, layer.path).register_forward_hook(hook)
    return counts


def test_hits_match_uncached_logits_and_gradients_across_padding_and_order():
    adapted = adapted4()
    examples = pool()
    batches = [
        collate([examples[i] for i in (3, 1, 5)]),  # re-ordered subset, padded to 7
        collate([examples[i] for i in (4, 2)], width=11),  # padded wider than any stored example
        collate([examples[i] for i in (0, 5, 4, 1)]),
    ]
    expected = [run(adapted, b) for b in batches]
    assert frozen_cache.first_adapted_layer(adapted) == 2
    cache = frozen_cache.enable(adapted)
    assert cache.layer == 2
    assert_same(run(adapted, collate(examples)), run(adapted, collate(examples)))  # a miss (records), then a hit
    assert cache.stats.entries == 6 and cache.stats.hits == 6 and cache.stats.misses == 6
    assert cache.stats.bytes == sum(POOL_LENGTHS) * 32 * 4
    for batch, want in zip(batches, expected, strict=True):
        assert_same(run(adapted, batch), want)
    assert cache.stats.hit_batches == 4 and cache.stats.miss_batches == 1


def test_lower_layers_do_not_run_on_a_hit():
    adapted = adapted4()
    counts = count_calls(adapted)
    cache = frozen_cache.enable(adapted)
    batch = collate(pool())
    adapted(**batch)
    assert counts == [1, 1, 1, 1]
    adapted(**batch)
    assert counts == [1, 1, 2, 2]
    adapted(**collate(pool()[:2] + [(torch.tensor([5, 6, 7]), 0)]))  # one new example: the whole batch runs
    assert counts == [2, 2, 3, 3] and cache.stats.entries == 7
    adapted(**batch, output_hidden_states=True)  # the lower layers' states are wanted: not cached
    assert counts == [3, 3, 4, 4] and cache.stats.bypassed == 1


def test_eval_mode_ignores_the_cache():
    adapted = adapted4()
    batch = collate(pool())
    adapted.eval()
    with torch.no_grad():
        expected = adapted(**batch).logits
    cache = frozen_cache.enable(adapted)
    adapted.train()
    adapted(**batch)  # stored
    adapted.eval()
    counts = count_calls(adapted)
    with torch.no_grad():
        assert torch.equal(adapted(**batch).logits, expected)
    assert counts == [1, 1, 1, 1] and cache.stats.hits == 0


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "electra", "distilbert", "mpnet"])
def test_other_encoders_hit_exactly(model_type: str):
    adapted = adapted4(model_type, layers=(3,))  # mpnet's layers return tuples, the others tensors
    pad = adapted.config.pad_token_id or 0
    reordered = collate(pool()[::-1], width=10, pad=pad)
    expected = run(adapted, reordered)
    cache = frozen_cache.enable(adapted)
    run(adapted, collate(pool(), pad=pad))
    assert_same(run(adapted, reordered), expected)
    assert cache.stats.hit_batches == 1


def test_refuses_what_it_cannot_make_exact():
    with pytest.raises(ConfigError, match="cache_frozen_layers: .*dropout"):
        adapted = adapted4()
        adapted.backbone_dropout = True
        frozen_cache.enable(adapted)
    no_dropout = adapted4(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    no_dropout.backbone_dropout = True
    frozen_cache.enable(no_dropout)  # no dropout anywhere in the frozen part: deterministic in train mode too
    full = adapted4()
    full.set_train_mode("full")
    with pytest.raises(ConfigError, match="cache_frozen_layers: needs train_mode 'adapters'"):
        frozen_cache.enable(full)
    low = adapted4(layers=(0, 3))
    with pytest.raises(ConfigError, match="cache_frozen_layers: nothing to cache"):
        frozen_cache.enable(low)
    prompt = adapted4()
    prompt.add_adapter("p", PromptTuningConfig(num_tokens=2))
    prompt.set_active_adapters("a", "p")
    assert frozen_cache.first_adapted_layer(prompt) == 0
    for model_type, why in (("t5", "encoder-decoder"), ("llama", "decoder-only")):
        with pytest.raises(ConfigError, match=f"cache_frozen_layers: model type '{model_type}'.*{why}"):
            frozen_cache.enable(AdaptedModel(tiny_model(model_type)))


def test_dropout_switched_on_later_is_caught():
    adapted = adapted4()
    frozen_cache.enable(adapted)
    adapted.backbone_dropout = True
    adapted.train()
    with pytest.raises(ConfigError, match="cache_frozen_layers"):
        adapted(**collate(pool()))


def test_disable_restores_the_original_modules():
    adapted = adapted4()
    before = dict(adapted.named_modules())
    keys = list(adapted.state_dict())
    frozen_cache.enable(adapted)
    assert frozen_cache.get_cache(adapted) is not None
    adapted(**collate(pool()))
    cache = frozen_cache.disable(adapted)
    assert cache is not None and cache.stats.entries == 6
    after = dict(adapted.named_modules())
    assert after.keys() == before.keys() and all(after[n] is m for n, m in before.items())
    assert list(adapted.state_dict()) == keys and frozen_cache.get_cache(adapted) is None
    assert frozen_cache.disable(adapted) is None


def test_train_config_validation():
    with pytest.raises(ConfigError, match="cache_frozen_layers: needs backbone_dropout false"):
        TrainConfig(cache_frozen_layers=True)
    with pytest.raises(ConfigError, match="cache_frozen_layers: needs train_mode"):
        TrainConfig(cache_frozen_layers=True, backbone_dropout=False, train_mode="head")
    TrainConfig(cache_frozen_layers=True, backbone_dropout=False)


WORDS = ["good", "great", "bad", "awful", "the", "movie", "was", "a", "plot", "film"]
SPEC = TaskSpec("synthetic", "classification", ("text",), "label", ("0", "1"), "accuracy", {"train": "unused"})


def sentences(n: int) -> list[dict]:
    rng = random.Random(0)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))), "text_pair": None, "label": i % 2}
            for i in range(n)]


def test_train_with_the_cache_gives_the_same_weights(tmp_path: Path, monkeypatch):
    tok = tiny_tokenizer(tmp_path / "tok", WORDS)
    caches = []
    real_enable = frozen_cache.enable
    monkeypatch.setattr(frozen_cache, "enable", lambda adapted: caches.append(real_enable(adapted)) or caches[-1])
    results = []
    for cached in (False, True):
        adapted = adapted4(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), layers=(3,))
        config = TrainConfig(output_dir=str(tmp_path / f"run{cached}"), epochs=2, batch_size=8, learning_rate=1e-2,
                             progress="none", backbone_dropout=False, cache_frozen_layers=cached, save_total_limit=1)
        train(adapted, tok, SPEC, sentences(16), None, config)
        results.append({**adapted.adapter_state_dict("a"), **adapted.head_state_dict()})
        assert frozen_cache.get_cache(adapted) is None
    (cache,) = caches
    assert cache.stats.misses == 16 and cache.stats.hits == 16 and cache.stats.entries == 16
    plain, cached = results
    assert plain.keys() == cached.keys()
    for key, value in plain.items():
        assert torch.allclose(value, cached[key], atol=1e-5, rtol=0), key


def test_train_with_an_adapter_in_layer_0_runs_without_the_cache(tmp_path: Path, monkeypatch, capsys):
    tok = tiny_tokenizer(tmp_path / "tok", WORDS)
    monkeypatch.setattr(frozen_cache, "enable", lambda adapted: pytest.fail("nothing to cache below layer 0"))
    adapted = adapted4(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), layers=(0, 3))
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, learning_rate=1e-2,
                         progress="log", backbone_dropout=False, cache_frozen_layers=True, save_total_limit=1)
    train(adapted, tok, SPEC, sentences(8), None, config)
    assert "training without the cache" in capsys.readouterr().err


def test_activating_adapters_keeps_the_cache_on():
    """The cache is a system attachment: adding and activating adapters above it does not switch it off."""
    adapted = adapted4()
    counts = count_calls(adapted)
    cache = frozen_cache.enable(adapted)
    assert adapted.system_attachments == {frozen_cache.CACHE_NAME: cache}
    adapted.add_adapter("b", PfeifferConfig(reduction_factor=4, layers=(3,)))  # activates "b" alone
    adapted.set_active_adapters("a", "b")
    batch = collate(pool())
    adapted(**batch)
    adapted(**batch)
    assert counts == [1, 1, 2, 2] and cache.stats.hits == 6  # still caching
    for wrapper in injection.wrappers(adapted.model).values():
        if frozen_cache.CACHE_NAME in wrapper.adapters:
            assert wrapper.active[-1] == frozen_cache.CACHE_NAME  # after the adapters
    assert frozen_cache.get_cache(adapted) is cache


def test_activating_an_adapter_in_a_cached_layer_is_refused_and_changes_nothing():
    adapted = adapted4()
    frozen_cache.enable(adapted)
    adapted.add_adapter("low", PfeifferConfig(layers=(0,)), activate=False)
    with pytest.raises(ConfigError, match=r"cache_frozen_layers: .*cached layer count must be in \[1, 0\]"):
        adapted.set_active_adapters("a", "low")
    assert adapted.active_adapters == ("a",)
    with pytest.raises(ConfigError, match="cache_frozen_layers"):
        adapted.add_adapter("low2", PfeifferConfig(layers=(1,)))  # add + activate: refused, and not added
    assert "low2" not in adapted.adapter_configs
    frozen_cache.disable(adapted)
    adapted.set_active_adapters("a", "low")  # fine without the cache
    assert adapted.system_attachments == {}


def test_the_old_module_name_still_works():
    from adapterkit import layer_cache

    assert layer_cache.enable is frozen_cache.enable and layer_cache.FrozenPrefixCache is frozen_cache.FrozenLayerCache
