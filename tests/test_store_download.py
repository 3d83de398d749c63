"""Downloads against a real HTTP server on 127.0.0.1 that speaks the Hub's protocol, with faults."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections import namedtuple
from pathlib import Path

import pytest

from edgeslm import _errors as E
from edgeslm.store import cache
from edgeslm.store import download as dl
from edgeslm.store.files import sha256_file
from edgeslm.store.resolve import resolve

from ._store_fakehub import TOKEN, FakeHub, Fault, make_gguf, make_onnx

REPO_ID = "acme/tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
REF = f"hf://{REPO_ID}/{FILE}"
KEY = f"{REPO_ID}/{FILE}"
ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake Hub serving a small synthetic GGUF, with HF_ENDPOINT and EDGESLM_HOME pointed at tmp."""
    server = FakeHub()
    gguf = make_gguf(tmp_path / "src.gguf", n_vocab=2000, n_tensors=24)  # ~110 KB
    server.add(REPO_ID, {FILE: gguf.read_bytes()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGESLM_DOWNLOAD_RETRIES", "3")
    for v in ("EDGESLM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_DISABLE_XET"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(dl, "RETRY_WAIT", 0.01)
    # huggingface_hub's http_get sleeps 1 s before each of its own retries
    import huggingface_hub.file_download as hf_fd

    monkeypatch.setattr(hf_fd, "time", types.SimpleNamespace(sleep=lambda s: time.sleep(0.01)))
    yield server
    server.close()


def _home() -> Path:
    return Path(os.environ["EDGESLM_HOME"])


def _partials() -> list[Path]:
    """Partial downloads kept for the next pull to resume."""
    d = _home() / "partial"
    return sorted(p for p in d.iterdir() if p.is_file()) if d.exists() else []


def _assert_cache_clean(*, partials_allowed: bool = False) -> None:
    """Everything in the model cache is a verified file (or a manifest); no temporary files anywhere.

    A partial download may stay in ``partial/`` after a failed pull (the next pull resumes it).
    """
    home = _home()
    assert [p for p in home.rglob("*") if p.is_file() and p.suffix == ".tmp"] == []
    if not partials_allowed:
        assert _partials() == []
    hub_dir = home / "hub"
    if hub_dir.exists():
        for p in hub_dir.rglob("*"):
            if p.is_file() and p.name != cache.MANIFEST:
                assert any(c.path == p for c in cache.cached_models()), f"unverified file in cache: {p}"


def _big_repo(hub: FakeHub, size: int = 24 * MiB + 12_345, **repo: object) -> tuple[str, bytes]:
    """A repository with one large file: huggingface_hub writes 10 MiB at a time, so a partial can form."""
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    data = data[:size]
    r = hub.add("acme/big", {"big.bin": data})
    for k, v in repo.items():
        setattr(r, k, v)
    return "hf://acme/big/big.bin", data


def _gets_after(hub: FakeHub, key: str, n: int) -> list[tuple[int, int]]:
    """(first byte, bytes sent) of the GETs of ``key`` after the first ``n`` transfers."""
    return [(start, sent) for k, start, sent in hub.transfers[n:] if k == key]


def test_pull_verifies_and_caches(hub: FakeHub) -> None:
    path = dl.pull(REF, progress=False)
    assert path.is_file()
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    (cf,) = cache.cached_models()
    assert cf.verified_by == "sha256" and cf.commit is not None
    # second pull: served from the cache, no network
    assert dl.pull(REF, progress=False) == path
    assert hub.gets[f"{REPO_ID}/{FILE}"] == 1
    assert hub.heads[f"{REPO_ID}/{FILE}"] == 1
    _assert_cache_clean()


def test_progress_bar_runs(hub: FakeHub) -> None:
    assert dl.pull(REF, progress=True).is_file()


def test_truncated_body_is_fetched_again(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(truncate_at=40_000, times=1)
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    assert hub.gets[f"{REPO_ID}/{FILE}"] == 2  # huggingface_hub's http_get retried
    _assert_cache_clean()


def test_connection_dropped_mid_file_is_resumed(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(drop_at=70_000, times=2)
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    _assert_cache_clean()


def test_connection_always_dropped_fails_cleanly(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(truncate_at=50_000, times=-1)
    with pytest.raises(E.DownloadError) as ei:
        dl.pull(REF, progress=False)
    assert "edgeslm pull" in str(ei.value) and "resumes" in (ei.value.hint or "")
    assert not (_home() / "hub" / REPO_ID / "main" / FILE).exists()
    _assert_cache_clean(partials_allowed=True)


def test_flipped_byte_is_quarantined_and_downloaded_again(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(flip_at=12_345, times=1)
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    quarantined = list((_home() / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].stat().st_size == path.stat().st_size
    assert hub.gets[f"{REPO_ID}/{FILE}"] == 2
    _assert_cache_clean()


def test_always_corrupt_gives_clear_error(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(flip_at=99, times=-1)
    with pytest.raises(E.CorruptModelError) as ei:
        dl.pull(REF, progress=False)
    assert "twice" in ei.value.message and ei.value.hint
    assert not (_home() / "hub" / REPO_ID / "main" / FILE).exists()
    _assert_cache_clean()


def test_slow_server_and_stall_past_timeout(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)  # what HF_HUB_DOWNLOAD_TIMEOUT=0.5 sets
    hub.repos[REPO_ID].faults[FILE] = Fault(chunk_delay=0.02, stall_at=65_536, stall_s=1.5, times=1)
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    assert hub.gets[f"{REPO_ID}/{FILE}"] >= 2  # the stalled request timed out and was resumed
    _assert_cache_clean()


def test_404_file_and_repo(hub: FakeHub) -> None:
    with pytest.raises(E.ModelNotFoundError) as ei:
        dl.pull(f"hf://{REPO_ID}/nope.gguf", progress=False)
    assert "nope.gguf" in str(ei.value)
    with pytest.raises(E.ModelNotFoundError):
        dl.pull("hf://acme/missing-repo/x.gguf", progress=False)
    _assert_cache_clean()


def test_gated_repo_needs_token(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved token from the machine
    hub.add("google/gated-GGUF", {FILE: hub.repos[REPO_ID].files[FILE]}, gated=True)
    ref = f"hf://google/gated-GGUF/{FILE}"
    with pytest.raises(E.GatedModelError) as ei:
        dl.pull(ref, progress=False)
    msg = str(ei.value)
    assert "huggingface-cli login" in msg and "HF_TOKEN" in msg and "licence" in msg
    assert isinstance(ei.value, E.DownloadError)
    assert dl.pull(ref, progress=False, token=TOKEN).is_file()
    _assert_cache_clean()


def test_disk_full_before_any_byte(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(E.DiskFullError) as ei:
        dl.pull(REF, progress=False)
    assert "EDGESLM_HOME" in str(ei.value)
    assert hub.gets[f"{REPO_ID}/{FILE}"] == 0
    _assert_cache_clean()


def _block_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make every socket connect() fail; returns the list of attempted addresses."""
    from huggingface_hub.utils import close_session

    close_session()  # drop pooled keep-alive connections: every request now needs connect()
    attempts: list[object] = []

    def no_network(self: socket.socket, address: object, *a: object) -> None:
        attempts.append(address)
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    return attempts


def test_offline_resolution_with_sockets_blocked(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    path = dl.pull(REF, progress=False)
    _block_network(monkeypatch)
    r = resolve(REF, download=True)
    assert r.path == path and r.source == "cache"
    assert dl.pull(REF, progress=False) == path
    # not cached + network blocked -> OfflineError naming the pull command
    with pytest.raises(E.OfflineError) as ei:
        resolve(f"hf://{REPO_ID}/other.gguf", download=True)
    assert "edgeslm pull hf://acme/tiny-GGUF/other.gguf" in str(ei.value)


def _two_quant_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub, data: bytes | Path) -> str:
    """A catalog entry 'two-quants' with Q4_K_M / Q8_0 / Q5_K_M variants served by the fake hub.

    Q5_K_M claims 1 PB of weights, so it never fits in memory.
    """
    repo = "acme/two-quants-GGUF"
    quants = ("Q4_K_M", "Q8_0", "Q5_K_M")
    hub.add(repo, {f"m-{q}.gguf": data for q in quants})
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    sha = hub.sha256(repo, "m-Q4_K_M.gguf")
    variants = [
        {
            "format": "gguf",
            "quant": q,
            "repo": repo,
            "files": [{"name": f"m-{q}.gguf", "size": size, "size_exact": True, "sha256": sha}],
            "default": q == "Q4_K_M",
            **({"size_bytes": 10**15} if q == "Q5_K_M" else {}),
        }
        for q in quants
    ]
    model = {"id": "two-quants", "family": "llama", "license": "apache-2.0", "gated": False, "parameters": 1}
    model |= {"context_length": 2048, "chat_format": "chatml", "tool_format": "generic", "kv_bytes_per_token": 1}
    cat = tmp_path / "two-quants.json"
    cat.write_text(json.dumps({"models": [{**model, "variants": variants}]}))
    monkeypatch.setenv("EDGESLM_CATALOG", str(cat))
    return "two-quants"


def test_load_offline_uses_the_cached_quant(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_path: Path
) -> None:
    """Only a quant the planner would not pick is cached: load() uses it, offline, with no network call."""
    import edgeslm
    from edgeslm.api.plan import plan

    mid = _two_quant_catalog(tmp_path, monkeypatch, hub, smollm2_path)
    picked = str(plan(mid).variant).split(":")[1]
    other = "Q8_0" if picked == "Q4_K_M" else "Q4_K_M"
    cached = dl.pull(mid, quant=other, progress=False)
    gets = sum(hub.gets.values())
    attempts = _block_network(monkeypatch)
    monkeypatch.setenv("EDGESLM_OFFLINE", "1")
    with edgeslm.load(mid, n_ctx=256) as m:
        assert Path(m.path) == cached and m.info.source == "cache" and m.info.variant.quant == other
        plan_ = m._engine.plan  # type: ignore[union-attr]
        assert plan_.variant == f"{mid}:{other}"
        assert "already in the local cache" in plan_.why[0] and f"instead of downloading {picked}" in plan_.why[0]
            # the cached file is the real SmolLM2: it knows its geography
        r = m.generate("The capital of France is", max_tokens=4, temperature=0)
        assert "Paris" in r.text and r.usage.completion_tokens > 0
    assert attempts == [] and sum(hub.gets.values()) == gets


def test_planned_quant_falls_back_to_the_planner(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing cached, or only a variant that does not fit memory: the planner's pick (downloaded)."""
    from edgeslm.api.load import _planned_quant
    from edgeslm.api.plan import plan

    mid = _two_quant_catalog(tmp_path, monkeypatch, hub, hub.repos[REPO_ID].files[FILE])
    picked = str(plan(mid).variant).split(":")[1]
    assert picked in ("Q4_K_M", "Q8_0")
    assert _planned_quant(mid) == (picked, None)
    dl.pull(mid, quant="Q5_K_M", progress=False)  # cached, but ~1 PB by the catalog: does not fit
    assert _planned_quant(mid) == (picked, None)
    dl.pull(mid, quant=picked, progress=False)
    assert _planned_quant(mid) == (picked, None)
    assert _planned_quant(str(tmp_path / "x.gguf")) == (None, None)  # not a catalog id


@pytest.mark.parametrize("var", ["EDGESLM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env_not_cached(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "1")
    with pytest.raises(E.OfflineError) as ei:
        resolve(REF, download=True)
    assert f"edgeslm pull {REF}" in str(ei.value)
    assert hub.heads[f"{REPO_ID}/{FILE}"] == 0


def test_resolve_without_download_names_the_command(hub: FakeHub) -> None:
    with pytest.raises(E.ModelNotFoundError) as ei:
        resolve(REF)
    assert f"edgeslm pull {REF}" in str(ei.value)
    r = resolve(REF, download=True, progress=False)
    assert r.source == "download" and r.path.is_file()


def test_interrupted_partial_is_resumed(hub: FakeHub) -> None:
    """A partial left by a killed process is picked up by the next pull (Range from its end)."""
    data = hub.repos[REPO_ID].files[FILE]
    assert isinstance(data, bytes)
    key = cache.key(REPO_ID, "main", FILE)
    part_dir = _home() / "partial"
    part_dir.mkdir(parents=True)
    (part_dir / f"{key}-{hub.sha256(REPO_ID, FILE)}.incomplete").write_bytes(data[:30_000])
    (part_dir / f"{key}-deadbeef.incomplete").write_bytes(b"stale")  # an older version: discarded
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    assert hub.transfers == [(KEY, 30_000, len(data) - 30_000)]  # only the rest was sent
    _assert_cache_clean()


def test_server_ignoring_range_restarts_the_partial(hub: FakeHub) -> None:
    """A server that answers a Range request with 200 and the whole file: the partial is rewritten
    from byte 0 (huggingface_hub's http_get handles it), not appended to."""
    data = hub.repos[REPO_ID].files[FILE]
    assert isinstance(data, bytes)
    part_dir = _home() / "partial"
    part_dir.mkdir(parents=True)
    (part_dir / f"{cache.key(REPO_ID, 'main', FILE)}-{hub.sha256(REPO_ID, FILE)}.incomplete").write_bytes(
        data[:30_000]
    )
    hub.repos[REPO_ID].faults[FILE] = Fault(ignore_range=True, times=1)
    path = dl.pull(REF, progress=False)
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    assert hub.transfers == [(KEY, 0, len(data))]
    _assert_cache_clean()


def test_catalog_pull_checks_pinned_sha(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = len(hub.repos[REPO_ID].files[FILE])  # type: ignore[arg-type]
    good = hub.sha256(REPO_ID, FILE)

    def entry(mid: str, sha: str) -> dict:
        return {
            "id": mid,
            "family": "llama",
            "license": "apache-2.0",
            "gated": False,
            "parameters": 1,
            "context_length": 256,
            "chat_format": "chatml",
            "tool_format": "generic",
            "kv_bytes_per_token": 1,
            "variants": [
                {
                    "format": "gguf",
                    "quant": "Q4_K_M",
                    "source": "hf",
                    "repo": REPO_ID,
                    "revision": "main",
                    "files": [{"name": FILE, "size": size, "size_exact": True, "sha256": sha}],
                    "default": True,
                }
            ],
        }

    cat = tmp_path / "extra.json"
    cat.write_text(json.dumps({"models": [entry("tiny-test", good), entry("tiny-pinned-wrong", "0" * 64)]}))
    monkeypatch.setenv("EDGESLM_CATALOG", str(cat))
    with pytest.raises(E.ModelNotFoundError) as ei:
        resolve("tiny-test")
    assert "edgeslm pull tiny-test" in str(ei.value)
    r = resolve("tiny-test", download=True, progress=False)
    assert r.entry is not None and r.entry.id == "tiny-test" and r.variant is not None
    assert sha256_file(r.path) == good
    assert resolve("tiny-test").source == "cache"
    with pytest.raises(E.DownloadError):
        dl.pull("tiny-pinned-wrong", progress=False)
    assert cache.remove("tiny-test") == [r.path]
    assert not r.path.exists()
    _assert_cache_clean()


def test_verify_cache_finds_damage(hub: FakeHub) -> None:
    path = dl.pull(REF, progress=False)
    assert [d for _, _, d in cache.verify_cache()] == ["ok (verified_by: sha256)"]
    with open(path, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    bad = [(p, reason) for p, ok, reason in cache.verify_cache() if not ok]
    assert bad and bad[0][0] == path and "SHA-256" in bad[0][1]


def test_onnx_folder_pull(hub: FakeHub) -> None:
    cfg = {"model": {"type": "llama", "context_length": 2048, "decoder": {"filename": "model.onnx"}}}
    hub.add(
        "acme/tiny-onnx",
        {
            "cpu-int4/genai_config.json": json.dumps(cfg).encode(),
            "cpu-int4/model.onnx": make_onnx("model.onnx.data"),
            "cpu-int4/model.onnx.data": b"\0" * 10_000,
            "cpu-int4/tokenizer.json": b"{}",
            "README.md": b"hi",
        },
    )
    path = dl.pull("hf://acme/tiny-onnx/cpu-int4", progress=False)
    assert sorted(os.listdir(path)) == ["genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    r = resolve("hf://acme/tiny-onnx/cpu-int4")
    assert r.path == path and r.format == "onnx" and r.source == "cache"
    verified = {c.filename: c.verified_by for c in cache.cached_models()}
    assert verified["cpu-int4/tokenizer.json"] == "git-sha1" and verified["cpu-int4/model.onnx"] == "sha256"
    assert len(cache.remove("hf://acme/tiny-onnx/cpu-int4")) == 4
    _assert_cache_clean()


def test_onnx_folder_escaping_external_data_is_refused(hub: FakeHub) -> None:
    cfg = {"model": {"decoder": {"filename": "model.onnx"}}}
    hub.add(
        "acme/evil-onnx", {"m/genai_config.json": json.dumps(cfg).encode(), "m/model.onnx": make_onnx("../evil.bin")}
    )
    with pytest.raises(E.CorruptModelError):
        dl.pull("hf://acme/evil-onnx/m", progress=False)
    assert cache.cached_path("acme/evil-onnx", "main", "m") is None


def _onnx_repo(hub: FakeHub, repo: str, data_size: int = 10_000) -> None:
    cfg = {"model": {"decoder": {"filename": "model.onnx"}}}
    hub.add(
        repo,
        {
            "m/genai_config.json": json.dumps(cfg).encode(),
            "m/model.onnx": make_onnx("model.onnx.data"),
            "m/model.onnx.data": b"\0" * data_size,
        },
    )


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "backslash", "other-folder"])
def test_hostile_tree_listing_writes_nothing_outside(hub: FakeHub, tmp_path: Path, kind: str) -> None:
    """An HF_ENDPOINT whose tree listing names paths outside the folder gets nothing written."""
    _onnx_repo(hub, "acme/evil-tree")
    outside = tmp_path / "outside" / "evil.json"
    listed = {
        "absolute": str(outside),
        "dotdot": "m/" + "../" * 6 + "outside/evil.json",  # hub/acme/evil-tree/main/m -> tmp_path
        "backslash": "m\\..\\..\\evil.json",
        "other-folder": "other/evil.json",
    }[kind]
    hub.repos["acme/evil-tree"].tree_extra[listed] = "m/genai_config.json"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(E.DownloadError) as ei:
        dl.pull("hf://acme/evil-tree/m", progress=False)
    assert repr(listed) in ei.value.message and "HF_ENDPOINT" in (ei.value.hint or "")
    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert not outside.exists()
    assert [p for p in after - before if "locks" not in p.parts] == []  # not a byte downloaded
    assert sum(hub.gets.values()) == 0
    assert cache.cached_path("acme/evil-tree", "main", "m") is None


@pytest.mark.parametrize("rev", ["refs/pr/1", "refs%2Fpr%2F1", "0123456789abcdef0123456789abcdef01234567", "v1.0"])
def test_legit_revisions_are_cached_inside_the_hub_folder(hub: FakeHub, rev: str) -> None:
    path = dl.pull(f"hf://{REPO_ID}@{rev}/{FILE}", progress=False)
    assert path.is_file() and path.resolve().is_relative_to((_home() / "hub" / REPO_ID).resolve())
    assert path.parent.name not in (".", "..", "main")


@pytest.mark.parametrize("rev", ["..", ".", "%2E%2E", "a%2F..%2Fb", "x%5Cy", "refs/pr/.."])
def test_dot_revisions_are_refused(hub: FakeHub, rev: str) -> None:
    with pytest.raises(E.ModelNotFoundError, match="not a valid Hub reference"):
        dl.pull(f"hf://{REPO_ID}@{rev}/{FILE}", progress=False)
    assert sum(hub.heads.values()) == 0 and not (_home() / "hub").exists()


_HOLD_LOCK = """
import sys, time
from edgeslm.store.files import file_lock
with file_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_lock_timeout_is_a_download_error_with_a_hint(tmp_path: Path) -> None:
    from edgeslm.store.files import LockTimeoutError, file_lock

    lock = tmp_path / "locks" / "x.lock"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock), "30"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(E.DownloadError) as ei:
            with file_lock(lock, timeout=0.3):
                pass
    finally:
        child.kill()
        child.wait()
    assert isinstance(ei.value, LockTimeoutError) and isinstance(ei.value, TimeoutError)
    assert str(lock) in (ei.value.hint or "") and "another edgeslm process" in (ei.value.hint or "")
    with file_lock(lock, timeout=5):  # released when the holder died
        pass


_PULL_FOLDER = """
import sys
from edgeslm.store.download import pull
print(pull(sys.argv[1], progress=False), flush=True)
"""


def test_remove_waits_for_a_folder_pull_in_another_process(hub: FakeHub) -> None:
    """remove() takes the same lock as the folder pull, so it cannot run in the middle of it."""
    _onnx_repo(hub, "acme/slow-onnx", data_size=300_000)
    hub.repos["acme/slow-onnx"].faults["m/model.onnx.data"] = Fault(chunk_delay=0.3, times=-1)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    ref = "hf://acme/slow-onnx/m"
    child = subprocess.Popen(
        [sys.executable, "-c", _PULL_FOLDER, ref], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while hub.gets["acme/slow-onnx/m/model.onnx.data"] == 0:  # the child is inside the folder pull
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.02)
    removed = cache.remove(ref)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert len(removed) == 3 and not Path(out.strip()).exists()
    assert cache.cached_path("acme/slow-onnx", "main", "m") is None
    assert cache.cached_models() == []


_CHILD = """
import sys
from edgeslm.store.download import pull
print(pull(sys.argv[1], progress=False))
"""


def test_four_processes_pull_the_same_model(hub: FakeHub) -> None:
    hub.repos[REPO_ID].faults[FILE] = Fault(chunk_delay=0.3, times=-1)  # slow: they all overlap
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, REF], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outs]
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert sha256_file(path) == hub.sha256(REPO_ID, FILE)
    assert hub.gets[f"{REPO_ID}/{FILE}"] == 1  # one download, three waited and reused it
    assert len(cache.cached_models()) == 1
    _assert_cache_clean()


@pytest.mark.slow
def test_pull_real_model_end_to_end(hub: FakeHub, smollm2_path: Path) -> None:
    """The real 98 MB SmolLM2 GGUF through the full path: HEAD, GET, hash, validate, move."""
    hub.add("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": smollm2_path})
    hub.repos["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"].faults["SmolLM2-135M-Instruct.Q4_1.gguf"] = Fault(
        drop_at=50_000_000, times=1
    )
    path = dl.pull("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf", progress=False)
    assert sha256_file(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    from edgeslm.store.validate import validate_model_file

    info = validate_model_file(path)
    assert info.architecture == "llama"  # type: ignore[union-attr]
    _assert_cache_clean()


def test_cli_pull_list_verify_rm(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from edgeslm.cli import store as cli

    parser = argparse.ArgumentParser(prog="edgeslm")
    cli.register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert run("pull", REF, "--no-progress") == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_file()
    assert run("list", "--cached") == 0
    assert FILE in capsys.readouterr().out
    assert run("verify") == 0
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    assert run("verify") == 1
    assert run("rm", REF) == 0
    assert not path.exists()
    assert cache.cached_models() == []


def test_ctrl_c_keeps_partial_and_next_pull_transfers_only_the_rest(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, data = _big_repo(hub)
    seen = {"n": 0}
    real = dl._Progress.advanced

    def interrupt(self: dl._Progress, name: str, n: int) -> None:
        seen["n"] += n
        if seen["n"] > 10 * MiB:  # http_get reports a chunk just before writing it: one 10 MiB chunk is on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(dl._Progress, "advanced", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dl.pull(ref, progress=False)
    (part,) = _partials()
    have = part.stat().st_size
    assert have == 10 * MiB and part.read_bytes() == data[:have]
    assert not (_home() / "hub" / "acme" / "big" / "main" / "big.bin").exists()
    monkeypatch.setattr(dl._Progress, "advanced", real)
    n = len(hub.transfers)
    path = dl.pull(ref, progress=False)
    assert path.read_bytes() == data
    assert _gets_after(hub, "acme/big/big.bin", n) == [(have, len(data) - have)]
    _assert_cache_clean()


def test_failed_download_keeps_partial_and_next_pull_transfers_only_the_rest(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries run out (the connection is reset at 15 MiB every time): the 10 MiB on disk are kept."""
    ref, data = _big_repo(hub)
    monkeypatch.setenv("EDGESLM_DOWNLOAD_RETRIES", "1")
    # a pause before the reset, so the client has read what was sent (a reset discards unread data)
    hub.repos["acme/big"].faults["big.bin"] = Fault(stall_at=15 * MiB, stall_s=1.0, drop_at=15 * MiB, times=-1)
    with pytest.raises(E.DownloadError) as ei:
        dl.pull(ref, progress=False)
    assert "resumes" in (ei.value.hint or "")
    (part,) = _partials()
    have = part.stat().st_size
    assert have == 10 * MiB and part.read_bytes() == data[:have]
    _assert_cache_clean(partials_allowed=True)
    hub.repos["acme/big"].faults.clear()
    n = len(hub.transfers)
    path = dl.pull(ref, progress=False)
    assert path.read_bytes() == data
    assert _gets_after(hub, "acme/big/big.bin", n) == [(have, len(data) - have)]
    _assert_cache_clean()


def test_killed_pull_resumes_in_the_next_process(hub: FakeHub) -> None:
    """A pull killed with SIGKILL mid-file: the next pull sends a Range from the end of the partial,
    and the stand-in Hub serves exactly the missing bytes."""
    ref, data = _big_repo(hub)
    hub.repos["acme/big"].faults["big.bin"] = Fault(stall_at=20 * MiB, stall_s=120, times=1)
    # a read timeout longer than the stall: the child must not recover by itself before it is killed
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_DOWNLOAD_TIMEOUT="300")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, ref], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # the Hub has sent 20 MiB and stalls; the child has written at least one 10 MiB chunk
        while hub.served("acme/big/big.bin") < 20 * MiB or not [p for p in _partials() if p.stat().st_size]:
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # let the child write what it has received
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (part,) = _partials()
    have = part.stat().st_size
    assert 10 * MiB <= have <= 20 * MiB and part.read_bytes() == data[:have]
    n = len(hub.transfers)
    path = dl.pull(ref, progress=False)
    assert path.read_bytes() == data
    rest = _gets_after(hub, "acme/big/big.bin", n)
    assert rest == [(have, len(data) - have)], rest
    assert sum(sent for _, _, sent in hub.transfers) < len(data) + 20 * MiB + 1
    _assert_cache_clean()


def _fake_xet(hub: FakeHub, repo: str, name: str, calls: list[int], fail_at: int | None = None, exc: type = OSError):
    """A stand-in for hf_xet's ordered download stream, serving the stand-in Hub's bytes."""
    data = hub.repos[repo].files[name]
    assert isinstance(data, bytes)

    def stream(xet: object, headers: dict[str, str], size: int, start: int):
        assert size == len(data) and getattr(xet, "refresh_route", "").endswith("/xet-read-token/main")
        calls.append(start)
        pos = start
        while pos < size:
            if fail_at is not None and pos >= fail_at:
                raise exc("xet stream broke")
            chunk = data[pos : pos + MiB]
            pos += len(chunk)
            yield chunk

    return stream


def test_xet_when_the_hub_offers_it(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _big_repo(hub, size=3 * MiB + 7, xet=True)
    calls: list[int] = []
    monkeypatch.setattr(dl, "_xet_stream", _fake_xet(hub, "acme/big", "big.bin", calls))
    path = dl.pull(ref, progress=False)
    assert path.read_bytes() == data and calls == [0]
    assert hub.gets["acme/big/big.bin"] == 0  # no byte over HTTP
    (cf,) = cache.cached_models()
    assert cf.verified_by == "sha256"
    _assert_cache_clean()


def test_xet_disabled_uses_http(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _big_repo(hub, size=3 * MiB + 7, xet=True)
    calls: list[int] = []
    monkeypatch.setattr(dl, "_xet_stream", _fake_xet(hub, "acme/big", "big.bin", calls))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    assert dl.pull(ref, progress=False).read_bytes() == data
    assert calls == [] and hub.gets["acme/big/big.bin"] == 1


def test_xet_failure_continues_over_http_from_the_same_prefix(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _big_repo(hub, size=3 * MiB + 7, xet=True)
    calls: list[int] = []
    monkeypatch.setattr(dl, "_xet_stream", _fake_xet(hub, "acme/big", "big.bin", calls, fail_at=2 * MiB))
    assert dl.pull(ref, progress=False).read_bytes() == data
    assert calls == [0]
    assert _gets_after(hub, "acme/big/big.bin", 0) == [(2 * MiB, len(data) - 2 * MiB)]


def test_interrupted_xet_transfer_resumes_with_xet(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _big_repo(hub, size=3 * MiB + 7, xet=True)
    calls: list[int] = []
    stream = _fake_xet(hub, "acme/big", "big.bin", calls, fail_at=MiB, exc=KeyboardInterrupt)
    monkeypatch.setattr(dl, "_xet_stream", stream)
    with pytest.raises(KeyboardInterrupt):
        dl.pull(ref, progress=False)
    (part,) = _partials()
    assert part.read_bytes() == data[:MiB]
    monkeypatch.setattr(dl, "_xet_stream", _fake_xet(hub, "acme/big", "big.bin", calls))
    assert dl.pull(ref, progress=False).read_bytes() == data
    assert calls == [0, MiB] and hub.gets["acme/big/big.bin"] == 0


def test_corrupt_xet_copy_is_quarantined_and_fetched_over_http(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _big_repo(hub, size=3 * MiB + 7, xet=True)

    def bad_stream(xet: object, headers: dict[str, str], size: int, start: int):
        yield b"\0" * size

    monkeypatch.setattr(dl, "_xet_stream", bad_stream)
    assert dl.pull(ref, progress=False).read_bytes() == data
    assert len(list((_home() / "quarantine").iterdir())) == 1
    assert hub.gets["acme/big/big.bin"] == 1


def test_size_only_verification_is_reported(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror that reports neither a SHA-256 nor a git blob id: the file is checked by size only,
    and ``edgeslm verify`` says so."""
    hub.add("acme/weak", {"notes.txt": b"hello"})
    real = hub._handle

    def weak_etag(h, head: bool) -> None:
        orig = h.send_header

        def send_header(k: str, v: str) -> None:
            orig(k, '"weak-1"' if k == "ETag" else v)

        h.send_header = send_header
        real(h, head)

    monkeypatch.setattr(hub, "_handle", weak_etag)
    path = dl.pull("hf://acme/weak/notes.txt", progress=False)
    assert path.read_bytes() == b"hello"
    assert [(p, d) for p, _, d in cache.verify_cache()] == [(path, "ok (verified_by: size)")]


def test_the_stand_in_speaks_what_hf_hub_download_needs(hub: FakeHub, tmp_path: Path) -> None:
    """huggingface_hub's own client downloads from the stand-in (so the fault tests test the real protocol)."""
    from huggingface_hub import hf_hub_download

    got = hf_hub_download(REPO_ID, FILE, endpoint=hub.url, cache_dir=tmp_path / "hf-cache", token=False)
    assert sha256_file(got) == hub.sha256(REPO_ID, FILE)
    assert hub.heads[KEY] >= 1 and hub.gets[KEY] == 1


def test_remove_deletes_a_partial(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _ = _big_repo(hub)
    monkeypatch.setenv("EDGESLM_DOWNLOAD_RETRIES", "0")
    hub.repos["acme/big"].faults["big.bin"] = Fault(drop_at=15 * MiB, times=-1)
    with pytest.raises(E.DownloadError):
        dl.pull(ref, progress=False)
    (part,) = _partials()
    assert cache.remove(ref) == [part] and _partials() == []


def test_a_gated_answer_gives_gated_error_for_every_catalog_variant(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Hub variant of the shipped catalog, served gated by the stand-in, gives GatedModelError
    with its licence page and its own pull command, whether or not the catalog flags it gated (a
    stale flag cannot turn a licence into a confusing error)."""
    from edgeslm.store.catalog import list_entries

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: Usage(10**15, 0, 10**15))  # the real sizes are GBs
    checked = 0
    for e in list_entries():
        for v in e.variants:
            if v.source != "hf":
                continue
            assert v.repo is not None
            hub.add(v.repo, {}, gated=True)
            with pytest.raises(E.GatedModelError) as ei:
                dl.pull(e.id, quant=v.quant, format=v.format, device=v.device, progress=False)
            hint = ei.value.hint or ""
            assert f"{hub.url}/{v.repo}" in hint and f"edgeslm pull {e.id} --quant {v.quant}" in hint, hint
            checked += 1
    assert checked >= 15 and sum(hub.gets.values()) == 0
    _assert_cache_clean()
