"""Few-shot transfer of a trained PHA adapter to a new task: a new prototype, fitted on k examples per class.

The authors' public code has no transfer step (their paper describes retrieving the relevant prototype for a
new task, without the procedure); this is **our design**:

1. **Encode** the k-shot examples with the retriever. The retriever reads the backbone's output, which the
   generated adapters change, so the examples are encoded with the adapters generated from the *mean* of
   the trained prototypes (a neutral condition: no source task is favoured).
2. **Initialise** the new task's prototype (``init``): ``nearest`` copies the trained prototype with the
   highest cosine similarity to the mean instance embedding (the retriever and the prototypes share one
   space, aligned by the prototype-instance loss in training); ``mean`` uses that mean embedding itself,
   rescaled to the mean norm of the trained prototypes (the hypernetwork has only seen inputs of that scale).
3. **Train** with the one training path (:func:`adapterkit.training.multitask.train_multitask`, the new
   task's examples carrying its new task id): ``tune="prototype"`` trains only the new prototype row and the
   new task's head (everything else frozen: hypernetwork, layer embeddings, retriever, the other
   prototypes); ``tune="prototype+hypernetwork"`` also trains the hypernetwork, layer embeddings and retriever
   (the other prototypes stay fixed). The contrastive losses stay on, as in training.

A k-shot set with a single class cannot be transferred to (the head would learn a constant): a DataError
names the task's training file and its label field. Only learned prototypes (``prototypes: learned``) can be
tuned; with running-mean prototypes ``tune="prototype"`` is refused.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import ConfigError, DataError

INITS = ("nearest", "mean")
TUNES = ("prototype", "prototype+hypernetwork")


@dataclass
class TransferResult:
    """What :func:`transfer_to_task` did: the training result, the task's id, how its prototype started."""

    result: Any
    spec: Any
    """The MultiTaskSpec the model's heads and task ids follow (source tasks, then the new one)."""
    task_id: int
    init_note: str
    similarities: dict[str, float]
    """Cosine similarity of the mean instance embedding to each trained prototype."""

    @property
    def score(self) -> float | None:
        return self.result.score

    @property
    def trainable_parameters(self) -> int:
        return self.result.trainable_parameters


def check_kshot(spec: Any, examples: Sequence[dict[str, Any]]) -> None:
    """A DataError naming the file and the label field when ``examples`` hold fewer than two classes."""
    where = (spec.files or {}).get("train") or spec.name
    if not examples:
        raise DataError(f"{where}: the k-shot set for task {spec.name!r} is empty")
    labels = {ex.get("label") for ex in examples}
    if None in labels:
        raise DataError(f"{where}: field {spec.label_column!r}: an example of the k-shot set has no label")
    if len(labels) < 2:
        raise DataError(f"{where}: field {spec.label_column!r}: the k-shot set for task {spec.name!r} has only one "
                        f"class ({labels.pop()!r}); few-shot transfer needs examples of at least two classes")


