"""The backend registry: which engines exist, what each opens, and how to open it.

Every engine is one module that implements :class:`~edgeslm.backends.base.Backend` and describes
itself with a :class:`BackendSpec`. ``edgeslm.load``, the planner, the catalog and the CLI ask this
registry; none of them names an engine: what files an engine opens, how their headers are
checked, the model shape the planner sizes memory from, the engine's ``edgeslm doctor`` row and the
CLI's format choices all come from its spec. The built-in engines (llama.cpp, ONNX Runtime GenAI) are
registered here by module name and imported only when first asked for (``import edgeslm`` imports
no engine). Another engine registers itself with :func:`register_backend`, or from an installed
package through the ``edgeslm.backends`` entry-point group (the entry point names a
:class:`BackendSpec`)::

    register_backend(BackendSpec(
        name="mlx", formats=("mlx",), devices=("metal",), describe="an MLX model folder",
        opens=lambda p: (p / "config.json").is_file() and any(p.glob("*.safetensors")),
        open=lambda path, req: MlxBackend(path, n_ctx=req.n_ctx),
    ))
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import BackendUnavailableError, ModelNotFoundError

if TYPE_CHECKING:
    from .base import Backend

__all__ = [
    "BackendSpec", "OpenRequest", "backend_for_format", "backend_for_name", "backend_for_path", "backend_names",
    "formats", "get_backend", "package_version", "register_backend", "unregister_backend",
]


@dataclass
class OpenRequest:
    """What the planner decided, handed to :attr:`BackendSpec.open`."""

    n_ctx: int
    device: str = "cpu"
    n_gpu_layers: int = 0
    n_threads: int | None = None
    safe_mode: bool | None = None
    """``None``: the default (on unless ``EDGESLM_SAFE_MODE=0``); engines that can crash the process
    check themselves in a child first (see :mod:`edgeslm.runtime.selfcheck`)."""
    trusted: bool = False
    """Whether the file comes from the catalog (verified by SHA-256) rather than from the user."""
    plan: Any = None
    """The :class:`edgeslm.Plan`; an engine may append to ``plan.why`` what it changed."""
    batch_invariant: bool = False
    """Logits of a token independent of what else one engine call evaluates (see
    :class:`~edgeslm.backends.llamacpp.LlamaCppBackend`); engines that batch nothing ignore it."""


@dataclass(frozen=True)
class BackendSpec:
    """One engine: what it opens and how."""

    name: str
    """The name users pass as ``load(..., backend=name)``."""
    formats: tuple[str, ...]
    """Catalog formats it serves (a catalog variant's ``format``), e.g. ``("gguf",)``."""
    devices: tuple[str, ...]
    """Devices it can run on: ``cpu``, ``cuda``, ``metal``, ``gpu``..."""
    describe: str
    """What it opens, for messages: ``"a .gguf file"``."""
    opens: Callable[[Path], bool]
    """Whether *path* is something this engine opens (cheap: no engine import)."""
    open: Callable[[Path, OpenRequest], Backend]
    """Open *path* as planned; raise an :class:`~edgeslm.EdgeSLMError` when it cannot."""
    root: Callable[[Path], Path] = field(default=lambda p: p)
    """The path to open for one the user gave (an ONNX folder for its ``genai_config.json``)."""
    validate: Callable[[Path], Any] | None = None
    """Header checks before the engine sees the file (model files are untrusted input); returns
    the parsed header (``GGUFInfo``...) the planner reads the model's shape from."""
    offloads_layers: bool = False
    """Whether it can split layers between GPU and CPU (the planner then picks ``n_gpu_layers``)."""
    gpu_supported: Callable[[], bool] | None = None
    """Whether the installed build of the engine can use a GPU at all."""
    requires: tuple[str, ...] = ()
    """Python modules it needs (checked without importing them, for ``edgeslm doctor``)."""
    install_hint: str = ""
    """How to install what it needs."""
    suffixes: tuple[str, ...] = ()
    """File-name endings of the single files it opens (``(".gguf",)``): how a downloaded file or an
    ``hf://`` reference is matched to its engine before it is on disk."""
    shape: Callable[[Any, int], Any] | None = None
    """The model's shape for the planner (a :class:`~edgeslm.runtime.planner.ModelShape`) from what
    :attr:`validate` returned and the size on disk; ``None`` (or no function): sized from the file size."""
    doctor: Callable[[], dict[str, Any]] | None = None
    """The engine's row in ``edgeslm doctor``: ``package``, ``version``, ``summary`` (what it can use
    here, one line) or ``error``, plus any facts of its own (in ``--json``). Default: installed or not."""

    def doctor_row(self) -> dict[str, Any]:
        """:attr:`doctor`'s row, or one saying whether :attr:`requires` is installed."""
        if self.doctor is not None:
            try:
                return self.doctor()
            except Exception as exc:  # a broken engine must not break the doctor
                return {"package": self.name, "version": None, "error": f"{type(exc).__name__}: {exc}"}
        if self.available():
            return {"package": self.name, "version": None, "summary": f"installed; opens {self.describe}"}
        return {"package": self.name, "version": None, "error": f"not installed: {self.install_hint or '?'}"}

    def available(self) -> bool:
        """Whether the modules in :attr:`requires` are installed (none is imported)."""
        import importlib.util

        try:
            return all(importlib.util.find_spec(m) is not None for m in self.requires)
        except (ImportError, ValueError):
            return False


def package_version(dist: str) -> str | None:
    """The installed version of the distribution *dist* (``"llama_cpp_python"``), or ``None``; for the
    engines' doctor rows and the bench's record."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


_BUILTIN = ("edgeslm.backends.llamacpp", "edgeslm.backends.onnx")
_SPECS: dict[str, BackendSpec] = {}
_LOCK = threading.RLock()
_LOADED = False


def _ensure_loaded() -> None:
    """Register the built-in engines and those of installed plugins, once."""
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        for mod in _BUILTIN:
            spec = importlib.import_module(mod).SPEC  # the modules import their engine lazily
            _SPECS.setdefault(spec.name, spec)
        _load_plugins()
        _LOADED = True


def _load_plugins() -> None:
    if os.environ.get("EDGESLM_NO_PLUGINS"):
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group="edgeslm.backends"):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plugin must not break edgeslm
            import warnings

            warnings.warn(f"edgeslm backend plugin {ep.name!r} failed to load: {exc}", RuntimeWarning, stacklevel=3)
            continue
        if isinstance(spec, BackendSpec):
            _SPECS.setdefault(spec.name, spec)


def register_backend(spec: BackendSpec, *, replace: bool = False) -> None:
    """Make an engine available to ``load``, ``plan`` and the CLI."""
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"register_backend takes a BackendSpec, not {type(spec).__name__}")
    _ensure_loaded()
    with _LOCK:
        if spec.name in _SPECS and not replace:
            raise BackendUnavailableError(f"a backend named {spec.name!r} is already registered",
                                          hint="pass replace=True to replace it")
        _SPECS[spec.name] = spec


def unregister_backend(name: str) -> None:
    """Remove an engine (built-ins included); unknown names are ignored."""
    _ensure_loaded()
    with _LOCK:
        _SPECS.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """The registered engines, built-ins first."""
    _ensure_loaded()
    return tuple(_SPECS)


def get_backend(name: str) -> BackendSpec:
    """The engine called *name*."""
    _ensure_loaded()
    spec = _SPECS.get(name)
    if spec is None:
        raise BackendUnavailableError(f"unknown backend {name!r}", hint=f"use 'auto' or one of {backend_names()}")
    return spec


def backend_for_format(fmt: str) -> BackendSpec:
    """The engine that serves catalog format *fmt*."""
    _ensure_loaded()
    for spec in _SPECS.values():
        if fmt in spec.formats:
            return spec
    raise BackendUnavailableError(f"no backend serves the {fmt!r} format",
                                  hint=f"registered: {', '.join(f'{s.name} ({s.describe})' for s in _SPECS.values())}")


def formats() -> tuple[str, ...]:
    """Every format the registered engines serve (the CLI's ``--format`` choices)."""
    _ensure_loaded()
    return tuple(dict.fromkeys(f for s in _SPECS.values() for f in s.formats))


def backend_for_name(name: str) -> BackendSpec | None:
    """The engine whose single files end like *name* (``model.Q4_0.gguf``), or ``None``."""
    _ensure_loaded()
    low = name.lower()
    for spec in reversed(_SPECS.values()):
        if any(low.endswith(s.lower()) for s in spec.suffixes):
            return spec
    return None


def backend_for_path(path: Path, name: str = "auto") -> tuple[BackendSpec, Path]:
    """The engine for *path* (``name="auto"``: the first that opens it) and the path it opens."""
    _ensure_loaded()
    path = Path(path)
    if name != "auto":
        spec = get_backend(name)
        root = spec.root(path)
        if not spec.opens(root):
            others = [s.name for s in _SPECS.values() if s is not spec and s.opens(s.root(path))]
            raise BackendUnavailableError(
                f"{path} is not {spec.describe} (what the {spec.name} backend opens)",
                hint=f"use backend={others[0]!r}" if others else "use backend='auto'",
            )
        return spec, root
    for spec in reversed(_SPECS.values()):  # the latest registered first: built-ins are catch-alls
        root = spec.root(path)
        if spec.opens(root):
            return spec, root
    raise ModelNotFoundError(
        f"no backend opens {path}",
        hint="give " + " or ".join(s.describe for s in _SPECS.values()),
    )
