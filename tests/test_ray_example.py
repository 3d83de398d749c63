"""examples/ray_extract.py on a local Ray instance with 2 workers (one SmolLM2 per actor)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import requires_smollm2

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
    "required": ["name", "city"],
}
PEOPLE = [("Alice", "Paris"), ("Bob", "Oslo"), ("Carla", "Lima"), ("Dmitri", "Kyoto"), ("Eve", "Cairo"),
          ("Farid", "Quito"), ("Gina", "Riga")]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason='ray not installed: pip install ".[ray]"')


@requires_smollm2
@pytest.mark.timeout(600)
def test_ray_data_extracts_a_json_lines_corpus_with_two_actors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"id": i, "text": f"{n} lives in {c}."}) for i, (n, c) in enumerate(PEOPLE)]
    lines.insert(3, json.dumps({"id": 99, "text": "word " * 5000}))  # longer than the context: an error row
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    # its own process: Ray starts a local instance and stops it when the driver exits; 2 actors of 1
    # CPU each, and a third CPU for the read and write tasks (with none left for them, Ray Data waits)
    driver = textwrap.dedent(f"""
        import json, sys, ray
        sys.path.insert(0, {str(ROOT / "examples")!r})
        from ray_extract import run
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
                 runtime_env={{"env_vars": {{"PYTHONPATH": {str(ROOT / "examples")!r}}}}})
        run({str(corpus)!r}, json.loads({json.dumps(json.dumps(SCHEMA))}), {str(out)!r}, workers=2, n_threads=1,
            rows_per_batch=3)
        ray.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for f in sorted(out.glob("*.json*")) for x in f.read_text().splitlines() if x.strip()]
    assert sorted(r["id"] for r in rows) == sorted([*range(len(PEOPLE)), 99])  # every row, once
    for r in rows:
        if r["id"] == 99:
            assert r["data"] is None and r["error"].startswith("ContextLengthError")
            continue
        name, _ = PEOPLE[r["id"]]
        data = json.loads(r["data"])
        assert set(data) == {"name", "city"} and r["error"] is None and 0 < r["confidence"] <= 1
        assert data["name"] == name  # each row's own text, through whichever actor took it
