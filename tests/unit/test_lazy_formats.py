"""rfc3987_syntax (1-4 s of lark grammar building at import) waits until a schema uses the iri formats,
and those formats are still checked (issue #26: the first extraction of a process paid for it)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rfc3987_syntax") is None,
                                reason="rfc3987_syntax not installed (jsonschema's format-nongpl extra)")

CHECK = """
import sys, time
import edgeslm.decoding.normalize as n
v = n.make_validator({"type": "object", "properties": {"mail": {"type": "string", "format": "email"},
                                                        "when": {"type": "string", "format": "date"}}})
assert [e.validator for e in v.iter_errors({"mail": "x", "when": "2024-13-40"})] == ["format", "format"]
assert type(sys.modules["rfc3987_syntax"]).__name__ == "_Deferred", "imported without an iri schema"
iri = n.make_validator({"type": "string", "format": "iri"})
assert list(iri.iter_errors("http://exa mple.com/")), "an invalid IRI passed"
assert not list(iri.iter_errors("http://example.com/\\u00fc")), "a valid IRI failed"
assert type(sys.modules["rfc3987_syntax"]).__name__ == "module"
ref = n.make_validator({"type": "string", "format": "iri-reference"})
assert not list(ref.iter_errors("../a/b")) and list(ref.iter_errors("a b"))
import importlib.util
assert importlib.util.find_spec("rfc3987_syntax") is not None
print("ok")
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_iri_formats_load_their_checker_only_when_used() -> None:
    r = _run(CHECK)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    r = _run("import importlib.util, edgeslm.decoding\nprint(importlib.util.find_spec('rfc3987_syntax') is not None)")
    assert r.stdout.strip() == "True", r.stdout + r.stderr
    r = _run(CHECK)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_an_app_that_imported_jsonschema_first_is_left_alone() -> None:
    r = _run("import jsonschema, sys\nimport edgeslm.decoding.normalize\n"
             "print(type(sys.modules['rfc3987_syntax']).__name__)")
    assert r.returncode == 0 and r.stdout.strip() == "module", r.stdout + r.stderr
    # and one that imports rfc3987_syntax itself after edgeslm gets the real thing on first use
    r = _run("import edgeslm.decoding, rfc3987_syntax\nprint(rfc3987_syntax.is_valid_syntax('iri', 'http://a.b/'), "
             "callable(rfc3987_syntax.is_valid_syntax_iri) if hasattr(rfc3987_syntax, 'is_valid_syntax_iri') "
             "else 'n/a')")
    assert r.returncode == 0 and r.stdout.startswith("True"), r.stdout + r.stderr
