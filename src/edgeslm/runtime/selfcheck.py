"""Engine self-check: a native crash in llama.cpp never reaches the app.

Before a combination of (llama.cpp build, CPU, load options) is used for the first time, a child
process loads the model with those options, decodes a multi-token prompt and a few tokens. If the
child dies (a signal, an abort, a hang), the next safer options are tried in order:

1. the requested options (CPU "extra" buffer types on: weight repacking for AMX and friends);
2. CPU extra buffer types off;
3. with GPU layers: half the layers, then none (CPU only).

The first that works is used, remembered under the cache folder (``selfcheck/``, keyed by the
build's files, the CPU's model and flags, and the requested options, so a new build or another CPU
checks again), and a warning says what was turned off and why. A combination known to be bad
(this build has AMX kernels and the CPU has AMX: llama.cpp #20824) starts at the safe options.

``safe_mode=False`` on :func:`edgeslm.load`, or ``EDGESLM_SAFE_MODE=0``, skips all of this and
uses the requested options as they are.

Model files that are not from the verified catalog are untrusted: each one is opened in a child
first, once per content hash, so a file that trips one of llama.cpp's asserts raises
:class:`~edgeslm.CorruptModelError` instead of killing the process.

``EDGESLM_TEST_CRASH`` is a test-only switch (fault injection): a comma-separated list of
``extra_bufts``, ``gpu``, ``always`` or ``hang``; the child then dies with SIGSEGV (or hangs)
when its options match.

Over ~450 lines on purpose: the child process, the record it leaves and the ladder of load options
it walks are one protocol.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._errors import CorruptModelError, EdgeSLMError, EngineCrashError

__all__ = [
    "ENV_SAFE_MODE",
    "ENV_TEST_CRASH",
    "Attempt",
    "EngineCheck",
    "EngineCrashError",
    "EngineOptions",
    "build_identity",
    "ensure_engine",
    "gpu_fallback",
    "known_checks",
    "ladder",
    "safe_mode_default",
]

ENV_SAFE_MODE = "EDGESLM_SAFE_MODE"
ENV_TEST_CRASH = "EDGESLM_TEST_CRASH"
ENV_TIMEOUT = "EDGESLM_SELFCHECK_TIMEOUT"
PROBE_TIMEOUT_S = 300.0
RECORD_VERSION = 1
_log = logging.getLogger("edgeslm")


@dataclass(frozen=True)
class EngineOptions:
    """How llama.cpp is asked to load a model."""

    n_gpu_layers: int = 0
    extra_bufts: bool = True

    def describe(self) -> str:
        layers = "all" if self.n_gpu_layers >= 999 else str(self.n_gpu_layers)
        return f"gpu_layers={layers}, cpu_extra_buffers={'on' if self.extra_bufts else 'off'}"


@dataclass
class Attempt:
    """One child run: the options, whether it worked, and what happened."""

    options: EngineOptions
    ok: bool
    outcome: str
    seconds: float
    detail: str = ""


@dataclass
class EngineCheck:
    """The self-check's answer for one (build, CPU, requested options)."""

    key: str
    build: dict[str, Any]
    cpu: str
    requested: EngineOptions
    chosen: EngineOptions | None
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    checked_at: float = 0.0
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.chosen is not None

    def stale(self, now: float | None = None) -> bool:
        """A choice made because a child *timed out* is checked again after
        :data:`TIMEOUT_MEMORY_S`: a machine busy at the first check looks like a hang, and must not
        cost the fast options for good. Crashes are remembered for good."""
        timed_out = any(not a.ok and a.outcome.startswith("timed out") for a in self.attempts)
        return timed_out and (now if now is not None else time.time()) - self.checked_at > TIMEOUT_MEMORY_S

    @property
    def degraded(self) -> bool:
        """The options in use are safer than those asked for."""
        return self.chosen is not None and self.chosen != self.requested

    def summary(self) -> str:
        if self.chosen is None:
            return "every option crashed: " + "; ".join(f"{a.options.describe()}: {a.outcome}" for a in self.attempts)
        head = f"works with {self.chosen.describe()}"
        if self.degraded:
            head += f" (asked for {self.requested.describe()})"
        return head

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("from_cache")
        d["version"] = RECORD_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineCheck:
        def opts(x: Any) -> EngineOptions | None:
            return EngineOptions(int(x["n_gpu_layers"]), bool(x["extra_bufts"])) if isinstance(x, dict) else None

        return cls(
            key=str(d["key"]), build=dict(d.get("build") or {}), cpu=str(d.get("cpu", "")),
            requested=opts(d["requested"]) or EngineOptions(), chosen=opts(d.get("chosen")),
            attempts=[Attempt(opts(a["options"]) or EngineOptions(), bool(a["ok"]), str(a["outcome"]),
                              float(a["seconds"]), str(a.get("detail", ""))) for a in d.get("attempts", [])],
            notes=[str(n) for n in d.get("notes", [])], seconds=float(d.get("seconds", 0.0)),
            checked_at=float(d.get("checked_at", 0.0)), from_cache=True,
        )


