"""The HTTP server: started on a free port, queried with a real HTTP client (urllib); bad requests get a 4xx
naming the field; a failure inside the model is a 500 and the next request is answered; ``adapterkit serve``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapterkit.serving import AdapterPool, Batcher
from adapterkit.serving.server import Server, create_app

from .conftest import TEXTS, Zoo, same


def call(url: str, method: str = "GET", body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def served(zoo: Zoo) -> Iterator[tuple[str, AdapterPool, Batcher]]:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=3, hub=False)
    batcher = Batcher(pool, max_batch=16, max_wait_ms=10)
    with Server(create_app(pool, batcher), port=0) as server:
        yield server.url, pool, batcher
    batcher.close()


def test_predict_with_one_adapter_and_with_one_adapter_per_text(zoo: Zoo, served) -> None:  # noqa: ANN001
    url, pool, _ = served
    status, answer = call(f"{url}/predict", "POST", {"adapter": "three", "texts": TEXTS[:3]})
    assert status == 200
    assert same([answer["predictions"]], [[p.to_dict() for p in pool.predict(TEXTS[:3], "three")]])
    assert {p["prediction"] for p in answer["predictions"]} <= {"contradiction", "entailment", "neutral"}
    names = ["pf-a", "score", "lora", "pf-a"]
    status, answer = call(f"{url}/predict", "POST", {"adapters": names, "texts": TEXTS[:4]})
    assert status == 200
    assert same([answer["predictions"]], [[p.to_dict() for p in pool.predict(TEXTS[:4], names)]])
    assert [p["adapter"] for p in answer["predictions"]] == names


def test_adapters_and_health(zoo: Zoo, served) -> None:  # noqa: ANN001
    url, pool, _ = served
    call(f"{url}/predict", "POST", {"adapter": "pf-b", "texts": ["good"]})
    status, answer = call(f"{url}/adapters")
    assert status == 200
    assert answer["available"] == sorted(zoo.names) and answer["max_adapters"] == 3
    assert answer["loaded"][-1]["name"] == "pf-b" and answer["loaded"][-1]["labels"] == ["negative", "positive"]
    assert 1 <= len(answer["loaded"]) <= 3 and answer["loaded_bytes"] == pool.loaded_bytes
    status, health = call(f"{url}/health")
    assert status == 200 and health["status"] == "ok" and health["max_length"] == pool.max_length
    assert health["requests"] >= 1 and health["batches"] >= 1


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, "body"),
    (b'["a list"]', 422, "body"),
    ({"adapter": "pf-a"}, 422, "texts"),
    ({"texts": ["good"]}, 422, "adapter"),
    ({"adapter": "pf-a", "texts": []}, 422, "texts"),
    ({"adapter": "pf-a", "texts": "good"}, 422, "texts"),
    ({"adapter": "pf-a", "texts": ["good", None]}, 422, "texts[1]"),
    ({"adapter": "pf-a", "texts": ["good", "bad " * 80]}, 422, "texts[1]"),
    ({"adapter": "nope", "texts": ["good"]}, 404, "adapter"),
    ({"adapter": ["pf-a"], "texts": ["good"]}, 422, "adapter"),
    ({"adapters": ["pf-a", "nope"], "texts": ["good", "bad"]}, 404, "adapters[1]"),
    ({"adapters": ["pf-a"], "texts": ["good", "bad"]}, 422, "adapters"),
    ({"adapters": "pf-a", "texts": ["good"]}, 422, "adapters"),
    ({"adapter": "pf-a", "adapters": ["pf-a"], "texts": ["good"]}, 422, "adapters"),
    ({"adapter": "pf-a", "texts": ["good"], "temperature": 2}, 422, "temperature"),
])
def test_bad_requests_get_a_4xx_naming_the_field(served, body, status, field) -> None:  # noqa: ANN001
    url, _, _ = served
    got, answer = call(f"{url}/predict", "POST", raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert (got, answer["field"]) == (status, field)
    assert answer["error"].startswith(f"{field}: ")


def test_a_model_error_is_a_500_and_the_server_keeps_serving(served, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url, pool, _ = served
    real = pool._forward_rows
    failures = iter([True])

    def fail_once(batch, entries):  # noqa: ANN001, ANN202
        if next(failures, False):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch, entries)

    monkeypatch.setattr(pool, "_forward_rows", fail_once)
    status, answer = call(f"{url}/predict", "POST", {"adapter": "pf-a", "texts": ["good"]})
    assert status == 500 and answer["error"] == "internal error: RuntimeError: CUDA out of memory (simulated)"
    status, answer = call(f"{url}/predict", "POST", {"adapter": "pf-a", "texts": ["good"]})
    assert status == 200 and answer["predictions"][0]["adapter"] == "pf-a"
    assert call(f"{url}/health")[1]["server_errors"] >= 1


def test_concurrent_clients_get_their_own_answers(zoo: Zoo, served) -> None:  # noqa: ANN001
    url, pool, batcher = served
    jobs = [(zoo.names[i % len(zoo.names)], [TEXTS[i % len(TEXTS)], TEXTS[(i + 3) % len(TEXTS)]]) for i in range(21)]
    expected = [[p.to_dict() for p in pool.predict(texts, name)] for name, texts in jobs]
    answers: list = [None] * len(jobs)
    before = batcher.stats.batches

    def client(i: int) -> None:
        name, texts = jobs[i]
        answers[i] = call(f"{url}/predict", "POST", {"adapter": name, "texts": texts})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [200] * len(jobs)
    assert same([a[1]["predictions"] for a in answers], expected)
    assert batcher.stats.batches - before <= len(jobs)


def test_adapterkit_serve_answers_http_requests(zoo: Zoo, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapterkit.cli", "serve", "--model", str(zoo.base), "--adapters-dir",
         str(zoo.adapters), "--port", "0", "--max-adapters", "2", "--hub", "false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        status, answer = call(f"{url}/predict", "POST", {"adapters": ["pf-a", "three", "pf-b"], "texts": TEXTS[:3]})
        assert status == 200 and [p["adapter"] for p in answer["predictions"]] == ["pf-a", "three", "pf-b"]
        pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters)
        assert same([answer["predictions"]], [[p.to_dict() for p in pool.predict(TEXTS[:3], ["pf-a", "three", "pf-b"])]])
        assert call(f"{url}/predict", "POST", {"adapter": "nope", "texts": ["good"]})[0] == 404
        assert len(call(f"{url}/adapters")[1]["loaded"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)


def test_adapterkit_serve_without_adapters_is_an_error(zoo: Zoo) -> None:
    from adapterkit.cli import main

    assert main(["serve", "--model", str(zoo.base), "--hub", "false"]) == 2
    # Hub ids are off unless asked for: a server does not fetch whatever repo a client names
    assert main(["serve", "--model", str(zoo.base)]) == 2
