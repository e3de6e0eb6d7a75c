"""`titan serve` as a user runs it: a separate process, its --help, its errors, and one request through it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(180)  # a hung server fails with a traceback, never blocks the suite

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TITAN_API_KEY": ""}


def titan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_help_names_every_option():
    r = titan("serve", "--help")
    assert r.returncode == 0
    for opt in ("--model", "--host", "--port", "--max-model-len", "--kv-memory", "--api-key", "127.0.0.1",
                "--kv-cache-dtype", "--engine-process", "--mixed-graphs"):
        assert opt in r.stdout, opt


def test_serve_parses_kv_cache_dtype():
    from common.cli import build_parser

    assert build_parser().parse_args(["serve", "--kv-cache-dtype", "fp8"]).kv_cache_dtype == "fp8"
    assert build_parser().parse_args(["serve"]).kv_cache_dtype == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--kv-cache-dtype", "int4"])


def test_serve_parses_engine_process():
    from common.cli import build_parser
    from phase4_scheduler.launch import use_engine_process

    assert build_parser().parse_args(["serve"]).engine_process == "auto"
    assert build_parser().parse_args(["serve", "--engine-process", "on"]).engine_process == "on"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--engine-process", "yes"])
    assert use_engine_process("auto", "cpu") is False and use_engine_process("on", "cpu") is True
    assert use_engine_process("off", "auto") is False


def test_serve_mixed_graphs_switch_reaches_the_engine(monkeypatch):
    """--mixed-graphs full/piecewise/off becomes LLMEngine(mixed_graphs="full"/True/False); auto leaves it to the
    engine's default (full; TITAN_MIXED_GRAPHS=piecewise / 0 and TITAN_MIXED_ATTENTION=split change it; the runner
    builds the graphs only with CUDA graphs and the fused model)."""
    from common import cli
    from phase4_scheduler import engine, launch

    seen = []
    monkeypatch.setattr(launch, "serve", lambda model, **kw: seen.append(kw))
    for flag, want in (("full", "full"), ("piecewise", True), ("off", False), ("auto", "absent")):
        cli.cmd_serve(cli.build_parser().parse_args(["serve", "--mixed-graphs", flag]))
        assert seen[-1].get("mixed_graphs", "absent") == want
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--mixed-graphs", "on"])
    monkeypatch.setenv("TITAN_MIXED_GRAPHS", "0")
    assert engine._mixed_graphs(None) is False and engine._mixed_graphs(True) is True
    for env, want in (("piecewise", True), ("1", True), ("full", "full"), ("off", False)):
        monkeypatch.setenv("TITAN_MIXED_GRAPHS", env)
        assert engine._mixed_graphs(None) == want, env
    monkeypatch.delenv("TITAN_MIXED_GRAPHS")
    monkeypatch.delenv("TITAN_MIXED_ATTENTION", raising=False)
    assert engine._mixed_graphs(None) == "full"
    monkeypatch.setenv("TITAN_MIXED_ATTENTION", "split")  # split attention runs only piecewise
    assert engine._mixed_graphs(None) is True
    with pytest.raises(ValueError, match="piecewise"):
        engine._mixed_graphs("on")


def test_serve_refuses_bad_setup_with_a_clear_error():
    r = titan("serve", "--model", "/nowhere/model.gguf")
    assert r.returncode == 1 and "titan: error: GGUF file not found" in r.stderr and "Traceback" not in r.stderr
    r = titan("serve", "--random-weights", "--num-layers", "1", "--device", "cpu", "--kv-memory", "1KiB")
    assert r.returncode == 1 and "cannot start the engine" in r.stderr and "holds no block" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_refuses_an_address_it_cannot_listen_on_before_loading(monkeypatch):
    """A port in use or out of range is a one-line error before the model loads (minutes for a large model); it was
    uvicorn's error after the load, or a traceback (`--port 99999`: OverflowError from bind)."""
    from common.errors import TitanError
    from phase4_scheduler import async_engine, launch

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the address was checked")

    monkeypatch.setattr(async_engine.AsyncEngine, "from_model", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TitanError, match=f"cannot listen on 127.0.0.1:{port}.*in use.*--port"):
            launch.serve("smollm2-135m", port=port, device="cpu", engine_process="off")
    for bad in (99999, -1):
        with pytest.raises(TitanError, match="--port must be in 0..65535"):
            launch.serve("smollm2-135m", port=bad, device="cpu", engine_process="off")
    r = titan("serve", "--port", "99999", "--device", "cpu")
    assert r.returncode == 1 and "titan: error: --port must be in 0..65535" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_serve_answers_with_api_key():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "serve", "--random-weights", "--num-layers", "2",
                             "--device", "cpu", "--port", str(port), "--max-model-len", "128", "--kv-memory", "4MiB",
                             "--api-key", "k3y", "--served-model-name", "tiny",
                             "--log-level", "warning"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "titan serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert client.models.retrieve("tiny").model_dump()["max_model_len"] == 128
        r = client.completions.create(model="tiny", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_with_engine_process_answers_and_stops_both_processes():
    """`--engine-process on`: the engine runs in a child process; Ctrl-C (SIGINT to the server's process group)
    stops the server, which stops the engine process; neither is left behind."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "serve", "--random-weights", "--num-layers", "2",
                             "--device", "cpu", "--port", str(port), "--max-model-len", "128", "--kv-memory", "4MiB",
                             "--engine-process", "on", "--log-level", "warning"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = ""
        while "engine process pid" not in line:  # the server's start-up line names the engine's process
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "titan serve exited before it served"
        engine_pid = int(line.rsplit("pid", 1)[1].strip(" )\n"))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        r = client.completions.create(model="smollm2-135m", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: both processes get it
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while _alive(engine_pid):
            assert time.monotonic() < deadline, "the engine process outlived the server"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lm_eval_check_without_lm_eval_says_so(tmp_path, capsys):
    """The lm-eval check is optional: without lm_eval importable it exits 2 with the reason; its task files are a
    JSON-lines dataset of the built-in questions and a YAML that points at it."""
    import importlib.util
    import json

    from phase4_scheduler import lm_eval_check as L

    if importlib.util.find_spec("lm_eval") is None:
        assert L.main(["--base-url", "http://127.0.0.1:9"]) == 2
        assert "lm_eval is not importable" in capsys.readouterr().out
    L.write_task(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "toy.jsonl").read_text().splitlines()]
    assert [(r["question"], r["choices"], r["label"]) for r in rows] == [(q, c, y) for q, c, y in L.QUESTIONS]
    yaml_text = (tmp_path / "toy.yaml").read_text()
    assert f"task: {L.TASK}" in yaml_text and str(tmp_path / "toy.jsonl") in yaml_text