# ------------------------------------------------------------------------------ identity and keys


#: How long a choice caused by a timed-out child is remembered before it is checked again.
TIMEOUT_MEMORY_S = 24 * 3600.0


def safe_mode_default() -> bool:
    """Safe mode is on unless ``EDGESLM_SAFE_MODE`` says 0/off/false/no."""
    return os.environ.get(ENV_SAFE_MODE, "1").strip().lower() not in {"0", "off", "false", "no"}


def build_identity() -> dict[str, Any]:
    """What identifies the installed llama.cpp build: the package version and its native libraries
    (name, size, modification time). Read from the file system, without loading the engine."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    libs: list[list[Any]] = []
    spec = importlib.util.find_spec("llama_cpp")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for p in sorted(Path(root).rglob("*")):
            if p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name:
                st = p.stat()
                libs.append([p.name, st.st_size, st.st_mtime_ns])
    return {"llama_cpp_python": version, "libs": libs}


def _key(build: dict[str, Any], cpu: str, requested: EngineOptions) -> str:
    blob = json.dumps([RECORD_VERSION, build, cpu, asdict(requested)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _dir() -> Path:
    from ..store.paths import cache_home

    d = cache_home() / "selfcheck"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def known_checks() -> list[EngineCheck]:
    """Every remembered engine check (newest first), for ``edgeslm doctor``."""
    out = []
    for p in _dir().glob("engine-*.json"):
        d = _read_json(p)
        if d and d.get("version") == RECORD_VERSION:
            try:
                out.append(EngineCheck.from_json(d))
            except (KeyError, TypeError, ValueError):
                continue
    return sorted(out, key=lambda c: -c.checked_at)


# ------------------------------------------------------------------------------ the ladder


def amx_known_bad(system_info: str, cpu_features: tuple[str, ...] | set[str]) -> bool:
    """This build has llama.cpp's AMX kernels and the CPU has AMX: llama.cpp #20824 crashes."""
    return "AMX_INT8 = 1" in system_info and bool({"amx_int8", "amx_tile"} & set(cpu_features))


def ladder(requested: EngineOptions, *, skip_extra_bufts: str | None = None) -> tuple[list[EngineOptions], list[str]]:
    """The options to try, safest last, and notes on any skipped. ``skip_extra_bufts`` is the reason
    the requested extra buffer types are known to crash (then they are not tried)."""
    steps: list[EngineOptions] = []
    notes: list[str] = []
    if requested.extra_bufts and skip_extra_bufts:
        notes.append(f"CPU extra buffer types not tried: {skip_extra_bufts}")
    else:
        steps.append(requested)
    layers = requested.n_gpu_layers
    steps.append(EngineOptions(layers, False))
    if layers > 0:
        half = layers // 2 if layers < 999 else 16
        if 0 < half < layers:
            steps.append(EngineOptions(half, False))
        steps.append(EngineOptions(0, False))
    seen: list[EngineOptions] = []
    for s in steps:
        if s not in seen:
            seen.append(s)
    return seen, notes


# ------------------------------------------------------------------------------ the child


def _timeout() -> float:
    try:
        return float(os.environ.get(ENV_TIMEOUT, PROBE_TIMEOUT_S))
    except ValueError:
        return PROBE_TIMEOUT_S


