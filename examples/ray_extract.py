"""Extraction over a JSON Lines corpus with Ray Data, when one machine is not enough.

Each Ray actor loads one edgeslm model and runs ``extract_many`` on the batches Ray hands it
(``map_batches`` with an actor pool); Ray schedules the actors over the machines of the cluster.
edgeslm adds no distribution layer of its own.

    pip install "edgeslm[tiny,ray]"
    python examples/ray_extract.py corpus.jsonl schema.json out/ --workers 2

The corpus has one JSON object per line with a ``text`` field (other fields are passed through,
e.g. an ``id``). The output folder gets JSON Lines files with each input row plus ``data`` (the
validated object as JSON, or null), ``error`` (the error's class and message, or null) and
``confidence``. Run it against a cluster with ``RAY_ADDRESS=ray://head:10001``; give each actor
the threads it may use (``--threads``) and each machine as many actors as it has room for
(one model each). Leave Ray a CPU beyond the actors' for reading and writing the data: when the
actors hold every CPU, Ray Data waits for one that never frees.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


class Extractor:
    """One model per Ray actor: ``extract_many`` on each batch of rows."""

    def __init__(self, model: str, schema: dict[str, Any], n_threads: int, batch_size: int | None) -> None:
        import edgeslm

        self.model = edgeslm.load(model, n_threads=n_threads)
        self.schema = schema
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import edgeslm

        texts = [str(t) for t in batch["text"]]
        results = self.model.extract_many(texts, self.schema, batch_size=self.batch_size)
        ok = [isinstance(r, edgeslm.Extraction) for r in results]
        return {
            **{k: list(v) for k, v in batch.items()},
            "data": [json.dumps(r.data) if good else None for r, good in zip(results, ok, strict=True)],
            "error": [None if good else f"{type(r).__name__}: {r}" for r, good in zip(results, ok, strict=True)],
            "confidence": [r.confidence if good else None for r, good in zip(results, ok, strict=True)],
        }


def run(corpus: str, schema: dict[str, Any], out_dir: str, *, model: str = "smollm2-135m", workers: int = 2,
        n_threads: int = 1, rows_per_batch: int = 16, batch_size: int | None = None) -> None:
    """Read *corpus*, extract with *workers* actors (one model each), write JSON Lines to *out_dir*."""
    import ray

    ds = ray.data.read_json(corpus)
    ds = ds.map_batches(
        Extractor,
        fn_constructor_args=(model, schema, n_threads, batch_size),
        batch_size=rows_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=n_threads,
    )
    ds.write_json(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="JSON Lines, one object with a 'text' field per line")
    ap.add_argument("schema", help="a JSON Schema file")
    ap.add_argument("out", help="output folder (JSON Lines files)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--workers", type=int, default=2, help="actors, one model each")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per actor")
    ap.add_argument("--rows-per-batch", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=None, help="sequences decoded together per actor")
    args = ap.parse_args()
    import ray

    ray.init()
    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    run(args.corpus, schema, args.out, model=args.model, workers=args.workers, n_threads=args.threads,
        rows_per_batch=args.rows_per_batch, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
