"""``edgeslm serve``: an OpenAI-compatible local endpoint over one model (``pip install "edgeslm[serve]"``).

    edgeslm.serve("smollm2-135m", port=8765)          # blocks; Ctrl-C / SIGTERM stop it cleanly

    from edgeslm.server import create_app             # the ASGI app, for uvicorn or embedding
    app = create_app(edgeslm.load("smollm2-135m"))

Security by default: it binds to 127.0.0.1 (and answers only loopback Host headers there); any
other host needs ``api_key`` (or an explicit ``insecure_no_auth=True``); request bodies, messages,
tools, schemas and ``max_tokens`` are bounded (413/400); CORS is off unless origins are given; no
request field names a file or loads a model. Escalation comes only from the server's config file.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import InvalidRequestError, MissingExtraError

__all__ = ["create_app", "serve"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _require_stack() -> None:
    missing = []
    for mod in ("starlette", "uvicorn", "sse_starlette"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MissingExtraError(f"edgeslm serve needs {', '.join(missing)}", hint='pip install "edgeslm[serve]"')


def create_app(model: Any, **kwargs: Any) -> Any:
    """The Starlette app serving *model* (see :func:`edgeslm.server.app.create_app`)."""
    _require_stack()
    from .app import create_app as _create

    return _create(model, **kwargs)


def is_loopback(host: str) -> bool:
    """Whether *host* only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, api_key: str | None, insecure_no_auth: bool) -> None:
    """Refuse to serve beyond this machine without a key, unless told so explicitly."""
    if not is_loopback(host) and not api_key and not insecure_no_auth:
        raise InvalidRequestError(
            f"refusing to listen on {host}, reachable from other machines, without an API key",
            hint="pass --api-key KEY (or set EDGESLM_API_KEY), or --insecure-no-auth if anyone on the network "
            "may use this model; or keep the default --host 127.0.0.1",
        )


def serve(
    model: Any,
    *,
    adapters: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    cors: Sequence[str] | None = None,
    config: Any = None,
    n_ctx: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    log_level: str = "warning",
    batch_size: int | None = None,
) -> None:
    """Serve *model* (a catalog id, a path, or a loaded :class:`~edgeslm.Model`) until SIGINT/SIGTERM.

    ``port=0`` picks a free port (the URL printed on stderr names it). ``config``: the path of a
    JSON/TOML file (see :mod:`edgeslm.server.config`) or a :class:`~edgeslm.server.config.ServeConfig`.
    ``adapters``/``n_ctx``/``backend``/``device`` are passed to :func:`edgeslm.load` when *model* is
    not loaded yet. ``batch_size``: the most ``response_format`` requests decoded together (default:
    the config file's, else chosen by the engine's probed decode gain; 1: one at a time). On a stop signal:
    new requests get 503, running streams end with an error event and ``[DONE]``, running non-stream
    calls finish, the model is closed, and it returns."""
    _require_stack()
    from rich.console import Console
    from rich.markup import escape

    from .config import ServeConfig, load_config

    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise InvalidRequestError("api_key must be a non-empty string",
                                  hint='e.g. --api-key "$(openssl rand -hex 16)"')
    check_host(host, api_key, insecure_no_auth)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidRequestError(f"port must be within 0..65535, not {port!r}", hint="0 picks a free port")
    cfg = config if isinstance(config, ServeConfig) else load_config(config)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidRequestError(f"batch_size must be a positive integer, not {batch_size!r}",
                                      hint="1 decodes one request at a time; leave it out to have it chosen")
        cfg.batch_size = batch_size
    out = Console(stderr=True, highlight=False, soft_wrap=True)

    from ..api.model import Model

    owned = not isinstance(model, Model)
    if owned:
        import edgeslm

        with out.status(f"loading {escape(str(model))}..."):
            m = edgeslm.load(model, adapters=adapters, n_ctx=n_ctx, backend=backend, device=device,
                             escalation=cfg.escalation)
    else:
        m = model
        if cfg.escalation is not None:
            m.escalation = cfg.escalation
    if not m.closed:  # the engine's first call pays one-time costs: not the first client's
        try:
            m.generate("Hello", max_tokens=1, temperature=0)
        except Exception:
            pass
    try:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            sock.close()
            raise InvalidRequestError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                      hint="choose another --port (0 picks a free one)") from None
        sock.listen(2048)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
        url = f"http://{shown}:{bound}"
        app = create_app(m, api_key=api_key, cors=list(cors) if cors else None, limits=cfg.limits,
                         allowed_hosts=["localhost", "127.0.0.1", "[::1]", "::1"] if is_loopback(host) else None,
                         batch_size=cfg.batch_size)
        state = app.state.edgeslm
        _banner(out, m, url, api_key, cors, cfg)
        _run(app, state, sock, log_level)
        out.print("edgeslm serve: stopped", markup=False)
    finally:
        if owned:
            m.close()


def _banner(out: Any, m: Any, url: str, api_key: str | None, cors: Any, cfg: Any) -> None:
    from rich.markup import escape

    out.print(f"[bold]edgeslm serve[/bold]: [cyan]{escape(m.name)}[/cyan] on {escape(m.backend)}/{escape(m.device)},"
              f" n_ctx {m.n_ctx}, tool format {escape(m.tool_format)}")
    for line in str(m.plan).splitlines():
        out.print(f"  [dim]{escape(line)}[/dim]")
    if m.adapters:
        out.print(f"  adapters: {escape(', '.join(m.adapters))} (model '{escape(m.name)}:<adapter>')")
    out.print(f"  escalation: {escape(repr(m.escalation)) if m.escalation is not None else 'off'}"
              + (f" (from {escape(cfg.source)})" if cfg.source else ""))
    size = "chosen by the engine's batching gain" if cfg.batch_size is None else str(cfg.batch_size)
    out.print(f"  response_format requests decoded together: up to {size}")
    out.print(f"  auth: {'API key required (Authorization: Bearer ...)' if api_key else 'none'}"
              f"; CORS: {escape(', '.join(cors)) if cors else 'off'}")
    # one plain line, easy to find for scripts and tests
    out.print(f"edgeslm serve: listening on {url}/v1 (Ctrl-C to stop)", markup=False)


def _run(app: Any, state: Any, sock: socket.socket, log_level: str) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            state.stop()  # before uvicorn waits for the requests in flight
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=None, server_header=False)
    server = _Server(config)
    # uvicorn re-raises the stop signal once it has shut down gracefully: a no-op handler here makes
    # that a normal return (exit status 0) instead of a death by SIGTERM or a KeyboardInterrupt.
    previous: dict[int, Any] = {}
    if _in_main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def env_api_key() -> str | None:
    """The key in ``EDGESLM_API_KEY`` (so it need not appear on a command line), if set."""
    return os.environ.get("EDGESLM_API_KEY") or None
