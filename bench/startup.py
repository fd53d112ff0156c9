"""Startup time: `python app.py` to the first HTTP 200, side by side with a minimal Gradio app.

The app serves its page while the model loads in the background; the time until the
model is ready for the first question (the app logs "model ready") is reported too.

    python bench/startup.py [--runs 3] [--model PATH]

Both run as fresh processes on free ports; the figure is the median wall time from
process start to the page answering 200. The app's model is built once beforehand
(first-run build of the fallback model is not counted). Target: ratio <= 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_APP = """
import gradio as gr
with gr.Blocks() as demo:
    gr.Textbox()
demo.launch(server_name="127.0.0.1", server_port={port}, ssr_mode=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_200(cmd: list[str], port: int, env: dict[str, str], timeout_s: float = 300,
                ready_marker: str | None = None) -> tuple[float, float | None]:
    """Seconds from start to the first HTTP 200 and (if ready_marker) to that line in stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready: list[float] = []
    stderr_tail: list[str] = []

    def watch_stderr() -> None:
        for line in proc.stderr:
            stderr_tail[:] = (stderr_tail + [line])[-40:]
            if ready_marker and ready_marker in line and not ready:
                ready.append(time.perf_counter() - started)

    threading.Thread(target=watch_stderr, daemon=True).start()
    try:
        first_200 = None
        while time.perf_counter() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}: {''.join(stderr_tail)[-2000:]}")
            if first_200 is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            first_200 = time.perf_counter() - started
                except OSError:
                    pass
            if first_200 is not None and (not ready_marker or ready):
                return first_200, (ready[0] if ready else None)
            time.sleep(0.05)
        raise TimeoutError(f"{cmd} did not answer (or get ready) within {timeout_s}s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", help="model for app.py (default: the app's default model)")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="vitdemo-bench-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VITDEMO_HOME": home, "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(ROOT)}
    sys.path.insert(0, str(ROOT))
    from vitdemo.core.loading import resolve_model_source

    model = resolve_model_source(args.model, home)  # builds the fallback now, if it is the default
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        minimal = f.name
    app_times, ready_times, minimal_times = [], [], []
    for _ in range(args.runs):  # interleaved, so machine load affects both alike
        port = free_port()
        Path(minimal).write_text(MINIMAL_APP.replace("{port}", str(port)))
        minimal_times.append(time_to_200([sys.executable, minimal], port, env)[0])
        port = free_port()
        page, ready = time_to_200([sys.executable, "app.py", "-v", "--model", model, "--port", str(port)], port, env,
                                  ready_marker="model ready")
        app_times.append(page)
        ready_times.append(ready)
    a, m, r = (statistics.median(app_times), statistics.median(minimal_times), statistics.median(ready_times))
    print(f"model: {model}")
    print(f"python app.py      -> HTTP 200: median {a:.2f}s  runs {[round(t, 2) for t in app_times]}")
    print(f"python app.py      -> model ready: median {r:.2f}s  runs {[round(t, 2) for t in ready_times]}")
    print(f"minimal Gradio app -> HTTP 200: median {m:.2f}s  runs {[round(t, 2) for t in minimal_times]}")
    print(f"ratio app/minimal (page): {a / m:.2f}x (target <= 2x); model ready/minimal: {r / m:.2f}x")


if __name__ == "__main__":
    main()
