"""The self-check child: ``python -m edgeslm.runtime._probe '<json request>'``.

Loads a model with the given options, decodes a multi-token prompt (llama.cpp's AMX crash needs
more than one token) and four greedy tokens, then prints one JSON line. A native crash kills only
this process; the parent reads the exit status.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

PROMPT = "The quick brown fox jumps over the lazy dog. Then it runs into the forest, far away from the farm."


def _inject(options: dict) -> None:
    """Test-only fault injection (EDGESLM_TEST_CRASH): die like a native crash when options match."""
    wanted = {w.strip() for w in os.environ.get("EDGESLM_TEST_CRASH", "").split(",") if w.strip()}
    hit = ("always" in wanted or ("extra_bufts" in wanted and options["extra_bufts"])
           or ("gpu" in wanted and options["n_gpu_layers"] > 0))
    if "hang" in wanted or ("hang_extra_bufts" in wanted and options["extra_bufts"]):
        time.sleep(3600)
    if hit:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSEGV)


def main(argv: list[str]) -> int:
    req = json.loads(argv[1])
    opts = req["options"]
    from edgeslm._errors import EdgeSLMError
    from edgeslm.backends.llamacpp import LlamaCppBackend

    try:
        eng = LlamaCppBackend(req["path"], n_ctx=256, n_gpu_layers=int(opts["n_gpu_layers"]),
                              n_threads=req.get("n_threads"), extra_bufts=bool(opts["extra_bufts"]))
    except EdgeSLMError as exc:
        print(json.dumps({"ok": False, "error": exc.message}))
        return 3
    _inject(opts)
    import numpy as np

    toks = ([eng.bos_id] if eng.add_bos and eng.bos_id is not None else []) + eng.tokenize(PROMPT, special=False)
    eng.eval(toks)
    out = []
    for _ in range(4):
        t = int(np.argmax(eng.logits()))
        out.append(t)
        eng.eval([t])
    eng.close()
    print(json.dumps({"ok": True, "prompt_tokens": len(toks), "generated": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
