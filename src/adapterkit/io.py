"""Saving and loading adapters: ``adapter_config.json`` + ``adapter.safetensors`` (+ ``head.safetensors``).

Writes are atomic (temporary file in the same directory, then ``os.replace``); the JSON is written
last, so a directory with a config always has its tensors. Nothing is unpickled.

Format versions: ``format_version`` is ``"MAJOR.MINOR"`` (files before 1.1 wrote the integer 1, read
as 1.0). A reader refuses a file whose major version is newer than its own (or a version that is not
a number). A file from a newer *minor* version of the same major is read: method-config fields and
top-level fields this version does not know are dropped with a warning naming them. (User YAML
configs are always strict.)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import read_json
from .errors import AdapterLoadError, ConfigError, unpickle_refusal
from .model import AdaptedModel
from .registry import config_from_dict

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
HEAD_NAME = "head.safetensors"
FORMAT = "adapterkit"
FORMAT_VERSION = "1.1"
"""Written into every adapter_config.json. 1.1: nested method configs (composition)."""


def parse_format_version(value: Any, source: object) -> tuple[int, int]:
    """(major, minor) of a ``format_version`` value: an integer N (N.0) or a string "N.M"; anything else
    raises AdapterLoadError naming ``source`` and the field."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, 0
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        major, _, minor = value.partition(".")
        return int(major), int(minor)
    raise AdapterLoadError(f"{source}: format_version: expected a version number (an integer, or a string "
                           f"'MAJOR.MINOR' such as {FORMAT_VERSION!r}), got {value!r}")


