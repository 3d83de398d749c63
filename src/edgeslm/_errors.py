"""Every error a user can cause is an :class:`EdgeSLMError` with a hint on what to do.

Hierarchy::

    EdgeSLMError
    ├── InvalidRequestError       a bad argument value (also a ValueError)
    ├── ModelNotFoundError        unknown catalog id, missing file, bundled model not installed
    ├── CorruptModelError         a model file failed its header / hash checks
    ├── BackendUnavailableError   the engine for a backend is not installed or cannot run here
    │   └── EngineCrashError      every load option crashed the engine (in a child process)
    ├── InsufficientMemoryError   the model cannot fit in this machine's memory
    ├── TemplateError             the chat template cannot be rendered
    │   └── UnsafeTemplateError   the chat template tried to escape the sandbox
    ├── ContextLengthError        the prompt does not fit the context window
    ├── ModelClosedError          the model was closed
    ├── GenerationError           the engine failed while decoding
    │   └── GenerationCancelled   the app cancelled the call (edgeslm.cancel_on)
    ├── SchemaError               a schema is invalid or cannot be served
    ├── ExtractionFailed          no output validated after the allowed retries
    ├── ToolCallError             a tool call could not be produced or executed
    ├── EscalationError           the escalation target's answer was missing or rejected
    ├── MissingExtraError         a feature needs an optional extra (pip install "edgeslm[...]")
    ├── AdapterError              a LoRA adapter is corrupt, unsupported or made for another base
    ├── DatasetError              a training or teaching data file cannot be used
    ├── DownloadError             a download failed (network, HTTP, disk)
    │   ├── GatedModelError       the Hub repo needs a token / licence acceptance
    │   └── DiskFullError         not enough free disk for the download
    └── OfflineError              the model is not cached and the network is off
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "BackendUnavailableError",
    "ContextLengthError",
    "CorruptModelError",
    "DatasetError",
    "DiskFullError",
    "DownloadError",
    "EdgeSLMError",
    "EngineCrashError",
    "EscalationError",
    "ExtractionFailed",
    "GatedModelError",
    "GenerationCancelled",
    "GenerationError",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "MissingExtraError",
    "ModelClosedError",
    "ModelNotFoundError",
    "OfflineError",
    "SchemaError",
    "TemplateError",
    "ToolCallError",
    "UnsafeTemplateError",
]


class EdgeSLMError(Exception):
    """Base class of every error edgeslm raises on purpose.

    ``hint`` says what the user can do about it; it is appended to the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\nHint: {hint}" if hint else message)


class InvalidRequestError(EdgeSLMError, ValueError):
    """An argument has a value that cannot work (``max_tokens=0``, an empty prompt...)."""


class ModelNotFoundError(EdgeSLMError):
    """The model id, path or bundled model cannot be found."""


class CorruptModelError(EdgeSLMError):
    """A model file is damaged, truncated, or hostile."""


class BackendUnavailableError(EdgeSLMError):
    """The requested backend or device cannot be used here."""


class EngineCrashError(BackendUnavailableError):
    """Every load option crashed the engine in the self-check's child process (the app was not affected)."""


class InsufficientMemoryError(EdgeSLMError):
    """The model (with this context) needs more memory than this machine has."""


class TemplateError(EdgeSLMError):
    """The model's chat template could not be rendered."""


class UnsafeTemplateError(TemplateError):
    """The chat template tried to reach Python internals; nothing was run."""


class ContextLengthError(EdgeSLMError):
    """The prompt is longer than the model's context window."""

    def __init__(self, message: str, *, n_prompt: int, n_ctx: int, hint: str | None = None) -> None:
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx
        super().__init__(message, hint=hint)


class ModelClosedError(EdgeSLMError):
    """The model was closed and can no longer be used."""


class GenerationError(EdgeSLMError):
    """The engine reported a failure while decoding."""


class GenerationCancelled(GenerationError):
    """The call was cancelled by the app (:func:`edgeslm.cancel_on`) before it finished."""


class SchemaError(EdgeSLMError):
    """A JSON Schema is invalid, or uses something that cannot be served."""


class ExtractionFailed(EdgeSLMError):
    """No output validated against the schema within the allowed attempts."""

    def __init__(
        self,
        message: str,
        *,
        last_output: str = "",
        errors: list[str] | None = None,
        attempts: int = 0,
        hint: str | None = None,
    ) -> None:
        self.last_output = last_output
        self.errors = list(errors or [])
        self.attempts = attempts
        super().__init__(message, hint=hint)


class ToolCallError(EdgeSLMError):
    """A tool call could not be produced, parsed, or executed."""


class EscalationError(EdgeSLMError):
    """The escalation target gave no usable answer (the local answer stands; see ``escalation_error``)."""


class MissingExtraError(EdgeSLMError):
    """A feature needs an optional extra that is not installed; the hint names the ``pip install``."""


class AdapterError(EdgeSLMError):
    """A LoRA adapter cannot be used: corrupt, unsupported, or made for another base model."""


class DatasetError(EdgeSLMError):
    """A training or teaching data file (JSON Lines) cannot be used; the line is named."""


class DownloadError(EdgeSLMError):
    """Downloading a model failed; nothing partial was left in the cache."""


class GatedModelError(DownloadError):
    """The Hub repository is gated and needs a token."""


class DiskFullError(DownloadError):
    """There is not enough free disk space for the download."""


class OfflineError(EdgeSLMError):
    """The model is not cached and the network is disabled or unreachable."""


def json_kind(v: object) -> str:
    """A JSON value as an error message names it: its type, and the value when it is short
    (``null``, ``the number 5``, ``the string 'x'``, ``a list of 2``, ``an object``)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v!r:.40}"
    if isinstance(v, str):
        return f"the string {v!r:.40}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
