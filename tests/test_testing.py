"""edgeslm.testing: the scripted model app developers test their own code with (issue #25), and the
example test in examples/ that shows it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import edgeslm
from edgeslm.testing import register_scripted, scripted_model, write_script

REPO = Path(__file__).resolve().parents[1]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def test_the_example_app_tests_pass() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(REPO / "examples/test_with_scripted_model.py")], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout + out.stderr


def test_json_replies_are_written_as_the_grammar_writes_them() -> None:
    for reply in ({"name": "Ann", "age": 31}, '{"name": "Ann",   "age": 31}'):
        x = scripted_model(reply).extract("Ann, 31.", PERSON)
        assert x.data == {"name": "Ann", "age": 31} and x.confidence > 0.99 and x.attempts == 1


def test_turns_are_followed_in_order_and_text_stays_text() -> None:
    m = scripted_model(turns=["First.", "Second."])
    first = m.chat([{"role": "user", "content": "1"}], max_tokens=8)
    second = m.chat([{"role": "user", "content": "1"}, {"role": "assistant", "content": first.text},
                     {"role": "user", "content": "2"}], max_tokens=8)
    assert (first.text, second.text) == ("First.", "Second.")
    assert scripted_model("Hello!").chat([{"role": "user", "content": "hi"}], max_tokens=8).text == "Hello!"


@pytest.mark.parametrize("kwargs", [{}, {"reply": "a", "turns": ["b"]}, {"turns": []}, {"turns": "ab"},
                                    {"reply": 3}, {"reply": "a", "tool_format": "nope"}])
def test_wrong_arguments_say_what_to_do(kwargs: dict) -> None:
    with pytest.raises(edgeslm.InvalidRequestError) as err:
        scripted_model(**kwargs)
    assert err.value.hint


def test_a_script_file_loads_through_the_registry(tmp_path: Path) -> None:
    register_scripted()
    path = write_script(tmp_path / "reply.script.json", "hermes", '{"name":"Bo","age":40}')
    with edgeslm.load(str(path)) as m:
        assert m.extract("Bo, 40.", PERSON).data == {"name": "Bo", "age": 40}


def test_import_edgeslm_does_not_import_the_testing_module() -> None:
    code = "import sys, edgeslm; assert 'edgeslm.testing' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert importlib.util.find_spec("edgeslm.testing") is not None
