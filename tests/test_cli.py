"""The ``edgeslm`` command line, run as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import requires_smollm2


@requires_smollm2
def test_cli_chat_answers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "chat", "--model", "smollm2-135m", "--temperature", "0",
         "--max-tokens", "16", "-v", "What is 2+2?"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tok/s" in out.stderr


def test_cli_error_is_friendly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "chat", "--model", "/no/such/model.gguf", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "error" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("verb", ["chat", "doctor", "extract", "calibrate", "pull", "list", "rm", "verify", "bench"])
def test_cli_help(verb: str) -> None:
    out = subprocess.run([sys.executable, "-m", "edgeslm", verb, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage" in out.stdout


def test_cli_extract_unreadable_input_is_friendly(tmp_path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "--schema", str(schema), str(tmp_path / "missing.txt")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "cannot read the input" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("verb", "module"), [
    ("pull", "edgeslm.store.cli"), ("list", "edgeslm.store.cli"), ("rm", "edgeslm.store.cli"),
    ("verify", "edgeslm.store.cli"), ("extract", "edgeslm.api.cli_extract"), ("calibrate", "edgeslm.api.cli_calibrate"),
])
def test_cli_verb_whose_module_cannot_import_names_it(verb: str, module: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslm.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # its import now fails
    assert main([verb, "some-model", "--flag"]) == 2
    err = capsys.readouterr().err
    assert f"edgeslm {verb}" in err and repr(module) in err and "reinstall" in err
    assert "invalid choice" not in err  # the verb is still there, not dropped
    # the other verbs are untouched
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--help"])
    assert e.value.code == 0 and "usage: edgeslm doctor" in capsys.readouterr().out


def test_cli_missing_dependency_of_a_verb_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslm.cli import main

    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as when it is not installed
    assert main(["pull", "hf://someone/repo/model.gguf", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "edgeslm pull" in err and "'huggingface_hub'" in err and "pip install huggingface-hub" in err
    assert "Traceback" not in err


def test_cli_verb_table_matches_what_each_module_registers() -> None:
    # the verbs that stay (naming what is missing) when a module cannot import are the ones it adds
    import argparse
    import importlib

    from edgeslm.cli import _VERB_MODULES

    for module, verbs in _VERB_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == verbs, module
