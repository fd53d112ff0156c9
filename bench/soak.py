"""Soak: many chat requests with attention maps against a real server process; does its
resident memory and Gradio temp folder stay flat after the warm-up?

The server is `python -m vitdemo serve` in its own process (its RSS is read with psutil)
with GRADIO_TEMP_DIR pointing at a fresh folder (its size is summed). One client asks the
Attention tab's `/on_ask` (answer + maps per word) about a rotation of distinct images
and questions, one request after another. Figures at the end of the warm-up, the middle
and the end.

    .venv/bin/python bench/soak.py                      # 1000 requests (bounded by --max-seconds)
    .venv/bin/python bench/soak.py --requests 100       # quick run
    .venv/bin/python bench/soak.py --fresh-client       # a new client session per request
    .venv/bin/python bench/soak.py --server-env MALLOC_ARENA_MAX=2   # an allocator setting

Besides the three figures, a sample every --sample-every requests shows the curve's shape.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "helpers")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _model(arg: str | None, tmp: Path) -> str:
    if arg:
        return arg
    classroom = ROOT / "assets" / "classroom"
    if (classroom / "config.json").is_file():
        return str(classroom)
    import tiny_models

    return str(tiny_models.build_tiny_llava(tmp / "tiny_llava", seed=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="requests before the first measurement")
    parser.add_argument("--images", type=int, default=10, help="distinct images in the rotation")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop early (and say so) after this")
    parser.add_argument("--sample-every", type=int, default=100, help="requests between curve samples")
    parser.add_argument("--fresh-client", action="store_true",
                        help="a new gradio_client (a new session) per request, as many visitors would be")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server process (e.g. allocator settings)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np
    import psutil
    from gradio_client import handle_file

    from relserver import page_client  # /on_ask is the page's own event, not a public endpoint

    from vitdemo.classroom.scenes import generate_scene, questions_for

    tmp = Path(tempfile.mkdtemp(prefix="vitdemo-soak-"))
    model = _model(args.model, tmp)
    rng = np.random.default_rng(7)
    items = []
    for i in range(args.images):
        scene = generate_scene(rng)
        path = tmp / f"scene{i}.png"
        scene.image.save(path)
        items.append((str(path), questions_for(scene, rng)[0].question))
    gradio_tmp = tmp / "gradio"
    gradio_tmp.mkdir()
    port = _free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(gradio_tmp), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    env.update(item.split("=", 1) for item in args.server_env)
    server = subprocess.Popen([sys.executable, "-m", "vitdemo", "serve", "--model", model, "--port", str(port),
                               "--home", str(tmp / "home"), "--max-new-tokens", str(args.max_new_tokens)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"))
    proc = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + args.max_seconds
    samples: list[dict] = []
    curve: list[dict] = []
    failures: list[str] = []
    try:
        while True:  # wait for the server
            try:
                client = page_client(url, httpx_kwargs={"timeout": 120})
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; see {tmp / 'server.log'}")
                time.sleep(1)
        marks = {args.warmup, args.warmup + (args.requests - args.warmup) // 2, args.requests}
        curve_marks = set(range(args.warmup, args.requests + 1, max(1, args.sample_every)))
        start = time.perf_counter()
        done = 0
        for n in range(1, args.requests + 1):
            if time.monotonic() > deadline:
                print(f"stopped by --max-seconds after {done} requests", flush=True)
                break
            image, question = items[n % len(items)]
            if args.fresh_client:
                client = page_client(url, httpx_kwargs={"timeout": 120})
            try:
                out = client.predict(handle_file(image), None, question, args.max_new_tokens, api_name="/on_ask")
                if not out[2]:
                    failures.append(f"request {n}: no answer")
            except Exception as err:  # noqa: BLE001 - counted
                failures.append(f"request {n}: {type(err).__name__}: {str(err)[:200]}")
            done = n
            if n in marks or n in curve_marks:
                sample = {"request": n, "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                          "temp_dir_kb": round(_dir_size(gradio_tmp) / 1024, 1),
                          "elapsed_s": round(time.perf_counter() - start, 1)}
                curve.append(sample)
                if n in marks:
                    samples.append(sample)
                print(json.dumps(sample), flush=True)
        if done not in {s["request"] for s in samples} and done:
            samples.append({"request": done, "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                            "temp_dir_kb": round(_dir_size(gradio_tmp) / 1024, 1),
                            "elapsed_s": round(time.perf_counter() - start, 1)})
            curve.append(samples[-1])
            print(json.dumps(samples[-1]), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = {"model": model, "requests": done, "failed": len(failures), "samples": samples,
               "curve": [[c["request"], c["rss_mb"]] for c in curve], "failures": failures[:5],
               "fresh_client": args.fresh_client, "server_env": args.server_env}
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        summary["rss_growth_mb"] = round(last["rss_mb"] - first["rss_mb"], 1)
        summary["temp_growth_kb"] = round(last["temp_dir_kb"] - first["temp_dir_kb"], 1)
        summary["s_per_request"] = round(last["elapsed_s"] / max(1, done), 3)
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
