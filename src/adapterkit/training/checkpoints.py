"""Training checkpoints that hold only what trains.

A checkpoint directory ``checkpoint-STEP/`` holds ``trainable.safetensors`` (the trainable tensors,
named as in ``adapted.named_parameters()``) with a ``model.safetensors.index.json`` that lists them
(the Hugging Face sharded-checkpoint index, so that the Trainer's own resume loads the file), or, in
full fine-tuning, ``model.safetensors`` with the whole model; then the Trainer's optimizer, scheduler,
RNG and ``trainer_state.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterLoadError, ConfigError

TRAINABLE_NAME = "trainable.safetensors"
FULL_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CHECKPOINT_INFO_NAME = "adapterkit_checkpoint.json"
STATE_NAME = "trainer_state.json"


def trainable_state_dict(adapted: Any) -> dict[str, torch.Tensor]:
    """The tensors that train (names as in ``adapted.named_parameters()``), plus the buffers training updates
    (:func:`trained_buffers`)."""
    return {**{n: p.detach() for n, p in adapted.named_parameters() if p.requires_grad}, **trained_buffers(adapted)}


def trained_buffers(adapted: Any) -> dict[str, torch.Tensor]:
    """Buffers that training updates without a gradient, by name as in ``adapted.named_buffers()``: a module lists
    them in its ``trained_buffers`` attribute (PHA's running-mean prototypes), so checkpoints keep them."""
    out = {}
    for name, module in adapted.named_modules():
        for buffer in getattr(module, "trained_buffers", ()):
            tensor = module._buffers.get(buffer)
            if tensor is not None:
                out[f"{name}.{buffer}" if name else buffer] = tensor.detach()
    return out


def save_checkpoint_weights(adapted: Any, directory: str | Path) -> Path:
    """Write the trainable tensors (or, in full mode, the whole model) as safetensors, with the index."""
    from safetensors.torch import save_model

    from ..io import atomic_path, atomic_save_tensors, atomic_write_json

    directory = Path(directory)
    if adapted.train_mode == "full":
        with atomic_path(directory / FULL_NAME) as tmp:
            save_model(adapted, tmp, metadata={"format": "pt"})
        path, keys = directory / FULL_NAME, None
    else:
        tensors = trainable_state_dict(adapted)
        atomic_save_tensors(directory / TRAINABLE_NAME, tensors, {"format": "pt"})
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        atomic_write_json(directory / INDEX_NAME, {"metadata": {"total_size": size},
                                                   "weight_map": {k: TRAINABLE_NAME for k in tensors}})
        path, keys = directory / TRAINABLE_NAME, len(tensors)
    atomic_write_json(directory / CHECKPOINT_INFO_NAME,
                      {"format": "adapterkit-checkpoint", "train_mode": adapted.train_mode, "tensors": keys})
    return path


def load_checkpoint_weights(adapted: Any, directory: str | Path) -> None:
    """Load what :func:`save_checkpoint_weights` wrote; mismatched keys or shapes name the file."""
    from safetensors.torch import load_model

    from ..io import read_tensors

    directory = Path(directory)
    if (directory / FULL_NAME).is_file():
        load_model(adapted, str(directory / FULL_NAME), strict=True)
        return
    path = directory / TRAINABLE_NAME
    tensors = read_tensors(path)
    params = dict(adapted.named_parameters())
    buffers = trained_buffers(adapted)
    unknown = sorted(set(tensors) - set(params) - set(buffers))
    if unknown:
        raise AdapterLoadError(f"{path}: {unknown[0]}: no such parameter in the model ({len(unknown)} unknown keys)")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    if missing:
        raise AdapterLoadError(f"{path}: {missing[0]}: trainable parameter missing from the checkpoint")
    with torch.no_grad():
        for key, tensor in tensors.items():
            own = params[key] if key in params else buffers[key]
            if tuple(tensor.shape) != tuple(own.shape):
                raise AdapterLoadError(f"{path}: {key}: shape {tuple(tensor.shape)} != model's {tuple(own.shape)}")
            own.copy_(tensor.to(own.dtype))


def last_checkpoint(output_dir: str | Path, *, say: Callable[[str], None] | None = None) -> str | None:
    """The newest *complete* ``checkpoint-STEP`` directory in ``output_dir``, or None.

    Complete means it holds our weights and a readable ``trainer_state.json``, which the Trainer writes
    last; a checkpoint cut short by a kill or a full disk (no state, or a truncated one) is skipped in
    favour of the one before it, and ``say`` is told which and why.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for path in root.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and path.is_dir():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        has_weights = (path / TRAINABLE_NAME).is_file() or (path / FULL_NAME).is_file()
        problem = None if has_weights else f"no {TRAINABLE_NAME} or {FULL_NAME}"
        if problem is None:
            problem = _state_problem(path / STATE_NAME)
        if problem is None:
            return str(path)
        if say is not None:
            say(f"{path}: incomplete checkpoint ({problem}); skipping it")
    return None


def _state_problem(path: Path) -> str | None:
    """Why ``trainer_state.json`` cannot be resumed from (missing, truncated, not a state), or None."""
    if not path.is_file():
        return f"no {STATE_NAME}"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{STATE_NAME} is truncated or invalid: {exc}"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{STATE_NAME} has no global_step"
    return None


def resume_point(output_dir: str | Path, resume: bool | str, say: Callable[[str], None] | None = None) -> str | None:
    """The checkpoint to resume from under ``resume`` (false: none; "auto": the last complete one if any; true:
    the last complete one, and a ConfigError when there is none)."""
    if resume is False:
        return None
    found = last_checkpoint(output_dir, say=say)
    if found is None and resume is True:
        raise ConfigError(f"resume: no complete checkpoint-* directory in {output_dir}")
    return found


def check_resume_compatible(checkpoint: str | Path, max_steps: int, epochs: float, batch_size: int) -> None:
    """Refuse to resume a checkpoint saved by a run of another length (epochs, batch size, data size): its
    learning-rate schedule was for that length, so the result would match neither run. This also refuses
    asking a finished run for more epochs. A pickle in the checkpoint that needs more than a weights-only
    load (``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``) is refused by name."""
    from ..io import safe_torch_load

    state = json.loads((Path(checkpoint) / STATE_NAME).read_text(encoding="utf-8"))
    saved = state.get("max_steps")
    if isinstance(saved, int) and saved != max_steps:
        raise ConfigError(
            f"{checkpoint}: resume: the checkpoint belongs to a run of {saved} steps (step {state['global_step']}, "
            f"batch size {state.get('train_batch_size')}); this run asks for {max_steps} steps ({epochs:g} epochs, "
            f"batch size {batch_size}). Resuming would change the learning-rate schedule of the part already "
            "trained: resume with the same epochs, batch size and data, or start a new run (--overwrite true, or "
            "another --output-dir)"
        )
    for name in ("optimizer.pt", "scheduler.pt", "scaler.pt"):  # rng_state.pth holds numpy arrays: see train()
        if (Path(checkpoint) / name).is_file():
            safe_torch_load(Path(checkpoint) / name)


def planned_steps(n_train: int, batch_size: int, epochs: float, world_size: int = 1, accumulation: int = 1,
                  drop_last: bool = False) -> int:
    """Optimizer steps the Trainer plans for ``n_train`` examples (as ``Trainer.set_initial_training_values``)."""
    per_step = batch_size * max(1, world_size)
    batches = n_train // per_step if drop_last else math.ceil(n_train / per_step)
    updates = max(1, math.ceil(batches / accumulation))
    return math.ceil(epochs * updates)


class _FrozenKeysNotice(logging.Filter):
    """Drops the Trainer's notice that a checkpoint lacks the model's frozen tensors (ours never holds them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("There were missing keys in the checkpoint model loaded")


@contextlib.contextmanager
def partial_checkpoints_expected() -> Iterator[None]:
    """While training: a resumed checkpoint that holds only the trainable tensors is not worth a warning."""
    logger = logging.getLogger("transformers.trainer")
    notice = _FrozenKeysNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
