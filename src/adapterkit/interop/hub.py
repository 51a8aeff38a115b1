"""Adapter directories on the Hugging Face Hub: a repo id where a directory is expected, and uploads.

``resolve_adapter_dir("owner/name")`` downloads the repository with ``huggingface_hub.snapshot_download``
(into the usual Hub cache; ``HF_ENDPOINT`` and ``HF_TOKEN`` apply) and returns the local folder; a path
that exists is returned as it is. With ``HF_HUB_OFFLINE=1`` only the cache is used, and a repository that
is not there is an error saying so. ``push_adapter_dir`` uploads a saved adapter directory.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import AdapterLoadError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
"""``owner/name`` or ``owner/name@revision``."""


def looks_like_repo_id(value: str | Path) -> bool:
    """True for ``owner/name`` (optionally ``@revision``) strings that are not an existing path."""
    text = str(value)
    return not Path(text).exists() and REPO_ID.fullmatch(text) is not None and ".." not in text


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_adapter_dir(value: str | Path, *, revision: str | None = None) -> Path:
    """A local adapter directory for ``value``: the path itself, or the snapshot of Hub repo ``owner/name``
    (``owner/name@revision`` picks a branch, tag or commit)."""
    if not looks_like_repo_id(value):
        return Path(value)
    repo_id, _, rev = str(value).partition("@")
    revision = revision or rev or None
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{value}: not a local directory, so read as a Hugging Face Hub repo id"
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=_offline()))
    except (RepositoryNotFoundError, GatedRepoError):
        raise AdapterLoadError(f"{where}: no such repository on {constants.ENDPOINT} (or it is private or gated: "
                               "set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise AdapterLoadError(f"{where}: revision {revision!r} not found") from None
    except LocalEntryNotFoundError:
        if _offline():
            raise AdapterLoadError(f"{where}: HF_HUB_OFFLINE is set and the repository is not in the Hub cache "
                                   f"({constants.HF_HUB_CACHE}); download it once online, or give a local "
                                   "directory") from None
        raise AdapterLoadError(f"{where}: cannot reach {constants.ENDPOINT} and the repository is not in the Hub "
                               "cache; check the connection (or set HF_HUB_OFFLINE=1 to use the cache only)") from None
    except HfHubHTTPError as exc:
        raise AdapterLoadError(f"{where}: the Hub answered {exc}") from None


def push_adapter_dir(directory: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                     commit_message: str | None = None, revision: str | None = None) -> str:
    """Upload the adapter directory ``directory`` to Hub model repo ``repo_id`` (created if missing);
    returns the commit URL."""
    from huggingface_hub import HfApi

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise AdapterLoadError(f"{directory}: adapter_config.json: file not found; push a saved adapter directory")
    if _offline():
        raise AdapterLoadError(f"{repo_id}: cannot push while HF_HUB_OFFLINE is set")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, revision=revision,
                             commit_message=commit_message or f"Upload adapter {directory.name} with adapterkit",
                             ignore_patterns=[".*", "*.tmp"])
    return str(getattr(info, "commit_url", info))