def check_format_version(meta: dict[str, Any], source: object) -> bool:
    """Check ``meta['format_version']`` (missing: 1.0) against this reader; True when the file comes from a newer
    minor version (then unknown fields are dropped with a warning instead of refused)."""
    major, minor = parse_format_version(meta.get("format_version", 1), source)
    own_major, own_minor = parse_format_version(FORMAT_VERSION, "FORMAT_VERSION")
    if major > own_major:
        raise AdapterLoadError(
            f"{source}: format_version: {meta.get('format_version')!r} is not supported (written by a newer, incompatible "
            f"adapterkit; this one reads format {own_major}.x up to {FORMAT_VERSION}): a newer file needs a newer adapterkit"
        )
    if major < 1:
        raise AdapterLoadError(f"{source}: format_version: {meta.get('format_version')!r} is not supported "
                               f"(versions start at 1)")
    return major == own_major and minor > own_minor


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    A crash therefore leaves either the old file or the new one, never a half-written one. The file gets
    the permissions of an ordinarily created one (0666 less the umask), not ``mkstemp``'s 0600. A write
    error (a full disk) is re-raised as an ``OSError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            raise OSError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` as a safetensors file at ``path`` atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file raises AdapterLoadError naming it."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterLoadError(f"{path}: not a valid safetensors file ({exc})") from None


def check_weights(path: object, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights that cannot be trained values: a non-floating dtype (int32, bool) or NaN/infinite entries."""
    for key, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise AdapterLoadError(f"{path}: {key}: dtype {tensor.dtype} is not a floating-point type")
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            what = "all" if bad == tensor.numel() else f"{bad} of {tensor.numel()}"
            raise AdapterLoadError(f"{path}: {key}: {what} values are NaN or infinite")


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; a pickle that needs more than tensors is refused by name."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise unpickle_refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise AdapterLoadError(f"{path}: cannot be read as a torch tensor file ({type(exc).__name__}: {exc})") from None


def save_adapter(model: AdaptedModel, name: str, directory: str | Path, *, include_head: bool = False,
                 extra: dict[str, Any] | None = None, push_to_hub: str | None = None,
                 private: bool | None = None) -> Path:
    """Save adapter ``name`` (and optionally the task head) to ``directory``, with an adapter card
    (``README.md``, see :mod:`adapterkit.interop.card`); ``push_to_hub="owner/name"`` then uploads the
    directory to that Hub repository (created if missing, ``private`` if asked)."""
    directory = Path(directory)
    config = model.adapter_configs[name]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "config": config.to_dict(),
        "base_model": _base_model_record(model, directory),
    }
    files = {WEIGHTS_NAME: model.adapter_state_dict(name)}
    if include_head:
        files[HEAD_NAME] = model.adapter_head_state_dict(name)  # its own head, if it carries one
        cfg = model.model.config
        meta["head"] = {
            "model_class": type(model.model).__name__,
            "num_labels": getattr(cfg, "num_labels", None),
            "id2label": {str(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()},
            "problem_type": getattr(cfg, "problem_type", None),
            # pooling + normalize: eval rebuilds the same head
            **(model.adapter_heads[name].config if name in model.adapter_heads else model.head_config).to_dict(),
        }
    # Every tensor file is written to a temporary file first; only when all are written (a full disk fails
    # here, leaving the old files as they were) are they renamed into place, and the config last.
    with contextlib.ExitStack() as stack:
        for fname, tensors in files.items():
            tmp = stack.enter_context(atomic_path(directory / fname))
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata={"format": FORMAT})
    if not include_head and (directory / HEAD_NAME).exists():
        (directory / HEAD_NAME).unlink()
    if extra:
        meta["extra"] = extra
    atomic_write_json(directory / CONFIG_NAME, meta)
    from .interop.card import CARD_NAME, adapter_card

    counts = model.count_parameters()
    card = adapter_card(meta, adapter_parameters=counts.get(f"adapter:{name}"),
                        head_parameters=counts["head"] if include_head else None)
    atomic_write_bytes(directory / CARD_NAME, card.encode("utf-8"))
    if push_to_hub:
        from .interop.hub import push_adapter_dir

        push_adapter_dir(directory, push_to_hub, private=private)
    return directory


def _base_model_record(model: AdaptedModel, directory: Path) -> dict[str, Any]:
    """``model.base_model_info()``, with a local model directory recorded relative to the adapter directory
    (so that the two can move together and the adapter loads from any working directory)."""
    info = dict(model.base_model_info())
    path = Path(info.get("name_or_path") or "")
    if info.get("name_or_path") and path.is_dir():
        info["name_or_path"] = str(path.resolve())
        info["relative_path"] = os.path.relpath(path.resolve(), Path(directory).resolve())
    return info


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``adapter_config.json``: format, config and base-model fields."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise AdapterLoadError(f"{directory}: not a directory")
    try:
        meta = read_json(path)
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None
    if meta.get("format") != FORMAT:
        raise AdapterLoadError(f"{path}: format: expected {FORMAT!r}, got {meta.get('format')!r}")
    newer = check_format_version(meta, path)
    known = {"format", "format_version", "name", "config", "base_model", "head", "extra"}
    unknown = sorted(set(meta) - known)
    if unknown and not newer:
        raise AdapterLoadError(f"{path}: {unknown[0]}: unknown field; known fields: {sorted(known)}")
    if unknown:
        warnings.warn(f"{path}: ignoring fields {unknown} unknown to this version of adapterkit (the file has "
                      f"format_version {meta['format_version']!r}, this reader {FORMAT_VERSION!r})", stacklevel=2)
        meta = {k: v for k, v in meta.items() if k in known}
    for key in ("name", "config", "base_model"):
        if key not in meta:
            raise AdapterLoadError(f"{path}: {key}: missing")
    if not isinstance(meta["base_model"], dict):
        raise AdapterLoadError(f"{path}: base_model: expected an object")
    head = meta.get("head")
    if head is not None and not isinstance(head, dict):
        raise AdapterLoadError(f"{path}: head: expected an object, got {head!r}")
    return meta


def resolve_base_model(meta: dict[str, Any], directory: str | Path) -> tuple[str | None, list[str]]:
    """(path or Hub id to load, local paths tried) for the base model an adapter was saved for.

    None means the bundled model. ``base_model.relative_path`` (recorded by :func:`save_adapter` for a
    local model directory) is tried relative to the adapter directory, then ``name_or_path`` relative to
    the adapter directory and as given; a name that matches no directory is taken as a Hub id only when
    it looks like one (``org/name``), otherwise the error says which paths were tried.
    """
    base = meta["base_model"]
    source = Path(directory) / CONFIG_NAME
    saved = base.get("name_or_path") or None
    relative = base.get("relative_path") or None
    for key, value in (("name_or_path", saved), ("relative_path", relative)):
        if value is not None and not isinstance(value, str):
            raise AdapterLoadError(f"{source}: base_model.{key}: expected a string, got {value!r}")
    if saved is None and relative is None:
        return None, []
    candidates = [Path(directory) / relative] if relative else []
    if saved:
        candidates += [Path(directory) / saved, Path(saved).expanduser()]
    tried = list(dict.fromkeys(str(c) for c in candidates))
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate), tried
    looks_like_hub_id = bool(saved) and not Path(saved).is_absolute() and not saved.startswith((".", "~")) \
        and saved.count("/") <= 1
    if looks_like_hub_id:
        return saved, tried
    raise AdapterLoadError(
        f"{source}: base_model.name_or_path: {saved or relative!r} is not a directory (tried {', '.join(tried)}); "
        "give the base model with --model"
    )


def check_compatible(model: AdaptedModel, meta: dict[str, Any], source: Path) -> None:
    """Fail naming the field when the adapter was saved for another model."""
    mine = model.base_model_info()
    for key in ("model_type", "hidden_size", "num_layers"):
        saved = meta["base_model"].get(key)
        if saved is None:
            raise AdapterLoadError(f"{source}: base_model.{key}: missing")
        if saved != mine[key]:
            raise AdapterLoadError(
                f"{source}: base_model.{key}: adapter was saved for {saved!r}, this model has {mine[key]!r}"
            )


def load_adapter(model: AdaptedModel, directory: str | Path, name: str | None = None, *,
                 load_head: bool = True, activate: bool = True, own_head: bool = False) -> str:
    """Load an adapter directory (or Hub repo ``owner/name``, see :mod:`adapterkit.interop.hub`) onto
    ``model``; returns the adapter's name.

    A saved head is copied into the model's head; with ``own_head`` it stays the adapter's own instead
    (:meth:`AdaptedModel.set_adapter_head`: used whenever the adapter runs, e.g. per row of a mixed-adapter
    batch), and the model's head is left as it is."""
    from .interop.hub import resolve_adapter_dir

    directory = resolve_adapter_dir(directory)
    meta = read_adapter_config(directory)
    source = directory / CONFIG_NAME
    check_compatible(model, meta, source)
    try:
        config = config_from_dict(meta["config"], f"{source}: config", strict=not check_format_version(meta, source))
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None
    tensors = read_tensors(directory / WEIGHTS_NAME)
    check_weights(directory / WEIGHTS_NAME, tensors)
    head = directory / HEAD_NAME if load_head and (directory / HEAD_NAME).exists() else None
    if own_head:
        return _load_with_own_head(model, directory, name or meta["name"], meta, config, tensors, head, activate)
    previous = (model.head_config, model.pooled_head)
    if head is not None:
        check_head_labels(meta, head, source)
        set_saved_head(model, meta, source)
    try:
        return add_with_weights(model, name or meta["name"], config, tensors, directory / WEIGHTS_NAME, head=head,
                                activate=activate)
    except Exception:  # leave the model's head as it was too
        model.head_config, model.pooled_head = previous
        model.set_train_mode(model.train_mode)
        raise


def _load_with_own_head(model: AdaptedModel, directory: Path, name: str, meta: dict[str, Any], config: Any,
                        tensors: dict[str, torch.Tensor], head: Path | None, activate: bool) -> str:
    source = directory / CONFIG_NAME
    head_tensors = None
    if head is not None:
        check_head_labels(meta, head, source)
        head_tensors = read_tensors(head)
        check_weights(head, head_tensors)
    add_with_weights(model, name, config, tensors, directory / WEIGHTS_NAME, activate=False)
    try:
        if head_tensors is not None:
            model.set_adapter_head(name, head_tensors, saved_head_config(meta, source))
    except ConfigError as exc:
        model.delete_adapter(name)
        raise AdapterLoadError(f"{head}: {exc}") from None
    if activate:
        model.set_active_adapters(*model.active_adapters, name)
    return name


def add_with_weights(model: AdaptedModel, name: str, config: Any, tensors: dict[str, torch.Tensor], source: object,
                     *, head: Path | None = None, activate: bool = True) -> str:
    """Add adapter ``name`` with ``config``, load ``tensors`` (and a head file) into it; a failure leaves the
    model as it was. Returns the name."""
    model.add_adapter(name, config, activate=False)
    try:
        model.load_adapter_state_dict(name, tensors, source)
        if head is not None:
            load_head_weights(model, head)
    except Exception:
        model.delete_adapter(name)
        raise
    if activate:
        model.set_active_adapters(*model.active_adapters, name)
    return name


def check_head_labels(meta: dict[str, Any], head_path: Path, source: Path) -> None:
    """``head.num_labels`` in the config must match the output size of the saved head tensors."""
    num_labels = (meta.get("head") or {}).get("num_labels")
    if num_labels is None:
        return
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise AdapterLoadError(f"{source}: head.num_labels: expected a positive integer, got {num_labels!r}")
    from safetensors import safe_open

    try:
        with safe_open(str(head_path), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterLoadError(f"{head_path}: not a valid safetensors file ({exc})") from None
    sizes = sorted({int(shape[0]) for shape in shapes.values() if len(shape) >= 1})
    if num_labels not in sizes:
        raise AdapterLoadError(
            f"{source}: head.num_labels: {num_labels}, but no tensor in {head_path.name} has {num_labels} "
            f"outputs (output sizes there: {sizes})"
        )


def saved_head_config(meta: dict[str, Any], source: object) -> Any:
    """The head an adapter was saved with; adapters saved before pooling was recorded used the model's own
    head (``hf``)."""
    from .heads import HeadConfig

    saved = meta.get("head") or {}
    if not isinstance(saved, dict):
        raise AdapterLoadError(f"{source}: head: expected an object")
    fields = {k: saved[k] for k in ("pooling", "normalize") if k in saved}
    try:
        return HeadConfig.from_dict({"pooling": "hf", **fields}, f"{source}: head")
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None


def set_saved_head(model: AdaptedModel, meta: dict[str, Any], source: object) -> None:
    """Give ``model`` the head (pooling) recorded in ``meta``, so its saved head weights fit and act the same."""
    config = saved_head_config(meta, source)
    if config.pooling in ("auto", "sentence-transformers"):
        raise AdapterLoadError(f"{source}: head.pooling: {config.pooling!r} is not a concrete mode")
    if config != model.head_config:
        try:
            model.set_head(config)
        except ConfigError as exc:
            raise AdapterLoadError(f"{source}: head: {exc}") from None


def load_head_weights(model: AdaptedModel, path: Path) -> None:
    """Copy a saved head into the model; shape or key mismatches name the file and key."""
    tensors = read_tensors(path)
    check_weights(path, tensors)
    params = model.head_parameters()
    for key, tensor in tensors.items():
        if key not in params:
            raise AdapterLoadError(f"{path}: {key}: no such head parameter in {type(model.model).__name__}")
        if tuple(params[key].shape) != tuple(tensor.shape):
            raise AdapterLoadError(
                f"{path}: {key}: shape {tuple(tensor.shape)} does not match the model's {tuple(params[key].shape)} "
                "(a different label set?)"
            )
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor.to(params[key].dtype))
