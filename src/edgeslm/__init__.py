"""edgeslm: small language models on the user's own device.

    import edgeslm
    model = edgeslm.load("smollm2-135m")
    print(model.chat([{"role": "user", "content": "hi"}]).text)

Importing this package loads no inference engine; engines load with the first model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    AdapterError,
    BackendUnavailableError,
    ContextLengthError,
    CorruptModelError,
    DatasetError,
    DiskFullError,
    DownloadError,
    EdgeSLMError,
    EngineCrashError,
    EscalationError,
    ExtractionFailed,
    GatedModelError,
    GenerationCancelled,
    GenerationError,
    InsufficientMemoryError,
    InvalidRequestError,
    MissingExtraError,
    ModelClosedError,
    ModelNotFoundError,
    OfflineError,
    SchemaError,
    TemplateError,
    ToolCallError,
    UnsafeTemplateError,
)
from ._version import __version__

if TYPE_CHECKING:
    from .api.aio import AsyncModel
    from .api.calibrate import calibrate
    from .api.load import load
    from .api.model import Model
    from .api.plan import plan
    from .api.results import ChatChunk, ChatResult, ChatStream, Extraction, ToolCall, Usage
    from .api.tool_loop import ToolRun
    from .decoding.loop import cancel_on
    from .decoding.support import SchemaSupport, check_schema
    from .distill.finetune import FinetuneReport, finetune
    from .distill.teach import TeachReport, teach
    from .escalation.calibration import CalibrationReport
    from .escalation.policy import Escalation
    from .escalation.requests import CloudAnswer, EscalationRequest
    from .escalation.targets import OpenAICompatible
    from .runtime.hardware import Hardware, detect
    from .runtime.planner import Plan
    from .server import serve
    from .store import pull
    from .tools.spec import Tool, tool

__all__ = [
    "AdapterError",
    "AsyncModel",
    "BackendUnavailableError",
    "CalibrationReport",
    "ChatChunk",
    "ChatResult",
    "ChatStream",
    "CloudAnswer",
    "ContextLengthError",
    "CorruptModelError",
    "DatasetError",
    "DiskFullError",
    "DownloadError",
    "EdgeSLMError",
    "EngineCrashError",
    "Escalation",
    "EscalationError",
    "EscalationRequest",
    "Extraction",
    "ExtractionFailed",
    "FinetuneReport",
    "GatedModelError",
    "GenerationCancelled",
    "GenerationError",
    "Hardware",
    "InsufficientMemoryError",
    "InvalidRequestError",
    "MissingExtraError",
    "Model",
    "ModelClosedError",
    "ModelNotFoundError",
    "OfflineError",
    "OpenAICompatible",
    "Plan",
    "SchemaError",
    "SchemaSupport",
    "TeachReport",
    "TemplateError",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolRun",
    "UnsafeTemplateError",
    "Usage",
    "__version__",
    "calibrate",
    "cancel_on",
    "check_schema",
    "detect",
    "finetune",
    "load",
    "plan",
    "pull",
    "serve",
    "teach",
    "tool",
]

# Public name -> module that defines it; imported on first access (PEP 562) to keep import fast.
_LAZY = {
    "load": ".api.load",
    "plan": ".api.plan",
    "pull": ".store",
    "Model": ".api.model",
    "AsyncModel": ".api.aio",
    "serve": ".server",
    "ChatStream": ".api.results",
    "ChatChunk": ".api.results",
    "ChatResult": ".api.results",
    "Extraction": ".api.results",
    "ToolCall": ".api.results",
    "ToolRun": ".api.tool_loop",
    "Tool": ".tools.spec",
    "tool": ".tools.spec",
    "Usage": ".api.results",
    "Hardware": ".runtime.hardware",
    "detect": ".runtime.hardware",
    "Plan": ".runtime.planner",
    "SchemaSupport": ".decoding.support",
    "check_schema": ".decoding.support",
    "cancel_on": ".decoding.loop",
    "calibrate": ".api.calibrate",
    "CalibrationReport": ".escalation.calibration",
    "OpenAICompatible": ".escalation.targets",
    "CloudAnswer": ".escalation.requests",
    "Escalation": ".escalation.policy",
    "EscalationRequest": ".escalation.requests",
    "finetune": ".distill.finetune",
    "FinetuneReport": ".distill.finetune",
    "teach": ".distill.teach",
    "TeachReport": ".distill.teach",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'edgeslm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
