"""A third engine, registered the way a plugin would, runs through every public path with no edgeslm
file changed: ``edgeslm.load``, ``edgeslm.plan``, ``edgeslm doctor`` and the command line, for a
single file and a folder of its own format.

The engine is the scripted backend of :mod:`edgeslm.testing`; its spec here declares everything the
registry owns per engine (what it opens, the header check, the model's shape for the planner, its
doctor row, its format for the CLI's choices), so a missing hook in edgeslm shows up as a failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgeslm
from edgeslm._errors import CorruptModelError
from edgeslm.backends.registry import BackendSpec, OpenRequest, register_backend, unregister_backend
from edgeslm.cli import main
from edgeslm.runtime.planner import ModelShape
from edgeslm.testing import ScriptedBackend, write_script

NAME = "thirdengine"
REPLY = "Hello from the third engine."
checked: list[Path] = []


def _script(path: Path) -> Path:
    return path / "script.json" if path.is_dir() else path


def _validate(path: Path) -> dict:
    """The engine's header check: a script must be a JSON object with replies."""
    checked.append(path)
    try:
        data = json.loads(_script(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"{path.name} is not a script: {exc}", hint="write it with write_script") from None
    if not isinstance(data, dict) or not data.get("replies"):
        raise CorruptModelError(f"{path.name} has no replies", hint="write it with write_script")
    return data


def _open(path: Path, req: OpenRequest) -> ScriptedBackend:
    data = _validate(path)
    from edgeslm.testing import MARKERS, TEMPLATES

    engine = ScriptedBackend(data["replies"], marker=MARKERS[data["format"]], n_ctx=req.n_ctx)
    engine.path = str(path)
    engine.chat_template = TEMPLATES[data["format"]]
    return engine


def _shape(info: dict, size: int) -> ModelShape:
    return ModelShape(n_layers=3, layer_bytes=(1000, 1000, 1000), other_bytes=size, kv_bytes_per_token=64,
                      context_length=int(info.get("n_ctx", 4096)), source=NAME)


SPEC = BackendSpec(
    name=NAME,
    formats=("script",),
    devices=("cpu",),
    describe="a .script.json file or a folder holding script.json",
    opens=lambda p: (p.is_file() and p.name.endswith(".script.json")) or (p.is_dir() and (p / "script.json").is_file()),
    open=_open,
    validate=_validate,
    suffixes=(".script.json",),
    shape=_shape,
    doctor=lambda: {"package": "edgeslm.testing", "version": edgeslm.__version__, "summary": "replays scripts"},
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    register_backend(SPEC, replace=True)
    checked.clear()
    file = write_script(tmp_path / "model.script.json", "hermes", REPLY, n_ctx=2048)
    folder = tmp_path / "model-folder"
    folder.mkdir()
    write_script(folder / "script.json", "hermes", REPLY, n_ctx=2048)
    try:
        yield file, folder
    finally:
        unregister_backend(NAME)


@pytest.mark.parametrize("which", ["file", "folder"])
def test_load_and_plan_open_the_third_engines_file_and_folder(engine: tuple[Path, Path], which: str) -> None:
    path = engine[0] if which == "file" else engine[1]
    plan = edgeslm.plan(path)
    assert plan.backend == NAME and plan.device == "cpu" and plan.n_layers == 3
    assert plan.n_ctx == 2048  # the context the engine's shape states
    with edgeslm.load(path) as model:
        assert model.plan.backend == NAME
        assert any(NAME in w for w in model.plan.why)  # says which engine and why
        r = model.chat([{"role": "user", "content": "hi"}], max_tokens=32)
        assert r.text == REPLY
    assert path in checked  # the header check ran before the engine opened it


def test_a_damaged_file_of_the_third_format_is_refused_by_its_own_check(engine: tuple[Path, Path]) -> None:
    file, _ = engine
    file.write_text("[]", encoding="utf-8")
    with pytest.raises(CorruptModelError, match="no replies"):
        edgeslm.load(file)


def test_doctor_and_the_cli_know_the_third_engine(engine: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    file, folder = engine
    from edgeslm.api.doctor import report

    row = report()["engines"][NAME]
    assert row["summary"] == "replays scripts"
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engines"][NAME]["package"] == "edgeslm.testing"
    assert main(["doctor"]) == 0
    assert "replays scripts" in capsys.readouterr().out
    for path in (file, folder):
        assert main(["chat", "--model", str(path), "hi", "--max-tokens", "32"]) == 0
        assert REPLY in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["pull", "--help"])
    assert e.value.code == 0 and "script" in capsys.readouterr().out  # its format is a --format choice
