"""The injection mechanism: the only place that edits a model's module tree.

``wrap(model, path)`` replaces the module at ``path`` with an :class:`AdaptedModule` that keeps the
original as ``base_layer`` and runs the active adapters around it; ``unwrap`` puts the very same
original module object back. No Hugging Face forward function is copied: adapters only see the
wrapped module's arguments and its output.

An adapter attached at a site is an :class:`AdapterModule` with up to three hooks:
- ``pre(args, kwargs) -> (args, kwargs)``: change the wrapped module's inputs (parallel adapters that
  add to a residual argument, prefix keys/values passed to the attention function, soft prompts);
- ``post(args, kwargs, output) -> output``: change its output (sequential adapters, LoRA);
- ``replace(args, kwargs) -> output or None``: run after the pre hooks; a non-None value is used as the
  output *instead of* calling the wrapped module (post hooks still run). None falls through to the next
  replacing module, then to the wrapped module (used by ``frozen_cache`` to skip frozen layers).
Hooks a module does not override cost nothing: :meth:`AdaptedModule.refresh` lists only the overriding ones.
Several active adapters at one site run in activation order (a stack).

Per-example routing (a mixed-adapter batch, :mod:`adapterkit.routing`): when the forward context holds a
routing, a wrapper ignores the active adapters and runs each attached adapter's module on that adapter's
rows only, through ``route_pre(args, kwargs, rows)`` and ``route_post(args, kwargs, output, rows)`` (the
rows' new output values; the wrapper writes every group's values back with one copy). A module family
that must see all groups at once (soft prompts of different lengths) overrides the classmethods
``routed_pre`` / ``routed_post``. ``routing_refusal()`` says why a module cannot be routed (by default:
it overrides a hook without its routed version).

``attach`` is also the one place that (1) puts a module on the wrapped layer's device and in its
floating-point dtype (adapters follow the layer: a bf16 model gets bf16 adapters, see :func:`place`),
and (2) binds the module to its site (:class:`SiteBinding`): ``module.wrapper``, ``module.wrapped_layer``,
``module.shared_module`` (the adapter's model-level shared module, if any), ``module.layer_index`` and
``module.adapter_name`` are how a site module reaches its surroundings. Per-call state goes in the
forward context (:mod:`adapterkit.context`), never on the module.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .context import _CURRENT, forward_context
from .routing import ROUTING, Routing, Rows, scatter


@dataclass(frozen=True)
class SiteBinding:
    """Where an attached module sits: its wrapper (weakly held), adapter name, layer, site and shared module."""

    wrapper_ref: weakref.ReferenceType[AdaptedModule]
    adapter_name: str
    layer: int | None = None
    site: str | None = None
    shared_ref: weakref.ReferenceType[nn.Module] | None = None


class AdapterModule(nn.Module):
    """Base class of every module an adapter method attaches at a site.

    ``order`` sorts output hooks at one site: 0 for modules that extend the wrapped operation itself
    (LoRA), 10 for modules that transform its output (sequential adapters).
    """

    order: int = 10

    # -- where the module sits (set by ``attach``) ----------------------------------------------------
    @property
    def binding(self) -> SiteBinding | None:
        return self.__dict__.get("_binding")

    def _bound(self) -> SiteBinding:
        binding = self.__dict__.get("_binding")
        if binding is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a model (injection.attach binds it)")
        return binding

    @property
    def wrapper(self) -> AdaptedModule:
        """The :class:`AdaptedModule` this module is attached to (RuntimeError when detached)."""
        wrapper = self._bound().wrapper_ref()
        if wrapper is None:
            raise RuntimeError(f"{type(self).__name__}: its wrapper no longer exists")
        return wrapper

    @property
    def wrapped_layer(self) -> nn.Module:
        """The original module this one adapts (the wrapper's ``base_layer``)."""
        return self.wrapper.base_layer

    @property
    def shared_module(self) -> nn.Module | None:
        """The adapter's model-level shared module (``Attachment(None, "shared", ...)``), or None."""
        ref = self._bound().shared_ref
        return ref() if ref is not None else None

    @property
    def layer_index(self) -> int | None:
        """Index of the layer this module sits in (None at a model-level site)."""
        return self._bound().layer

    @property
    def adapter_name(self) -> str:
        return self._bound().adapter_name

    # -- hooks ----------------------------------------------------------------------------------------
    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return output

    def replace(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The wrapped module's output computed another way, or None to call the wrapped module."""
        return None

    def bind(self, wrapper: AdaptedModule) -> None:
        """Called once when attached, after :attr:`binding` is set: set up what lives outside the module
        (forward hooks on the wrapped layer, a switched attention implementation); nothing to keep."""

    def unbind(self, wrapper: AdaptedModule) -> None:
        """Called once when detached (after removal from ``wrapper``): undo what ``bind`` set up outside the module."""

    # -- per-example routing (mixed-adapter batches) -------------------------------------------------------
    def routing_refusal(self) -> str | None:
        """None when this module can run on a subset of the batch's rows (see :meth:`route_pre` /
        :meth:`route_post`); otherwise why not. By default a module that overrides ``pre``, ``post`` or
        ``replace`` without the routed counterpart cannot."""
        cls = type(self)
        for hook, routed in (("pre", "route_pre"), ("post", "route_post")):
            if getattr(cls, hook) is not getattr(AdapterModule, hook) and (
                    getattr(cls, routed) is getattr(AdapterModule, routed)
                    and getattr(cls, f"routed_{hook}").__func__ is getattr(AdapterModule, f"routed_{hook}").__func__):
                return f"{cls.__name__} defines {hook} but not {routed} (its version for a subset of the batch's rows)"
        if cls.replace is not AdapterModule.replace:
            return f"{cls.__name__} replaces the wrapped module's output for the whole batch"
        return None

    def route_pre(self, args: tuple, kwargs: dict[str, Any], rows: Rows) -> tuple[tuple, dict[str, Any]]:
        """``pre`` for rows ``rows`` only: the full-batch arguments with only those rows changed."""
        return args, kwargs

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: Any, rows: Rows) -> torch.Tensor:
        """``post`` for rows ``rows`` only: the new output values of those rows (``output`` is the full batch's)."""
        raise NotImplementedError(self.routing_refusal() or f"{type(self).__name__}.route_post")

    @classmethod
    def routing_family(cls) -> type[AdapterModule]:
        """The class whose :meth:`routed_pre` / :meth:`routed_post` run this module's groups at a wrapper."""
        return AdapterModule

    @classmethod
    def routed_pre(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple,
                   kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """All groups of this family at one wrapper: each module's :meth:`route_pre` on its rows."""
        for module, rows in groups:
            if type(module).pre is not AdapterModule.pre:
                args, kwargs = module.route_pre(args, kwargs, rows)
        return args, kwargs

    @classmethod
    def routed_post(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple, kwargs: dict[str, Any],
                    output: Any) -> Any:
        """All groups of this family at one wrapper: each module's rows from :meth:`route_post`, written back
        into one copy of the output."""
        parts = [(rows, module.route_post(args, kwargs, output, rows)) for module, rows in groups
                 if type(module).post is not AdapterModule.post]
        return scatter(output, parts) if parts else output

    # -- AdapterFusion contract -------------------------------------------------------------------------
    def fusion_refusal(self) -> str | None:
        """None when :meth:`fusion_output` works at this site; otherwise why this module cannot be fused."""
        return (f"{type(self).__name__} does not define fusion_output (how its output at this site is formed "
                "from the wrapped module's output), so it cannot be fused")

    def fusion_output(self, args: tuple, kwargs: dict[str, Any], output: Any) -> torch.Tensor:
        """This adapter's version of the site's output, computed from the wrapped module's inputs and its
        output *without* this adapter; AdapterFusion mixes these over the fused adapters."""
        raise NotImplementedError(self.fusion_refusal())


class AdaptedModule(nn.Module):
    """A module wrapped for adapters: ``base_layer`` is the original, ``adapters`` holds one module per adapter name."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self._active: tuple[str, ...] = ()
        self._plan: tuple[list[AdapterModule], list[AdapterModule]] = ([], [])
        self._replace: list[AdapterModule] = []

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the adapters that run, in activation order."""
        return self._active

    @active.setter
    def active(self, names: tuple[str, ...]) -> None:
        self._active = tuple(names)
        self.refresh()

    def refresh(self) -> None:
        """Recompute which modules' hooks run (after activation or attach/detach), so forward does no sorting."""
        modules = sorted((self.adapters[n] for n in self._active if n in self.adapters), key=lambda m: m.order)
        pre = [m for m in modules if type(m).pre is not AdapterModule.pre]
        post = [m for m in modules if type(m).post is not AdapterModule.post]
        self._plan = (pre, post)
        self._replace = [m for m in modules if type(m).replace is not AdapterModule.replace]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ctx = _CURRENT.get()
        if ctx is None:  # called outside AdaptedModel.forward: this call gets its own context
            with forward_context():
                return self._run(args, kwargs)
        routing = ctx.inputs.get(ROUTING)
        if routing is not None:
            return self._run_routed(args, kwargs, routing)
        return self._run(args, kwargs)

    def _run_routed(self, args: tuple, kwargs: dict[str, Any], routing: Routing) -> Any:
        """One forward with each adapter attached here applied to its rows only (active adapters ignored)."""
        families: dict[type[AdapterModule], list[tuple[AdapterModule, Rows]]] = {}
        for name, rows in routing.groups:
            module = self.adapters[name] if name in self.adapters else None
            if module is not None:
                families.setdefault(type(module).routing_family(), []).append((module, rows))  # type: ignore[arg-type]
        if not families:
            return self.base_layer(*args, **kwargs)
        for family, groups in families.items():
            args, kwargs = family.routed_pre(groups, args, kwargs)
        output = self.base_layer(*args, **kwargs)
        for family, groups in families.items():
            output = family.routed_post(groups, args, kwargs, output)
        return output

    def _run(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        pre, post = self._plan
        for module in pre:
            args, kwargs = module.pre(args, kwargs)
        output = None
        for module in self._replace:
            output = module.replace(args, kwargs)
            if output is not None:
                break
        if output is None:
            output = self.base_layer(*args, **kwargs)
        for module in post:
            output = module.post(args, kwargs, output)
        return output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` ("" is the model itself)."""
    return model.get_submodule(path) if path else model


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = get_module(model, parent_path)
    while isinstance(parent, AdaptedModule):  # a wrapped parent: edit the original module it holds
        parent = parent.base_layer
    setattr(parent, child, module)


def wrap(model: nn.Module, path: str) -> AdaptedModule:
    """Wrap the module at ``path`` (idempotent) and return the wrapper."""
    module = get_module(model, path)
    if isinstance(module, AdaptedModule):
        return module
    wrapper = AdaptedModule(module)
    _set_module(model, path, wrapper)
    return wrapper


def unwrap(model: nn.Module, path: str) -> nn.Module:
    """Put the original module back at ``path`` and return it."""
    module = get_module(model, path)
    if isinstance(module, AdaptedModule):
        _set_module(model, path, module.base_layer)
        return module.base_layer
    return module


def reference_tensor(module: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter (else buffer) of ``module``: its device and dtype are the module's."""
    for tensors in (module.parameters(), module.buffers()):
        for t in tensors:
            if t.is_floating_point():
                return t
    return None


def place(module: nn.Module, like: nn.Module) -> nn.Module:
    """Move ``module`` to the device and floating-point dtype of ``like`` (unchanged when ``like`` has no
    floating-point tensor). Adapters follow the layer they adapt, so a bf16 model gets bf16 adapters."""
    ref = reference_tensor(like)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    return module


def attach(model: nn.Module, path: str, name: str, adapter: AdapterModule, *, layer: int | None = None,
           site: str | None = None, shared: nn.Module | None = None) -> AdaptedModule:
    """Attach ``adapter`` under ``name`` at the module ``path`` (wrapping it if needed).

    The module is placed on the wrapped layer's device and dtype and bound to its site (``layer``,
    ``site`` and the adapter's ``shared`` module are what it can read back), then its ``bind`` runs.
    """
    wrapper = wrap(model, path)
    if name in wrapper.adapters:
        raise ValueError(f"{path}: an adapter named {name!r} is already attached")
    place(adapter, wrapper.base_layer)
    adapter.__dict__["_binding"] = SiteBinding(
        weakref.ref(wrapper), name, layer, site, weakref.ref(shared) if shared is not None else None
    )
    wrapper.adapters[name] = adapter
    wrapper.refresh()
    sites_index(model).setdefault(name, set()).add(path)
    try:
        adapter.bind(wrapper)
    except Exception:
        del wrapper.adapters[name]
        adapter.__dict__.pop("_binding", None)
        if len(wrapper.adapters) == 0:
            unwrap(model, path)
        else:
            wrapper.refresh()
        raise
    return wrapper


def detach(model: nn.Module, path: str, name: str) -> None:
    """Remove adapter ``name`` from ``path``; unwrap when no adapter is left there."""
    wrapper = get_module(model, path)
    if not isinstance(wrapper, AdaptedModule):
        return
    adapter = wrapper.adapters[name] if name in wrapper.adapters else None
    if adapter is not None:
        del wrapper.adapters[name]
    sites_index(model).get(name, set()).discard(path)
    wrapper.active = tuple(n for n in wrapper.active if n != name)
    if len(wrapper.adapters) == 0:
        unwrap(model, path)
    if adapter is not None:
        adapter.unbind(wrapper)
        adapter.__dict__.pop("_binding", None)


def sites_index(model: nn.Module) -> dict[str, set[str]]:
    """Adapter name -> the module paths where :func:`attach` put it in ``model`` (kept by attach and detach), so
    that switching adapters visits their sites only, not every module."""
    index = model.__dict__.get("_adapterkit_sites")
    if index is None:
        index = model.__dict__["_adapterkit_sites"] = {}
    return index


def wrappers(model: nn.Module) -> dict[str, AdaptedModule]:
    """Every wrapper in ``model`` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedModule)}


def set_active(model: nn.Module, names: tuple[str, ...]) -> None:
    """Make ``names`` (in order) the active adapters at every site."""
    for wrapper in wrappers(model).values():
        wrapper.active = tuple(names)
