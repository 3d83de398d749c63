"""The llama-cpp-python peer, opened with the same engine options edgeslm runs with here.

On a CPU where llama.cpp's extra buffer types crash (AMX, llama.cpp #20824), edgeslm's self-check
turns them off; the peer gets the same option, so it runs, and both sides use the same kernels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["peer_llama"]


def peer_llama(path: str, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, **kwargs)`` with the CPU extra buffer types the self-check allows."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    from ..backends.llamacpp import system_info
    from ..runtime import selfcheck
    from ..runtime.hardware import cpu_info

    extra = True
    if selfcheck.safe_mode_default():
        check = selfcheck.ensure_engine(path, selfcheck.EngineOptions(0, True), cpu_features=cpu_info()[1],
                                        system_info=system_info())
        extra = bool(check.chosen and check.chosen.extra_bufts)
    if extra:
        return llama_cpp.Llama(path, **kwargs)
    real = lib.llama_model_default_params

    def safe_params() -> Any:
        params = real()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = safe_params  # Llama() reads its defaults from here
    try:
        return llama_cpp.Llama(path, **kwargs)
    finally:
        lib.llama_model_default_params = real
