"""``AsyncModel``: a :class:`~edgeslm.Model` for asyncio apps (and for ``edgeslm serve``).

Every call runs in a worker thread, so the event loop never waits for the engine. Calls take
turns in the order they were made (first come, first served): only the call whose turn it is
holds a thread, the others wait on the event loop. A stream runs in a thread of its own (the
model's lock belongs to the thread that opened the stream) and hands its chunks to the loop;
closing it (``await stream.aclose()``, leaving ``async with``, or dropping it) stops generation
after the token being computed, and the next call's turn starts as soon as the engine is free,
even if the stream's consumer has not read what was already made.

    am = edgeslm.AsyncModel(edgeslm.load("smollm2-135m"))
    r = await am.chat([{"role": "user", "content": "hi"}], max_tokens=32)
    stream = await am.chat([{"role": "user", "content": "hi"}], stream=True)
    async for chunk in stream:
        print(chunk.delta, end="")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from .._errors import ModelClosedError
from .model import Message, Model
from .results import ChatChunk, ChatResult, Extraction

__all__ = ["AsyncChatStream", "AsyncModel"]


class AsyncModel:
    """Awaitable calls on one :class:`~edgeslm.Model` (see the module docstring). The wrapped model
    stays usable from threads; its lock still makes calls one at a time."""

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"AsyncModel wraps an edgeslm.Model, not {type(model).__name__}; "
                            "use `await AsyncModel.load(...)` to load one")
        self.model = model
        self._turn = asyncio.Lock()  # FIFO: asyncio wakes its waiters in the order they came
        self._waiting = 0
        self._refusal: Exception | None = None
        self._feeds: dict[str | None, Any] = {}  # adapter -> the feed of batched calls running now
        self._next_feeds: dict[str | None, Any] = {}  # adapter -> the feed waiting for its turn
        self._leaders: set[asyncio.Task[None]] = set()
        self._batches = {"batches": 0, "calls": 0, "most_at_once": 0}

    @classmethod
    async def load(cls, model: Any, **load_kwargs: Any) -> AsyncModel:
        """``edgeslm.load(model, **load_kwargs)`` in a worker thread."""
        from .load import load

        return cls(await asyncio.to_thread(load, model, **load_kwargs))

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def waiting(self) -> int:
        """Calls waiting for their turn (not counting the one running)."""
        return self._waiting

    def refuse_new(self, error: Exception) -> None:
        """From now on, calls that have not started yet (waiting included) raise *error* instead
        (a server draining before it stops)."""
        self._refusal = error

    async def _acquire(self) -> None:
        if self._refusal is not None:
            raise self._refusal
        self._waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        if self._refusal is not None:
            self._turn.release()
            raise self._refusal

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await self._acquire()
        try:
            fut = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        except BaseException:
            self._turn.release()
            raise
        fut.add_done_callback(self._end_turn)  # the turn ends when the thread's work does
        # a cancelled caller stops waiting, but the engine call runs to its end (threads cannot be
        # interrupted); the next turn starts only then
        return await asyncio.shield(fut)

    def _end_turn(self, fut: asyncio.Future[Any]) -> None:
        self._turn.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that stopped waiting leaves no "never retrieved" warning

    async def _stream(self, start: Callable[[], Iterator[ChatChunk]]) -> AsyncChatStream:
        await self._acquire()
        s = AsyncChatStream(start, self._turn.release)
        await s._started()
        return s

    # ------------------------------------------------------------------ calls
    async def chat(self, messages: Sequence[Message], *, stream: bool = False, **kwargs: Any) -> Any:
        """:meth:`Model.chat`: a :class:`ChatResult`, or with ``stream=True`` an
        :class:`AsyncChatStream` (errors in the request are raised here, before the first chunk)."""
        if stream:
            return await self._stream(lambda: self.model.chat(messages, stream=True, **kwargs))
        result: ChatResult = await self._call(self.model.chat, messages, **kwargs)
        return result

    async def generate(self, prompt: str, *, stream: bool = False, **kwargs: Any) -> Any:
        """:meth:`Model.generate`, awaitable (``stream=True``: an :class:`AsyncChatStream`)."""
        if stream:
            return await self._stream(lambda: self.model.generate(prompt, stream=True, **kwargs))
        return await self._call(self.model.generate, prompt, **kwargs)

    async def extract(self, text: str, schema: Any, **kwargs: Any) -> Extraction:
        """:meth:`Model.extract`, awaitable."""
        result: Extraction = await self._call(self.model.extract, text, schema, **kwargs)
        return result

    async def extract_many(self, texts: Iterable[str], schema: Any, **kwargs: Any) -> list[Any]:
        """:meth:`Model.extract_many`, awaitable (one turn for the whole batch)."""
        texts = list(texts)
        return await self._call(self.model.extract_many, texts, schema, **kwargs)

    async def call_batched(self, fn: Callable[[Model], Any], *, adapter: str | None = None,
                           batch_size: int | None = None) -> Any:
        """Run ``fn(m)`` in a worker thread, where *m* is the model (with *adapter*) bound to one
        sequence of a batch shared with the other ``call_batched`` calls made meanwhile: calls that
        arrive together, or while such a batch runs, decode together (one engine call per round for
        every live sequence, as :meth:`Model.extract_many` does), and take one turn among the other
        calls. ``fn`` must use only *m*. ``batch_size``: the sequences at most (``None``: from the
        engine's probed decode gain, :func:`~edgeslm.runtime.batching.chosen_batch_size`; where batching
        does not pay, the calls run one at a time in the turn). See :mod:`edgeslm.api.feed`."""
        from .feed import Job, JobFeed

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fut.add_done_callback(_retrieved)

        def settle(result: Any, error: BaseException | None) -> None:  # in a worker thread
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop is closed: nobody waits
                pass

        job = Job(fn, settle)
        live = self._feeds.get(adapter)
        if live is None or not live.offer(job):
            if self._refusal is not None:
                raise self._refusal
            feed = self._next_feeds.get(adapter)
            if feed is None or not feed.offer(job):
                feed = JobFeed(should_yield=lambda: self._waiting > 0)
                feed.offer(job)
                self._next_feeds[adapter] = feed
                task = asyncio.ensure_future(self._lead(feed, adapter, batch_size))
                self._leaders.add(task)
                task.add_done_callback(self._leaders.discard)
        return await asyncio.shield(fut)

    async def _lead(self, feed: Any, adapter: str | None, batch_size: int | None) -> None:
        """Wait for the turn, then run *feed* in a worker thread; the turn ends when it does."""
        from .feed import run_feed

        try:
            await self._acquire()
        except BaseException as exc:  # refused (shutting down) or cancelled
            if self._next_feeds.get(adapter) is feed:
                del self._next_feeds[adapter]
            feed.close(exc if isinstance(exc, Exception) else ModelClosedError("the model is closing"))
            return
        if self._next_feeds.get(adapter) is feed:
            del self._next_feeds[adapter]
        self._feeds[adapter] = feed

        def run() -> None:
            try:
                run_feed(self.model._using(adapter), feed, batch_size)
            except BaseException as exc:
                feed.close(exc)  # settles what run_feed could not (an unknown adapter)

        def ended(_: asyncio.Future[Any]) -> None:
            if self._feeds.get(adapter) is feed:
                del self._feeds[adapter]
            b = self._batches
            b["batches"] += 1
            b["calls"] += feed.ran
            b["most_at_once"] = max(b["most_at_once"], feed.most_at_once)
            self._turn.release()

        fut = asyncio.ensure_future(asyncio.to_thread(run))
        fut.add_done_callback(ended)
        await asyncio.shield(fut)

    @property
    def batch_stats(self) -> dict[str, int]:
        """Turns taken by batched calls (``batches``), the calls they ran and the most that ran at
        the same time (``most_at_once``: above 1 when calls shared the engine's batch); the turns
        running now included."""
        out = dict(self._batches)
        for feed in list(self._feeds.values()):
            out["batches"] += 1
            out["calls"] += feed.ran
            out["most_at_once"] = max(out["most_at_once"], feed.most_at_once)
        return out

    async def run_tools(self, messages: Sequence[Message], tools: Sequence[Any], **kwargs: Any) -> Any:
        """:meth:`Model.run_tools`, awaitable (the tools run in the worker thread)."""
        return await self._call(self.model.run_tools, messages, tools, **kwargs)

    async def call(self, fn: Callable[[Model], Any]) -> Any:
        """Run ``fn(model)`` in a worker thread in its turn (for calls not wrapped here)."""
        return await self._call(fn, self.model)

    async def aclose(self) -> None:
        """Close the model once the calls before this one are done."""
        await self._call(self.model.close)

    async def __aenter__(self) -> AsyncModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<edgeslm.AsyncModel {self.model!r}>"


_END = object()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a caller that stopped waiting leaves no "never retrieved" warning


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class AsyncChatStream(AsyncIterator[ChatChunk]):
    """Async iterator of :class:`ChatChunk` from ``await AsyncModel.chat(..., stream=True)``.

    The chunks are made in a thread of its own; ``aclose()`` (or ``async with``, or dropping the
    stream) stops generation after the current token and releases the model."""

    def __init__(self, start: Callable[[], Iterator[ChatChunk]], on_done: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._done = asyncio.Event()
        self._on_done = on_done
        self._first: tuple[str, Any] | None = None
        self._cancel_error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, args=(start,), name="edgeslm-stream", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the producing thread
    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self._stop.set()

    def _produce(self, start: Callable[[], Iterator[ChatChunk]]) -> None:
        stream: Any = None
        try:
            stream = start()
            while not self._stop.is_set():
                try:
                    chunk = next(stream)
                except StopIteration:
                    break
                self._put(("chunk", chunk))
            err = self._cancel_error
            self._put(("error", err) if err is not None else ("end", None))
        except BaseException as exc:
            self._put(("error", exc))
        finally:
            if stream is not None:
                try:
                    stream.close()  # releases the model's lock (a no-op when it ended by itself)
                except Exception:
                    pass
            try:
                self._loop.call_soon_threadsafe(self._finished)
            except RuntimeError:  # the loop is gone (interpreter shutdown)
                pass

    def _finished(self) -> None:
        self._done.set()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()

    # ------------------------------------------------------------------ the consumer (event loop)
    async def _started(self) -> None:
        """Wait for the first chunk; raise the stream's error if it fails before one."""
        item = await self._queue.get()
        if item[0] == "error":
            await self._done.wait()
            raise item[1]
        self._first = item

    @property
    def done(self) -> bool:
        """Whether the producing thread has finished (the model is free)."""
        return self._done.is_set()

    async def __anext__(self) -> ChatChunk:
        if self._first is not None:
            item, self._first = self._first, None
        else:
            item = await self._queue.get()
        kind, value = item
        if kind == "chunk":
            return value  # type: ignore[no-any-return]
        self._queue.put_nowait(item)  # the end stays the end for later calls
        if kind == "error":
            raise value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop generating and wait until the model is released."""
        self._stop.set()
        await self._done.wait()

    def cancel(self, error: BaseException) -> None:
        """Stop generating; the consumer gets *error* after the chunks already made (a server
        ending its streams with a clean error when it stops)."""
        self._cancel_error = error
        self._stop.set()

    def close_soon(self) -> None:
        """Ask the thread to stop (without waiting): usable from sync code and finalizers."""
        self._stop.set()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._stop.set()