def encode_instances(adapted: Any, tokenizer: Any, name: str, spec: Any, examples: Sequence[dict[str, Any]],
                     max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Retriever embeddings (n, prototype_dim) of ``examples``, with the adapters of the mean trained prototype."""
    from ..experiments.common import padded_batch
    from .pha import instance_embeddings, pha_module

    shared = pha_module(adapted, name)
    neutral = shared.prototype_table().detach().mean(0)
    out = []
    for i in range(0, len(examples), batch_size):
        batch = padded_batch(tokenizer, spec, examples[i: i + batch_size], max_length)
        batch = {k: v.to(neutral.device) for k, v in batch.items()}
        # the adapters come from the neutral prototype; task id 0 only routes a multi-task head (output unused)
        ids = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long, device=neutral.device)
        out.append(instance_embeddings(adapted, name, {**batch, "prototypes": neutral, "task_ids": ids}))
    return torch.cat(out)


def initial_prototype(adapted: Any, name: str, z: torch.Tensor, init: str) -> tuple[torch.Tensor | str, str,
                                                                                      dict[str, float]]:
    """(init for :func:`~adapterkit.methods.pha.add_task`, a note, cosine similarity to each trained prototype)."""
    from .pha import pha_module

    if init not in INITS:
        raise ConfigError(f"init: {init!r}: use one of {list(INITS)}")
    shared = pha_module(adapted, name)
    table = shared.prototype_table().detach().float()
    centre = z.detach().float().mean(0)
    sims = torch.nn.functional.cosine_similarity(table, centre.unsqueeze(0), dim=-1)
    similarities = {task: float(s) for task, s in zip(shared.tasks, sims.tolist(), strict=True)}
    if init == "nearest":
        best = shared.tasks[int(sims.argmax())]
        return best, f"nearest trained prototype: {best} (cosine {similarities[best]:.3f})", similarities
    scale = table.norm(dim=-1).mean() / centre.norm().clamp(min=1e-8)
    return centre * scale, "mean instance embedding (rescaled to the prototypes' mean norm)", similarities


def _source_specs(tasks: Sequence[str], new: Any) -> list[Any]:
    """TaskSpecs for the source tasks' head slots (registered tasks as they are; others as placeholders shaped like
    the new task). Their heads are never trained here; they keep the task ids in line with the prototypes."""
    from ..data.tasks import get_task

    out = []
    for task in tasks:
        try:
            out.append(get_task(task))
        except ConfigError:
            out.append(dataclasses.replace(new, name=task))
    return out


def transfer_to_task(adapted: Any, tokenizer: Any, name: str, spec: Any, train: Sequence[dict[str, Any]],
                     dev: Sequence[dict[str, Any]] | None, config: Any, *,
                     init: Literal["nearest", "mean"] = "nearest",
                     tune: Literal["prototype", "prototype+hypernetwork"] = "prototype",
                     temperature: float = 1.0, label: str = "transfer") -> TransferResult:
    """Transfer PHA adapter ``name`` (trained, active on ``adapted``) to the new task ``spec`` from k-shot ``train``
    examples (``dev`` selects the epoch); see the module docstring. The model ends with the new task added to the
    adapter (``tasks`` grows by one) and a task head per task; evaluate with
    ``training.multitask.evaluate_tasks(adapted, tokenizer, result.spec, ...)``."""
    from transformers import TrainerCallback

    from ..console import say
    from ..training.multitask import MultiTaskSpec, add_task_heads, train_multitask
    from .pha import add_task, pha_module, prototype_only_parameters

    if tune not in TUNES:
        raise ConfigError(f"tune: {tune!r}: use one of {list(TUNES)}")
    if spec.kind != "classification":
        raise ConfigError(f"task {spec.name!r}: kind {spec.kind!r}: k examples per class needs a classification task")
    check_kshot(spec, train)
    shared = pha_module(adapted, name)
    if shared.mode != "learned":
        raise ConfigError(f"adapter {name!r}: prototypes: running_mean prototypes are not parameters; transfer needs "
                          "prototypes: learned")
    if spec.name in shared.tasks:
        raise ConfigError(f"task: {spec.name!r} is already one of the adapter's tasks {list(shared.tasks)}")
    adapted.set_active_adapters(name)
    z = encode_instances(adapted, tokenizer, name, spec, list(train), config.max_length, config.eval_batch_size)
    start, note, similarities = initial_prototype(adapted, name, z, init)
    task_id = add_task(adapted, name, spec.name, start)
    mt = MultiTaskSpec((*_source_specs(shared.tasks[:-1], spec), spec))
    head = add_task_heads(adapted, mt)
    say(f"[{label}] new task {spec.name!r} (id {task_id}); prototype init: {note}")
    keep_head = list(head.classifiers[head.groups[task_id]].parameters())

    class Freeze(TrainerCallback):
        """After train() has set the train mode (all adapter parameters trainable): keep only what ``tune`` asks."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if tune == "prototype":
                keep = prototype_only_parameters(adapted, name, [task_id])
            else:
                keep = [p for n, p in adapted.adapter_parameters(name).items() if p.requires_grad]
                prototype_only_parameters(adapted, name, [task_id])  # the row hook: other prototypes stay fixed
                for p in keep:
                    p.requires_grad_(True)
            keep_ids = {id(p) for p in [*keep, *keep_head]}
            for p in adapted.parameters():
                if id(p) not in keep_ids:
                    p.requires_grad_(False)

    result = train_multitask(adapted, tokenizer, mt, {spec.name: list(train)}, {spec.name: list(dev or [])} if dev else
                             None, config.replace(train_mode="adapters"), temperature=temperature,
                             callbacks=[Freeze()], name=label)
    return TransferResult(result, mt, task_id, note, similarities)
