"""Running the server: `serve()` (what `titan serve` calls) and `BackgroundServer` (uvicorn in a thread, for tests
and notebooks)."""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time

from common.errors import TitanError
from phase4_scheduler.server import create_app

log = logging.getLogger("titan.server")


class BackgroundServer:
    """uvicorn in a background thread, for tests and notebooks:

        with BackgroundServer(create_app(engine)) as base_url:      # e.g. http://127.0.0.1:54321
            OpenAI(base_url=base_url + "/v1", api_key="x").completions.create(...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="titan-server", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def use_engine_process(mode: str, device: str) -> bool:
    """--engine-process: "on", "off", or "auto" (on where the model runs on CUDA, where the server's host work
    otherwise shares a GIL with a step loop that must keep the device busy; off on CPU, where the engine's own
    threads want the cores)."""
    if mode not in ("auto", "on", "off"):
        raise TitanError(f"--engine-process must be auto, on or off, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    from common.device import resolve_device

    return resolve_device(device).type == "cuda"


def check_address(host: str, port: int) -> None:
    """Raise TitanError unless the server could listen on host:port: checked before the model loads (minutes for
    a large one) rather than by uvicorn after it (a port in use) or by a traceback (a port out of range)."""
    if not 0 <= port <= 65535:
        raise TitanError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
            s.bind(addr)
    except OSError as e:  # (socket.gaierror too: a --host that does not resolve)
        hint = "--host must be an address of this machine" if isinstance(e, socket.gaierror) or \
            e.errno == errno.EADDRNOTAVAIL else "pick another --port, or stop the process that holds it"
        raise TitanError(f"cannot listen on {host}:{port}: {e.strerror or e}: {hint}") from None


def serve(model: str = "smollm2-135m", host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
          kv_memory=None, api_key: str | None = None, device: str = "auto", log_level: str = "info",
          served_model_name: str | None = None, engine_process: str = "auto", **engine_kwargs) -> None:
    """Load the model into an engine (AsyncEngine in this process, or ProcessEngine: its own process, see
    use_engine_process) and serve it until Ctrl-C (what `titan serve` runs)."""
    import uvicorn

    from phase4_scheduler.engine import freeze_heap

    separate = use_engine_process(engine_process, device)
    check_address(host, port)
    try:
        if separate:
            from phase4_scheduler.process_engine import ProcessEngine

            engine = ProcessEngine.from_model(model, max_model_len=max_model_len, kv_memory=kv_memory, device=device,
                                              warmup=True, **engine_kwargs)  # warm-up and GC freeze run there
        else:
            from phase4_scheduler.async_engine import AsyncEngine

            engine = AsyncEngine.from_model(model, max_model_len=max_model_len, kv_memory=kv_memory, device=device,
                                            **engine_kwargs)
    except (ValueError, TypeError) as e:  # e.g. --kv-memory that holds no block: say so without a traceback
        raise TitanError(f"cannot start the engine: {e}") from e
    if engine.tokenizer is None:
        if separate:
            engine.close()
        raise TitanError(f"{model} has no tokenizer, so it cannot serve text. Use a model that ships one (a .gguf, "
                         "or an HF directory with tokenizer.json).")
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", host)
    if not separate:
        engine.engine.warmup()  # compile the kernels now, not inside the first client's TTFT
    freeze_heap()  # the ~300k start-up objects leave the GC's view: no full-collection stalls mid-stream
    app = create_app(engine, api_key=api_key, served_model_name=served_model_name)
    capacity = app.state.server.token_capacity()
    if capacity < engine.max_model_len:
        log.warning("the KV cache holds %d tokens, fewer than max_model_len %d: longer requests get a 400 "
                    "(raise --kv-memory or lower --max-model-len)", capacity, engine.max_model_len)
    log.warning("serving %s (max_model_len %d) on http://%s:%d/v1%s%s", app.state.server.model_name,
                engine.max_model_len, host, port, " (API key required)" if api_key else "",
                f" (engine process pid {engine.pid})" if separate else "")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=10)  # Ctrl-C: open streams get 10 s, then are cut (and aborted)
    finally:
        if separate:
            engine.close()  # the app's shutdown stopped it already, unless uvicorn never started
