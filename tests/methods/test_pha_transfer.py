"""PHA few-shot transfer: a new prototype initialised from the retriever, trained alone; one-class k-shot sets refused."""
from __future__ import annotations

import random

import pytest
import torch

from adapterkit.data.tasks import TaskSpec
from adapterkit.errors import DataError
from adapterkit.methods.pha import PHAConfig, pha_module
from adapterkit.methods.pha_transfer import check_kshot, initial_prototype, transfer_to_task
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import save_tiny_model
from adapterkit.training import TrainConfig
from adapterkit.training.multitask import MultiTaskSpec, add_task_heads, evaluate_tasks, train_multitask

WORDS = ("good", "great", "bad", "awful", "cat", "dog", "red", "blue", "the", "a")


def _spec(name: str, labels: tuple[str, ...] = ("0", "1")) -> TaskSpec:
    return TaskSpec(name, "classification", ("text",), "label", labels, "accuracy", {"train": f"data/{name}.tsv"})


def _examples(n: int, words: tuple[str, ...], seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(len(words))
        out.append({"text": f"the {words[y]}", "label": y})
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A PHA adapter trained on two tiny tasks (sentiment words, animal words)."""
    path = save_tiny_model(tmp_path_factory.mktemp("pha") / "tiny", head="base", words=WORDS)
    hf, tok = load_base_model(str(path), "classification", 2, pooling="mean")
    adapted = AdaptedModel(hf)
    spec = MultiTaskSpec((_spec("senti"), _spec("animal")))
    add_task_heads(adapted, spec)
    adapted.add_adapter("pha", PHAConfig(tasks=("senti", "animal"), bottleneck_size=8, prototype_dim=8,
                                         layer_embedding_dim=8, hypernet_hidden=16, hypernet_dim=8, retriever_hidden=16))
    train = {"senti": _examples(32, ("bad", "good"), 1), "animal": _examples(32, ("cat", "dog"), 2)}
    config = TrainConfig(output_dir=str(tmp_path_factory.mktemp("run")), epochs=1, batch_size=16, learning_rate=1e-2,
                         max_length=8, progress="none")
    train_multitask(adapted, tok, spec, train, None, config)
    return adapted, tok, config


def test_a_one_class_kshot_set_is_refused_naming_the_file_and_field() -> None:
    with pytest.raises(DataError, match=r"data/colour.tsv: field 'label': .* has only one class \(1\)"):
        check_kshot(_spec("colour"), [{"text": "red", "label": 1}, {"text": "blue", "label": 1}])


def test_initial_prototype_nearest_and_mean(source) -> None:
    adapted, _, _ = source
    table = pha_module(adapted, "pha").prototype_table().detach()
    z = table[1:2].repeat(3, 1) * 5.0  # instances lying along the second task's prototype
    init, note, sims = initial_prototype(adapted, "pha", z, "nearest")
    assert init == "animal" and "animal" in note and sims["animal"] == pytest.approx(1.0, abs=1e-5)
    vector, _, _ = initial_prototype(adapted, "pha", z, "mean")
    assert torch.allclose(vector / vector.norm(), table[1] / table[1].norm(), atol=1e-5)
    assert vector.norm() == pytest.approx(float(table.norm(dim=-1).mean()), rel=1e-4)  # rescaled


def test_transfer_trains_only_the_new_prototype_and_head(source, tmp_path) -> None:
    adapted, tok, config = source
    shared = pha_module(adapted, "pha")
    before = {n: p.detach().clone() for n, p in adapted.adapter_parameters("pha").items()}
    colour = _spec("colour")
    train, dev = _examples(8, ("red", "blue"), 3), _examples(8, ("red", "blue"), 4)
    done = transfer_to_task(adapted, tok, "pha", colour, train, dev,
                            config.replace(output_dir=str(tmp_path / "t"), epochs=2, learning_rate=5e-2),
                            init="nearest", tune="prototype")
    assert done.task_id == 2 and shared.tasks == ("senti", "animal", "colour")
    after = dict(adapted.adapter_parameters("pha"))
    table = after["shared.prototypes.weight"]
    assert torch.equal(table[:2], before["shared.prototypes.weight"])  # the trained prototypes did not move
    nearest = done.init_note.split(": ")[1].split(" ")[0]
    assert nearest in ("senti", "animal")
    start = before["shared.prototypes.weight"][("senti", "animal").index(nearest)]
    assert not torch.equal(table[2], start)  # the new prototype started as its nearest and then trained
    for key, value in before.items():
        if key != "shared.prototypes.weight":
            assert torch.equal(after[key], value), key  # hypernetwork, layer embeddings, retriever frozen
    # trainable: the prototype table (3 x 8) and the new task's head (2 x hidden + 2)
    hidden = adapted.build_context().hidden_size
    assert done.trainable_parameters == 3 * 8 + 2 * hidden + 2
    scores = evaluate_tasks(adapted, tok, done.spec, {"colour": dev}, config)
    assert set(scores) == {"colour"} and 0.0 <= scores["colour"]["accuracy"] <= 1.0
