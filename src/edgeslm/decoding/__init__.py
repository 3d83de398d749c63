"""edgeslm decoding layer."""

from ._lazy_formats import install as _defer_slow_format_imports

_defer_slow_format_imports()  # before any module here imports jsonschema (issue #26: first-call latency)