def _outcome(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc == 134:
        return "aborted (SIGABRT, exit 134)"
    return f"exit code {rc}"


def probe_python() -> str | None:
    """The interpreter that runs the child: ``EDGESLM_PROBE_PYTHON``, else this one. A frozen app
    (PyInstaller and the like) has no interpreter to start: None, and the known-bad rules alone apply."""
    override = os.environ.get("EDGESLM_PROBE_PYTHON")
    if override:
        return override
    return None if getattr(sys, "frozen", False) else sys.executable


def probe(path: str | os.PathLike[str], options: EngineOptions, *, n_threads: int | None = None,
          timeout: float | None = None) -> Attempt:
    """Load *path* with *options* in a child process, decode a multi-token prompt and a few tokens."""
    req = {"path": os.fspath(path), "options": asdict(options), "n_threads": n_threads}
    t0 = time.perf_counter()
    limit = _timeout() if timeout is None else timeout
    python = probe_python()
    if python is None:
        return Attempt(options, True, "not checked (frozen app: set EDGESLM_PROBE_PYTHON to check)", 0.0)
    try:
        proc = subprocess.run(
            [python, "-m", "edgeslm.runtime._probe", json.dumps(req)],
            capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-600:]
        return Attempt(options, False, f"timed out after {limit:.0f} s", time.perf_counter() - t0,
                       tail.decode("utf-8", "replace") if isinstance(tail, bytes) else str(tail))
    dt = time.perf_counter() - t0
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    try:
        reply = json.loads(last)
    except ValueError:
        reply = None
    if proc.returncode == 0 and isinstance(reply, dict) and reply.get("ok"):
        return Attempt(options, True, "ok", dt, f"{reply.get('prompt_tokens')} prompt tokens decoded")
    if isinstance(reply, dict) and reply.get("error"):
        return Attempt(options, False, f"error: {reply['error']}"[:300], dt, proc.stderr[-600:])
    return Attempt(options, False, _outcome(proc.returncode), dt, proc.stderr[-600:])


# ------------------------------------------------------------------------------ engine check


def ensure_engine(
    path: str | os.PathLike[str],
    requested: EngineOptions,
    *,
    cpu_features: tuple[str, ...] = (),
    system_info: str = "",
    n_threads: int | None = None,
    reference: Callable[[], Path | None] | None = None,
) -> EngineCheck:
    """The options to load with on this build and CPU: remembered, or found by the ladder now.

    Raises :class:`EngineCrashError` when every option crashes (and the model file is not to
    blame), :class:`~edgeslm.CorruptModelError` when every option crashes with this file but the
    engine works with the *reference* model.
    """
    from .hardware import cpu_identity

    build = build_identity()
    cpu = cpu_identity()
    key = _key(build, cpu, requested)
    record_path = _dir() / f"engine-{key}.json"
    d = _read_json(record_path)
    if d and d.get("version") == RECORD_VERSION:
        try:
            check = EngineCheck.from_json(d)
            if check.ok and not check.stale():
                return check
        except (KeyError, TypeError, ValueError):
            pass
    bad = "this llama.cpp build has AMX kernels and this CPU has AMX (llama.cpp #20824)" if amx_known_bad(
        system_info, cpu_features) else None
    steps, notes = ladder(requested, skip_extra_bufts=bad)
    check = EngineCheck(key=key, build=build, cpu=cpu, requested=requested, chosen=None, notes=notes,
                        checked_at=time.time())
    t0 = time.perf_counter()
    for opts in steps:
        attempt = probe(path, opts, n_threads=n_threads)
        check.attempts.append(attempt)
        if attempt.ok:
            check.chosen = opts
            break
    check.seconds = time.perf_counter() - t0
    if check.chosen is None and reference is not None:
        ref = reference()
        if ref is not None and Path(ref).resolve() != Path(path).resolve():
            for opts in steps:
                attempt = probe(ref, opts, n_threads=n_threads)
                if attempt.ok:
                    check.chosen = opts
                    check.notes.append(f"checked with the reference model {Path(ref).name}: {path} crashed")
                    check.seconds = time.perf_counter() - t0
                    _write_json(record_path, check.to_json())
                    raise _file_crash(path, check.attempts)
    if check.chosen is None:
        raise EngineCrashError(
            f"llama.cpp crashed with every load option on this machine. Build: llama-cpp-python "
            f"{build.get('llama_cpp_python')}; CPU: {cpu.split('|')[1] if '|' in cpu else cpu}; features: "
            f"{', '.join(cpu_features) or 'unknown'}; engine: {system_info or 'unknown'}; tried: "
            + "; ".join(f"{a.options.describe()} -> {a.outcome}" for a in check.attempts),
            hint="report it on the edgeslm issue tracker with the output of `edgeslm doctor`; meanwhile try "
            "another llama-cpp-python build (a model file that crashes every option may also be damaged: "
            "`edgeslm verify`)",
        )
    _write_json(record_path, check.to_json())
    if check.degraded:
        failed = [a for a in check.attempts if not a.ok]
        why = "; ".join(f"{a.options.describe()} {a.outcome}" for a in failed) or (notes[0] if notes else "")
        _log.warning(
            "edgeslm: llama.cpp runs here with %s instead of %s: %s. This check ran once (%.1f s) and is "
            "remembered for this build and CPU; load(..., safe_mode=False) or %s=0 forces the requested options.",
            check.chosen.describe(), requested.describe(), why, check.seconds, ENV_SAFE_MODE,
        )
    return check


def _file_crash(path: str | os.PathLike[str], attempts: list[Attempt]) -> CorruptModelError:
    return CorruptModelError(
        f"{path} crashed llama.cpp in a child process ({attempts[-1].outcome if attempts else 'no result'}); "
        f"the app was not affected. The file says: {_header_summary(path)}",
        hint="the file is damaged or hostile, or made for another llama.cpp version: download it again, or "
        "use a catalog model (`edgeslm list`)",
    )


def _header_summary(path: str | os.PathLike[str]) -> str:
    try:
        from ..backends.gguf_file import validate_gguf

        info = validate_gguf(path)
    except EdgeSLMError as exc:
        return f"(header unreadable: {exc.message})"
    meta = info.metadata
    arch = info.architecture or "?"
    keys = ("block_count", "context_length", "embedding_length", "expert_count", "attention.head_count",
            "attention.head_count_kv")
    parts = [f"architecture={arch}", f"tensors={info.tensor_count}"]
    parts += [f"{k}={meta[f'{arch}.{k}']}" for k in keys if f"{arch}.{k}" in meta]
    return ", ".join(parts)


# ------------------------------------------------------------------------------ untrusted files


def _content_hash(path: Path) -> str:
    """SHA-256 of the file, remembered by (path, size, mtime) so it is computed once."""
    st = path.stat()
    index_path = _dir() / "hashes.json"
    index = _read_json(index_path) or {}
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if stamp in index:
        return str(index[stamp])
    from ..store.files import sha256_file

    digest = sha256_file(path)
    index = _read_json(index_path) or {}
    index[stamp] = digest
    _write_json(index_path, index)
    return digest


def ensure_file(path: str | os.PathLike[str], options: EngineOptions, check: EngineCheck, *,
                n_threads: int | None = None) -> None:
    """Open an untrusted model file in a child once per content hash (and build/CPU); raise
    :class:`~edgeslm.CorruptModelError` if it crashes the engine with options that work otherwise."""
    p = Path(path)
    digest = _content_hash(p)
    record = _dir() / f"file-{digest[:32]}-{check.key[:16]}.json"
    if record.is_file():
        return
    proven = any(a.ok and a.options == options for a in check.attempts) and not check.from_cache
    if not proven:
        attempt = probe(p, options, n_threads=n_threads)
        if not attempt.ok:
            raise _file_crash(p, [attempt])
    _write_json(record, {"sha256": digest, "engine": check.key, "path": str(p), "checked_at": time.time()})


# ------------------------------------------------------------------------------ GPU memory at load

T = TypeVar("T")


def gpu_fallback(n_gpu_layers: int, n_layers: int | None = None) -> list[int]:
    """GPU layer counts to try when loading fails for lack of GPU memory: as asked, then 3/4, 1/2 and
    1/4 of the layers, then none (CPU)."""
    steps = [n_gpu_layers]
    if n_gpu_layers > 0:
        base = min(n_gpu_layers, n_layers + 1 if n_layers else n_gpu_layers)
        steps += [int(base * f) for f in (0.75, 0.5, 0.25)] + [0]
    out: list[int] = []
    for s in steps:
        if s not in out and (s < n_gpu_layers or not out):
            out.append(s)
    return out


def open_with_gpu_fallback(open_fn: Callable[[int], T], n_gpu_layers: int,
                           n_layers: int | None = None) -> tuple[T, int]:
    """Call ``open_fn(layers)`` with fewer GPU layers each time it fails (out of GPU memory), then
    on the CPU; warn when the layers were reduced. Returns the engine and the layers it got."""
    last: Exception | None = None
    for layers in gpu_fallback(n_gpu_layers, n_layers):
        try:
            engine = open_fn(layers)
        except EdgeSLMError as exc:
            if n_gpu_layers == 0:
                raise
            last = exc
            continue
        if layers != n_gpu_layers:
            _log.warning("edgeslm: loading with %d GPU layers failed (%s); loaded with %d GPU layers instead",
                         n_gpu_layers, getattr(last, "message", last), layers)
        return engine, layers
    assert last is not None
    raise last
