"""Dynamic batching: requests that arrive together run as one mixed batch; a failing request fails alone."""
from __future__ import annotations

import threading

import pytest

from adapterkit.serving import AdapterPool, Batcher, RequestError

from .conftest import TEXTS, Zoo, same


@pytest.fixture(scope="module")
def pool(zoo: Zoo) -> AdapterPool:
    return AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=3, batch_size=4)


def test_requests_arriving_together_run_as_one_mixed_batch(zoo: Zoo, pool: AdapterPool) -> None:
    jobs = [(zoo.names[i % len(zoo.names)], TEXTS[i % 3:i % 3 + 2]) for i in range(6)]
    expected = [[p.to_dict() for p in pool.predict(texts, name)] for name, texts in jobs]
    with Batcher(pool, max_batch=64, max_wait_ms=300) as batcher:
        futures = [batcher.submit(texts, name) for name, texts in jobs]
        answers = [[p.to_dict() for p in f.result(30)] for f in futures]
        assert same(answers, expected)
        assert batcher.stats.batches == 1 and batcher.stats.requests == 6 and batcher.stats.examples == 12


def test_batches_hold_at_most_max_batch_examples(zoo: Zoo, pool: AdapterPool) -> None:
    with Batcher(pool, max_batch=5, max_wait_ms=200) as batcher:
        futures = [batcher.submit(TEXTS[:2], "pf-a") for _ in range(6)] + [batcher.submit(TEXTS, "pf-b")]
        for f in futures:
            f.result(30)
        assert max(batcher.stats.batch_sizes[:-1]) <= 5  # the 8-text request runs alone
        assert batcher.stats.batch_sizes[-1] == len(TEXTS) and sum(batcher.stats.batch_sizes) == 12 + len(TEXTS)


def test_bad_requests_are_refused_before_they_are_queued(pool: AdapterPool) -> None:
    with Batcher(pool) as batcher:
        with pytest.raises(RequestError, match="texts: empty list"):
            batcher.submit([], "pf-a")
        assert batcher.stats.requests == 0


def test_a_request_that_fails_in_the_model_fails_alone_and_the_worker_carries_on(
        zoo: Zoo, pool: AdapterPool, monkeypatch: pytest.MonkeyPatch) -> None:
    poison = pool.tokenizer.convert_tokens_to_ids("awful")
    real = pool._forward_rows

    def flaky(batch, entries):  # noqa: ANN001, ANN202 - a model that fails on one word
        if (batch["input_ids"] == poison).any():
            raise RuntimeError("model failure on purpose")
        return real(batch, entries)

    monkeypatch.setattr(pool, "_forward_rows", flaky)
    expected = pool.predict(["good"], "pf-a")[0].to_dict()
    with Batcher(pool, max_wait_ms=300) as batcher:
        futures = [batcher.submit(["good"], "pf-a"), batcher.submit(["awful"], "pf-b"), batcher.submit(["good"], "pf-a")]
        assert futures[0].result(30)[0].to_dict() == expected
        with pytest.raises(RuntimeError, match="on purpose"):
            futures[1].result(30)
        assert futures[2].result(30)[0].to_dict() == expected
        assert batcher.stats.failures == 1
        assert batcher.predict(["good"], "pf-a", timeout=30)[0].to_dict() == expected  # still serving


def test_many_threads_submitting_get_their_own_answers(zoo: Zoo, pool: AdapterPool) -> None:
    jobs = [(zoo.names[i % len(zoo.names)], [TEXTS[i % len(TEXTS)]]) for i in range(24)]
    expected = [[p.to_dict() for p in pool.predict(texts, name)] for name, texts in jobs]
    answers: list = [None] * len(jobs)
    with Batcher(pool, max_batch=8, max_wait_ms=20) as batcher:
        def client(i: int) -> None:
            answers[i] = [p.to_dict() for p in batcher.predict(jobs[i][1], jobs[i][0], timeout=60)]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert same(answers, expected)
        assert batcher.stats.batches < len(jobs)  # some requests shared a batch
