"""A fake Hugging Face Hub: a local HTTP server with the few endpoints ``snapshot_download``, ``create_repo``
and ``upload_folder`` use, and ``huggingface_hub`` pointed at it (never the network)."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class FakeHub:
    url: str
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    cards_validated: int = 0

    def sha(self, repo: str) -> str:
        return self.commits.setdefault(repo, hashlib.sha1(repo.encode()).hexdigest())

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos.setdefault(repo, {}).update(files)
        digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.repos[repo].items()))
                              .encode()).hexdigest()
        self.commits[repo] = digest


def validate_card(content: str) -> str | None:
    """What the Hub's YAML check would object to in a README.md (None when fine): front matter that is not
    a mapping, a non-list ``tags``, or a ``model-index`` that huggingface_hub cannot read as eval results."""
    from huggingface_hub.repocard import RepoCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    try:
        data = RepoCard(content).data.to_dict()
        if "tags" in data and not isinstance(data["tags"], list):
            return "tags: must be a list"
        if "model-index" in data:
            name, results = model_index_to_eval_results(data["model-index"])
            if not results or any(r.metric_value is None or not r.dataset_type for r in results):
                return "model-index: results need dataset type and metric values"
    except Exception as exc:  # noqa: BLE001 - any parse failure is a validation error
        return f"{type(exc).__name__}: {exc}"
    return None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode())

        def _missing(self, what: str = "RepoNotFound") -> None:
            self._send(404, json.dumps({"error": what}).encode(), {"X-Error-Code": what})

        def _route(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo, action = "/".join(parts[2:4]), parts[4]
                if repo not in hub.repos:
                    return self._missing()
                files = hub.repos[repo]
                if action == "revision":
                    return self._json({"id": repo, "sha": hub.sha(repo), "private": False,
                                       "siblings": [{"rfilename": f} for f in sorted(files)]})
                if action == "tree":
                    return self._json([{"type": "file", "path": f, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for f, b in sorted(files.items())])
                if action == "preupload":
                    wanted = json.loads(body or b"{}").get("files", [])
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in wanted]})
                if action == "commit":
                    new = {}
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            new[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    hub.add(repo, new)
                    return self._json({"commitUrl": f"{hub.url}/{repo}/commit/{hub.sha(repo)}",
                                       "commitOid": hub.sha(repo)})
            if parts[:3] == ["api", "repos", "create"]:
                data = json.loads(body or b"{}")
                repo = f"{data.get('organization')}/{data['name']}" if data.get("organization") else data["name"]
                created = repo not in hub.repos
                hub.repos.setdefault(repo, {})
                return self._json({"url": f"{hub.url}/{repo}"}, 200 if created else 409)
            if parts[:2] == ["api", "validate-yaml"]:
                error = validate_card(json.loads(body or b"{}").get("content", ""))
                hub.cards_validated += 1
                if error:
                    return self._send(400, json.dumps({"errors": [{"message": error}]}).encode(),
                                      {"X-Error-Code": "BadRequest"})
                return self._json({"warnings": []})
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo not in hub.repos:
                    return self._missing()
                if filename not in hub.repos[repo]:
                    return self._missing("EntryNotFound")
                data = hub.repos[repo][filename]
                return self._send(200, data, {"X-Repo-Commit": hub.sha(repo), "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                  "application/octet-stream")
            return self._send(501, json.dumps({"error": f"fake hub: {self.command} {path} not implemented"}).encode())

        do_GET = do_HEAD = do_POST = do_PUT = _route

    return Handler


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub; ``huggingface_hub`` talks to it, with a fresh cache under ``tmp_path``."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    hub = FakeHub(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
