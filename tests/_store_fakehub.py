"""A small Hugging Face Hub look-alike on 127.0.0.1 for the model-store tests (no mocks of HTTP).

It speaks what huggingface_hub 2.x (``hf_hub_download``, ``get_hf_file_metadata``, ``http_get``,
``HfApi.list_repo_tree``) and edgeslm use: HEAD/GET ``/{repo}/resolve/{rev}/{path}`` with
``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, Range requests
(206 + Content-Range), ``X-Error-Code`` on 401/404, and
``GET /api/models/{repo}/tree/{rev}/{path}?recursive=...``. ``Repo.xet`` adds the headers with
which the Hub offers a Xet transfer (``X-Xet-Hash``, a ``Link: rel="xet-auth"``); the Xet storage
itself is not emulated. Faults are injected per file; ``Repo.tree_extra`` makes the tree listing
name hostile paths (a malicious ``HF_ENDPOINT``).

Every GET of a file is recorded in ``FakeHub.transfers`` as ``(file, first byte, bytes sent)``,
so tests can check that a resumed download fetched only the rest.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_good_token"


@dataclass
class Fault:
    """What to do wrong when serving a file body (counts are decremented per GET)."""

    truncate_at: int | None = None  # close cleanly after this absolute offset
    drop_at: int | None = None  # reset the connection after this absolute offset
    flip_at: int | None = None  # XOR one byte at this absolute offset
    stall_at: int | None = None  # sleep ``stall_s`` at this offset
    stall_s: float = 0.0
    times: int = 1  # how many GETs get the fault (-1: all)
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks (slow server)
    ignore_range: bool = False  # answer a Range request with 200 and the whole file (as some CDNs do)

    def active(self) -> bool:
        return self.times != 0

    def used(self) -> None:
        if self.times > 0:
            self.times -= 1


@dataclass
class Repo:
    files: dict[str, bytes | Path]
    gated: bool = False
    faults: dict[str, Fault] = field(default_factory=dict)
    # Fault: listed path -> name of the file in ``files`` it serves. Listed in every tree answer
    # (whatever folder was asked for) and served at the URL a naive client would request for it.
    tree_extra: dict[str, str] = field(default_factory=dict)
    xet: bool = False  # offer Xet transfers for LFS files, as the Hub does for Xet-backed repositories


def _lfs(path: str, size: int) -> bool:
    return size > 2048 or path.endswith((".gguf", ".onnx", ".data"))


class FakeHub:
    """Threaded HTTP server; ``url`` goes into HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.gets: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.transfers: list[tuple[str, int, int]] = []  # (repo/file, first byte, bytes sent) per GET
        self._lock = threading.Lock()
        self._sha: dict[tuple[str, str], str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo: str, files: dict[str, bytes | Path], *, gated: bool = False) -> Repo:
        r = Repo(files=dict(files), gated=gated)
        self.repos[repo] = r
        return r

    def served(self, key: str) -> int:
        """Bytes of ``key`` (``repo/file``) sent in response bodies so far."""
        with self._lock:
            return sum(n for k, _, n in self.transfers if k == key)

    def sha256(self, repo: str, path: str) -> str:
        k = (repo, path)
        if k not in self._sha:
            data = self.repos[repo].files[path]
            if isinstance(data, Path):
                from edgeslm.store.files import sha256_file

                self._sha[k] = sha256_file(data)
            else:
                self._sha[k] = hashlib.sha256(data).hexdigest()
        return self._sha[k]

    # ------------------------------------------------------------------ request handling

    def _size(self, data: bytes | Path) -> int:
        return data.stat().st_size if isinstance(data, Path) else len(data)

    def _read(self, data: bytes | Path, start: int, n: int) -> bytes:
        if isinstance(data, Path):
            with open(data, "rb") as f:
                f.seek(start)
                return f.read(n)
        return data[start : start + n]

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, msg: str, head: bool) -> None:
        body = json.dumps({"error": msg}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", msg)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if code == "EntryNotFound":
            h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        if path.startswith("/api/models/"):
            return self._tree(h, path[len("/api/models/") :], head)
        hostile = self._hostile(unquote(path))
        segs = path.strip("/").split("/")
        if hostile is None and (len(segs) < 5 or segs[2] != "resolve"):
            return self._error(h, 404, "RepoNotFound", "not found", head)
        repo_id, filename = hostile or (f"{segs[0]}/{segs[1]}", unquote("/".join(segs[4:])))
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found", head)
        if repo.gated and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted.", head)
        filename = repo.tree_extra.get(filename, filename)
        if filename not in repo.files:
            return self._error(h, 404, "EntryNotFound", "Entry not found", head)
        data = repo.files[filename]
        size = self._size(data)
        key = f"{repo_id}/{filename}"
        (self.heads if head else self.gets)[key] += 1
        start, status = 0, 200
        rng = h.headers.get("Range")
        fault = repo.faults.get(filename)
        if fault is not None and not fault.active():
            fault = None
        if rng and not head and not (fault is not None and fault.ignore_range):
            start = int(rng.split("=")[1].split("-")[0])
            status = 206
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
        h.send_response(status)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Accept-Ranges", "bytes")
        if _lfs(filename, size):
            sha = self.sha256(repo_id, filename)
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(size))
            h.send_header("ETag", f'"{sha}"')
            if repo.xet:
                h.send_header("X-Xet-Hash", hashlib.sha256(b"xet" + sha.encode()).hexdigest())
                h.send_header("Link", f'<{self.url}/api/models/{repo_id}/xet-read-token/{segs[3]}>; rel="xet-auth"')
        else:
            raw = data.read_bytes() if isinstance(data, Path) else data
            git = hashlib.sha1(f"blob {len(raw)}\0".encode() + raw).hexdigest()
            h.send_header("ETag", f'"{git}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.send_header("Content-Length", str(size - start))
        h.end_headers()
        if head:
            return None
        if fault is not None:
            fault.used()
        with self._lock:
            self.transfers.append((key, start, 0))
            slot = len(self.transfers) - 1
        self._body(h, data, start, size, fault, slot)
        return None

    def _hostile(self, url_path: str) -> tuple[str, str] | None:
        """(repo, listed path) when ``url_path`` is where an HTTP client sends a request for a hostile listed path.

        HTTP clients remove ``..`` segments from URLs, so ``main/m/../../x`` arrives as another path.
        """
        for repo_id, repo in self.repos.items():
            for listed in repo.tree_extra:
                for rev in ("main", COMMIT):
                    raw = f"/{repo_id}/resolve/{rev}/{listed}"
                    if url_path in (raw, posixpath.normpath(raw)):
                        return repo_id, listed
        return None

    def _sent(self, slot: int, n: int) -> None:
        with self._lock:
            k, first, sent = self.transfers[slot]
            self.transfers[slot] = (k, first, sent + n)

    def _body(
        self, h: BaseHTTPRequestHandler, data: bytes | Path, start: int, size: int, fault: Fault | None, slot: int
    ) -> None:
        pos = start
        step = 64 * 1024
        try:
            while pos < size:
                end = min(size, pos + step)
                if fault is not None:
                    for cut in (fault.truncate_at, fault.drop_at, fault.stall_at):
                        if cut is not None and pos < cut < end:
                            end = cut
                chunk = bytearray(self._read(data, pos, end - pos))
                if fault is not None and fault.flip_at is not None and pos <= fault.flip_at < end:
                    chunk[fault.flip_at - pos] ^= 0xFF
                h.wfile.write(chunk)
                self._sent(slot, len(chunk))
                pos = end
                if fault is None:
                    continue
                if fault.chunk_delay:
                    h.wfile.flush()
                    time.sleep(fault.chunk_delay)
                if fault.stall_at is not None and pos == fault.stall_at:
                    h.wfile.flush()
                    time.sleep(fault.stall_s)
                if fault.truncate_at is not None and pos == fault.truncate_at:
                    h.wfile.flush()
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_WR)
                    return
                if fault.drop_at is not None and pos == fault.drop_at:
                    h.wfile.flush()
                    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    h.close_connection = True
                    h.connection.close()  # RST
                    return
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _tree(self, h: BaseHTTPRequestHandler, rest: str, head: bool) -> None:
        # {owner}/{name}/tree/{rev}[/{path}]
        segs = rest.split("/")
        repo_id = f"{segs[0]}/{segs[1]}"
        repo = self.repos.get(repo_id)
        if repo is None or len(segs) < 4 or segs[2] != "tree":
            return self._error(h, 404, "RepoNotFound", "Repository not found", head)
        if repo.gated and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(h, 401, "GatedRepo", "restricted", head)
        prefix = unquote("/".join(segs[4:])).strip("/")
        items = {str(i["path"]): i for i in self._tree_items(repo_id, repo)}
        out = [i for name, i in items.items() if not prefix or name.startswith(prefix + "/")]
        out += [{**items[real], "path": listed} for listed, real in repo.tree_extra.items()]
        if not out:
            return self._error(h, 404, "EntryNotFound", "no such folder", head)
        body = json.dumps(out).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
        return None

    def _tree_items(self, repo_id: str, repo: Repo) -> list[dict[str, object]]:
        """The tree entries of every file of ``repo``, as the Hub lists them."""
        out: list[dict[str, object]] = []
        for name, data in sorted(repo.files.items()):
            size = self._size(data)
            raw = data.read_bytes() if isinstance(data, Path) and size < 4096 else data
            item: dict[str, object] = {"type": "file", "path": name, "size": size}
            if _lfs(name, size):
                item["oid"] = "0" * 40
                item["lfs"] = {"oid": self.sha256(repo_id, name), "size": size, "pointerSize": 130}
            else:
                assert isinstance(raw, bytes)
                item["oid"] = hashlib.sha1(f"blob {len(raw)}\0".encode() + raw).hexdigest()
            out.append(item)
        return out


def make_gguf(path: Path, *, n_vocab: int = 64, n_tensors: int = 3, arch: str = "llama") -> Path:
    """Write a small but structurally complete GGUF file with the ``gguf`` package."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("edgeslm-test")
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    rng = np.random.default_rng(0)
    for i in range(n_tensors):
        w.add_tensor(f"blk.{i}.weight", rng.standard_normal((32, 32 + i)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_onnx(location: str | None = "model.onnx.data", *, external: bool = True) -> bytes:
    """A real ONNX model (y = x @ w) written with the ``onnx`` package; ``w`` (64 bytes) lives in external data."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    if external:
        if location is None:
            w.data_location = TensorProto.EXTERNAL
        else:
            set_external_data(w, location, offset=0, length=64)
        w.ClearField("raw_data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
