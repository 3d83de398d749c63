"""``edgeslm serve`` under load: N concurrent clients for a while against a server process on the model,
a mix of chat and JSON-schema requests; beside the same requests sent one at a time, and beside
llama-cpp-python's own server (``python -m llama_cpp.server``) on the same file when its extra
dependencies are importable.

Reported per system: requests/s, p50/p95 latency, error responses (edgeslm: must be 0), how many
structured answers validate, and the server's RSS and thread count before the load and after it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["serve_bench"]

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
PEOPLE = ["Maria Lopez, aged 31, moved to Lisbon last year.", "Tom Berg (47) lives in Oslo.",
          "Aiko Tanaka is 25 and works in Kyoto.", "Omar Haddad, 58, retired to Tunis."]
QUESTIONS = ["Name three primary colors.", "What is the capital of France?", "Say hello in Spanish.",
             "Give one tip for sleeping well."]


def _requests(model: str, peer: bool) -> list[dict[str, Any]]:
    """The request mix: chat and schema requests, alternating."""
    out: list[dict[str, Any]] = []
    for i in range(4):
        out.append({"model": model, "messages": [{"role": "user", "content": QUESTIONS[i]}], "max_tokens": 32,
                    "temperature": 0})
        rf: dict[str, Any] = ({"type": "json_object", "schema": SCHEMA} if peer else
                              {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
        out.append({"model": model, "messages": [{"role": "user", "content": f"Extract the person: {PEOPLE[i]}"}],
                    "max_tokens": 64, "temperature": 0, "response_format": rf})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stats(pid: int) -> dict[str, Any]:
    import psutil

    p = psutil.Process(pid)
    return {"rss_mib": round(p.memory_info().rss / 2**20, 1), "threads": p.num_threads()}


def _wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    import httpx2 as httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s")


def _load(url: str, reqs: list[dict[str, Any]], clients: int, seconds: float) -> dict[str, Any]:
    """*clients* threads, each sending the mix in turn until *seconds* pass."""
    import httpx2 as httpx
    import jsonschema

    lat: list[float] = []
    errors: list[str] = []
    structured = [0, 0]  # answered, valid
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(timeout=300) as h:
            i = k
            while time.monotonic() < stop_at:
                body = reqs[i % len(reqs)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = h.post(f"{url}/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    lat.append(dt)
                    if "response_format" in body:
                        structured[0] += 1
                        try:
                            jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), SCHEMA)
                            structured[1] += 1
                        except Exception:
                            pass

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "clients": clients, "seconds": round(wall, 1), "requests": len(lat), "errors": len(errors),
        "error_examples": errors[:3], "req_per_s": round(len(lat) / wall, 3) if wall else None,
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "structured": structured[0], "structured_valid": structured[1],
    }


def _run_server(cmd: list[str], url: str, health: str, name_of: Callable[[str], str], reqs_for: Callable[[str], Any],
                clients: int, seconds: float, sequential_s: float | None,
                tick: Callable[[], None] | None) -> dict[str, Any]:
    import httpx2 as httpx

    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "server.log"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        try:
            _wait_health(health, proc, log)
            name = name_of(httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"])
            reqs = reqs_for(name)
            # warm: grammars compiled, and the server's worker threads started (one request per client at once)
            warm = [threading.Thread(target=httpx.post, args=(f"{url}/v1/chat/completions",),
                                     kwargs={"json": reqs[k % len(reqs)], "timeout": 300}) for k in range(clients)]
            for t in warm:
                t.start()
            for t in warm:
                t.join()
            out: dict[str, Any] = {"before": _proc_stats(proc.pid)}
            out["concurrent"] = _load(url, reqs, clients, seconds)
            if tick:
                tick()
            time.sleep(2.0)  # let finished requests' threads and buffers go
            out["after"] = _proc_stats(proc.pid)
            if health.endswith("/health"):  # edgeslm: how the schema requests were decoded
                out["batches"] = httpx.get(health, timeout=10).json().get("batches")
            if sequential_s:
                out["one_at_a_time"] = _load(url, reqs, 1, sequential_s)
                if tick:
                    tick()
            return out
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out_code = proc.returncode
            if out_code not in (0, -15, 143):
                print(log.read_text(errors="replace")[-1000:], file=sys.stderr)


def serve_bench(model_ref: str, *, clients: int = 8, seconds: float = 20.0, n_threads: int = 2, peer: bool = True,
                tick: Callable[[], None] | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Load on ``edgeslm serve`` (concurrent, then one at a time) and, if it runs, on ``llama_cpp.server``.
    ``batch_size``: the server's ``--batch-size`` (``None``: its default, chosen by the engine's gain);
    the result's ``edgeslm.batches`` says how the schema requests were decoded (``most_at_once`` > 1:
    together)."""
    from ..store import resolve
    from .models import parse_ref

    base, adapter, _ = parse_ref(model_ref)
    if adapter is not None:
        raise ValueError("serve: --model with an adapter is not supported here")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgeslm", "serve", base, "--port", str(port), "--n-ctx", "2048"]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    res: dict[str, Any] = {"model": model_ref, "clients": clients, "seconds": seconds, "batch_size": batch_size}
    res["edgeslm"] = _run_server(cmd, url, f"{url}/health", lambda n: n, lambda n: _requests(n, False), clients,
                                 seconds, seconds / 2, tick)
    missing = [m for m in ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
               if importlib.util.find_spec(m) is None]
    if not peer:
        res["peer_skipped"] = "--no-peer"
    elif missing:
        res["peer_skipped"] = f"llama_cpp.server needs {missing} (pip install 'llama-cpp-python[server]')"
    else:
        path = str(resolve(base).path)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--port", str(port), "--host", "127.0.0.1",
               "--n_ctx", "2048", "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
        try:
            res["peer"] = _run_server(cmd, url, f"{url}/v1/models", lambda n: n, lambda n: _requests(n, True),
                                      clients, seconds, None, tick)
        except Exception as exc:  # the peer is a comparison, not a requirement
            why = re.sub(r"\s+", " ", str(exc))[:300]
            res["peer_skipped"] = f"llama_cpp.server failed: {why}"
    return res


def summary(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(system, figures)`` rows of a :func:`serve_bench` result, for the report."""
    rows = []
    for key, system, phase in (("edgeslm", "edgeslm serve, concurrent", "concurrent"),
                               ("edgeslm", "edgeslm serve, one at a time", "one_at_a_time"),
                               ("peer", "llama_cpp.server, concurrent", "concurrent")):
        side = r.get(key) or {}
        x = side.get(phase)
        if not x:
            continue
        fig = {k: x[k] for k in ("clients", "requests", "req_per_s", "latency_p50_s", "latency_p95_s", "errors",
                                 "structured", "structured_valid")}
        if phase == "concurrent":
            if side.get("batches"):
                fig["schema_requests_at_once"] = side["batches"].get("most_at_once")
            b, a = side["before"], side["after"]
            fig.update(rss_mib_before=b["rss_mib"], rss_mib_after=a["rss_mib"], threads_before=b["threads"],
                       threads_after=a["threads"])
        rows.append((system, fig))
    return rows
