"""Many extractions in one call: ``Model.extract_many`` and ``Model.extract_iter``.

Every item gets what ``extract`` gives (validation, retries, confidence, usage, escalation when
configured); an item that fails (a text longer than the context, no valid output) is an
:class:`~edgeslm.EdgeSLMError` in its slot, so one bad document never loses the batch. The
conversation of every item shares its whole prefix (instructions, schema, examples), which the KV
cache keeps between items: only each document's own tokens are evaluated.

Items run one after another in the model's single sequence. Decoding several sequences per step
(the backend protocol's ``eval_many``) is not used here yet: see CHANGELOG.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .._errors import EdgeSLMError, InvalidRequestError, ModelClosedError
from .results import Extraction

__all__ = ["extract_iter"]

Result = Extraction | EdgeSLMError


def _texts(texts: Iterable[Any]) -> Iterable[Any]:
    if isinstance(texts, (str, bytes)):
        raise InvalidRequestError("texts must be a list (or iterable) of strings, not one string",
                                  hint="pass [text] for a single document, or use extract()")
    return texts


def extract_iter(
    model: Any, texts: Iterable[Any], schema: Any, *, progress: bool = False, total: int | None = None,
    **extract_kwargs: Any,
) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, Extraction or EdgeSLMError)`` for each of *texts* as it finishes."""
    from .extract import prepare_schema

    prepare_schema(schema)  # a schema that cannot be served fails the whole call, before any work
    items = _texts(texts)
    if total is None and isinstance(items, Sequence):
        total = len(items)
    bar = _Progress(total) if progress else None
    try:
        for i, text in enumerate(items):
            result: Result
            try:
                if not isinstance(text, str):
                    raise InvalidRequestError(f"texts[{i}] is a {type(text).__name__}, not a string",
                                              hint="pass the documents as strings")
                result = model.extract(text, schema, **extract_kwargs)
            except ModelClosedError:
                raise
            except EdgeSLMError as exc:
                result = exc
            if bar is not None:
                bar.advance(result)
            yield i, result
    finally:
        if bar is not None:
            bar.close()


class _Progress:
    """A rich progress bar: items done, valid, items/s."""

    def __init__(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]} items/s, {task.fields[failed]} failed"),
                           TimeElapsedColumn(), transient=False, console=Console(stderr=True))
        self._task = self._p.add_task("extract", total=total, rate="-", failed=0)
        self._t0 = time.perf_counter()
        self._n = 0
        self._failed = 0
        self._p.start()

    def advance(self, result: Result) -> None:
        self._n += 1
        self._failed += isinstance(result, EdgeSLMError)
        rate = self._n / max(1e-9, time.perf_counter() - self._t0)
        self._p.update(self._task, advance=1, rate=f"{rate:.2f}", failed=self._failed)

    def close(self) -> None:
        self._p.stop()
