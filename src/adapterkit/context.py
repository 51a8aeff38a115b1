"""The per-forward context: per-call inputs and scratch state shared by every site module of one forward pass.

:meth:`AdaptedModel.forward <adapterkit.model.AdaptedModel.forward>` opens a :class:`ForwardContext`
(a :mod:`contextvars` variable, so it is private to the thread / task running the forward) holding

- ``inputs``: extra batch keys that are not Hugging Face model arguments (``task_ids``, generated
  weights, ...), removed from the batch before the model is called;
- ``attention_mask``: the batch's mask as the model received it;
- ``records``: values a module wants to report (e.g. gate values), by key, collected over the pass;
- per-module scratch state (:meth:`ForwardContext.state`), which is how a module keeps what its
  ``pre`` hook computed for its ``post`` hook, or what one layer decided for the next ones.

A site module reads it with :func:`current` (never None inside a wrapped module's hooks: a wrapped
module called outside ``AdaptedModel.forward`` opens a context of its own for that call). Contexts
nest: an inner context sees its parent's inputs (its own win) and shares its ``records``, so

    with forward_context(task_ids=ids) as ctx:
        adapted(**batch)
    ctx.records["gate"]  # every value recorded during the pass
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_CURRENT: ContextVar[ForwardContext | None] = ContextVar("adapterkit_forward_context", default=None)


@dataclass
class ForwardContext:
    """What one forward pass carries to every site module; see the module docstring."""

    inputs: dict[str, Any] = field(default_factory=dict)
    attention_mask: Any = None
    records: dict[str, list[Any]] = field(default_factory=dict)
    parent: ForwardContext | None = None
    _state: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.inputs[key]
        except KeyError:
            raise KeyError(f"forward context: no input {key!r} in this forward pass (have {sorted(self.inputs)}); "
                           "pass it in the batch (AdaptedModel.forward takes it out) or open forward_context(...)") from None

    def get(self, key: str, default: Any = None) -> Any:
        """Per-call input ``key`` (e.g. ``"task_ids"``), or ``default``."""
        return self.inputs.get(key, default)

    def record(self, key: str, value: Any) -> None:
        """Append ``value`` to ``records[key]`` (visible to every enclosing context)."""
        self.records.setdefault(key, []).append(value)

    def state(self, owner: object, name: str, default: Callable[[], Any] | None = None) -> Any:
        """Scratch value ``name`` of ``owner`` for this pass; created by ``default()`` on first use (None without)."""
        key = (id(owner), name)
        if key not in self._state and default is not None:
            self._state[key] = default()
        return self._state.get(key)

    def set_state(self, owner: object, name: str, value: Any) -> None:
        self._state[(id(owner), name)] = value

    def pop_state(self, owner: object, name: str, default: Any = None) -> Any:
        return self._state.pop((id(owner), name), default)


def current() -> ForwardContext | None:
    """The innermost open context of this thread / task, or None outside any forward pass."""
    return _CURRENT.get()


@contextlib.contextmanager
def forward_context(attention_mask: Any = None, **inputs: Any) -> Iterator[ForwardContext]:
    """Open a context for the enclosed code (nested inside the current one, if any) and close it after."""
    parent = _CURRENT.get()
    if parent is not None:
        inputs = {**parent.inputs, **inputs}
        if attention_mask is None:
            attention_mask = parent.attention_mask
    ctx = ForwardContext(inputs, attention_mask, parent.records if parent is not None else {}, parent)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
