"""The per-forward context: per-call inputs reach every site module; nesting and threads are isolated."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from adapterkit.config import MethodConfig
from adapterkit.context import current, forward_context
from adapterkit.injection import AdapterModule
from adapterkit.methods.base import Attachment, BuildContext
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model


class TaskShift(AdapterModule):
    """Adds ``task_ids`` (one per example) to the FFN output and records what it saw."""

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        ctx = current()
        ids = ctx["task_ids"]
        ctx.record("seen", (self.layer_index, ids.tolist(), ctx.attention_mask is not None))
        return output + ids.to(output.dtype).view(-1, *([1] * (output.dim() - 1)))


@dataclass
class TaskShiftConfig(MethodConfig):
    method: ClassVar[str] = "test_task_shift"
    context_inputs: ClassVar[tuple[str, ...]] = ("task_weights",)

    def build(self, ctx: BuildContext) -> list[Attachment]:
        return [Attachment(i, "ffn_output", TaskShift()) for i in ctx.layer_indices(self.layers)]


def shifted() -> AdaptedModel:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("t", TaskShiftConfig())
    return model.eval()


def test_task_ids_in_the_batch_reach_every_layer_and_are_removed_before_the_model() -> None:
    model = shifted()
    batch = tiny_batch(batch_size=2)
    with torch.no_grad(), forward_context() as outer:
        a = model(**batch, task_ids=torch.tensor([0, 0])).logits
        b = model(**batch, task_ids=torch.tensor([0, 3])).logits
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # per-example, per-call
    assert outer.records["seen"] == [(0, [0, 0], True), (1, [0, 0], True), (0, [0, 3], True), (1, [0, 3], True)]
    with pytest.raises(KeyError, match="no input 'task_ids'"):
        model(**batch)


def test_context_inputs_declared_by_a_config_are_taken_out_too() -> None:
    model = shifted()
    assert model.forward_context_keys() == {"task_ids", "task_weights"}
    seen = []

    class Peek(AdapterModule):
        def pre(self, args, kwargs):
            seen.append(current().get("task_weights"))
            return args, kwargs

    from adapterkit import injection

    injection.attach(model.model, model.site_path(0, "query"), "t", Peek())
    model.set_active_adapters("t")
    with torch.no_grad():  # an unknown keyword would make the Hugging Face model fail
        model(**tiny_batch(), task_ids=torch.tensor([1, 2]), task_weights="w")
    assert seen == ["w"]


def test_contexts_nest_and_restore() -> None:
    assert current() is None
    with forward_context(task_ids=1, a="x") as outer:
        with forward_context(task_ids=2) as inner:
            assert current() is inner and inner["task_ids"] == 2 and inner["a"] == "x" and inner.parent is outer
            inner.record("k", 1)
        assert current() is outer and outer["task_ids"] == 1 and outer.records == {"k": [1]}
    assert current() is None


def test_nested_forward_of_another_model_inside_a_site_module() -> None:
    inner_model = shifted()
    outer_model = AdaptedModel(tiny_model("bert"))
    seen = []

    class CallsInner(AdapterModule):
        def post(self, args, kwargs, output):
            before = current()
            inner_model(**tiny_batch(), task_ids=torch.tensor([5, 5]))
            assert current() is before  # the inner forward's context is closed again
            seen.append(current()["task_ids"].tolist())
            return output

    @dataclass
    class Calls(MethodConfig):
        method: ClassVar[str] = "test_calls"

        def build(self, ctx):
            return [Attachment(0, "ffn_output", CallsInner())]

    outer_model.add_adapter("c", Calls())
    with torch.no_grad():
        outer_model(**tiny_batch(), task_ids=torch.tensor([1, 2]))
    assert seen == [[1, 2]]


def test_threads_see_their_own_context() -> None:
    model = shifted()
    batch = tiny_batch()
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(k: int) -> None:
        try:
            barrier.wait()
            with torch.no_grad(), forward_context() as ctx:
                for _ in range(3):
                    model(**batch, task_ids=torch.tensor([k, k]))
            results[k] = ctx.records["seen"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in (1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in (1, 7):
        assert len(results[k]) == 6 and all(ids == [k, k] for _, ids, _ in results[k])


def test_a_wrapped_module_called_outside_adapted_model_gets_its_own_context() -> None:
    model = shifted()
    with forward_context(task_ids=torch.tensor([2, 2])), torch.no_grad():
        model.model(**tiny_batch())  # the bare HF model: the user's context is the one seen
    assert current() is None
    with pytest.raises(KeyError, match="task_ids"), torch.no_grad():
        model.model(**tiny_batch())  # no context at all: each wrapped module opens one (empty)
