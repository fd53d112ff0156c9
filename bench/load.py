"""Load: N simultaneous gradio_client users against a real server on loopback.

Each user uploads their own scene, asks, gets the answer, and asks again with the history
(multi-turn). Checks: 0 failed requests; every answer equals the answer the same model
gives to that user's image and history when asked alone (greedy decoding, so a mix-up of
images or histories between users shows as a wrong answer; the distinct reference answers
are counted so the check can be seen to be able to fail); latency p50/p95; and
p95 latency <= 1.5 x (p95 queue position x single-request latency), where a request's
queue position is 1 + the number of other requests the server finished while it waited.

    .venv/bin/python bench/load.py                       # classroom model if shipped, else tiny LLaVA
    .venv/bin/python bench/load.py --users 30 --with-finetune   # also: chat while a fine-tune runs

Bounded: --deadline-s for the whole run; each request has its own timeout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "helpers")]

log = logging.getLogger("bench.load")


@dataclass
class Request:
    user: int
    turn: int
    start: float
    end: float = 0.0
    answer: str | None = None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


def _model_dir(arg: str | None, tmp: Path) -> str:
    if arg:
        return arg
    classroom = ROOT / "assets" / "classroom"
    if (classroom / "config.json").is_file():
        return str(classroom)
    import tiny_models

    return str(tiny_models.build_tiny_llava(tmp / "tiny_llava", seed=0))


def _scenes(n: int, folder: Path) -> list[tuple[str, str, str]]:
    """(image path, first question, second question) per user: distinct classroom scenes."""
    import numpy as np

    from vitdemo.classroom.scenes import generate_scene, questions_for

    out = []
    rng = np.random.default_rng(1234)
    for i in range(n):
        scene = generate_scene(rng)
        path = folder / f"user{i:02d}.png"
        scene.image.save(path)
        qs = questions_for(scene, rng)
        first = qs[0].question
        second = qs[1].question if len(qs) > 1 else "How many shapes are there?"
        out.append((str(path), first, second))
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q * (len(ordered) - 1)))))
    return ordered[k]


def _positions(requests: list[Request]) -> list[int]:
    """1 + requests the server finished while this one waited (its place in the queue)."""
    return [1 + sum(1 for o in requests if o is not r and r.start < o.end <= r.end) for r in requests]


def run_users(url: str, users: list[tuple[str, str, str]], deadline: float, timeout_s: float) -> list[Request]:
    from gradio_client import Client, handle_file

    requests: list[Request] = []
    mutex = threading.Lock()
    barrier = threading.Barrier(len(users))

    # Connect first (each Client reads the app's config and API description), then everyone
    # asks at the same moment.
    t_connect = time.perf_counter()
    clients = [Client(url, verbose=False, httpx_kwargs={"timeout": timeout_s}) for _ in users]
    log.warning("%d clients connected in %.1fs", len(clients), time.perf_counter() - t_connect)

    def user(i: int, image: str, q1: str, q2: str) -> None:
        client = clients[i]
        barrier.wait(timeout=timeout_s)
        history: list[dict[str, str]] | None = None
        for turn, q in ((1, q1), (2, q2)):
            r = Request(i, turn, time.perf_counter())
            try:
                if time.monotonic() > deadline:
                    raise TimeoutError("bench deadline reached")
                job = client.submit(handle_file(image), q, history, api_name="/chat")
                r.answer = job.result(timeout=timeout_s)
            except Exception as err:  # noqa: BLE001 - counted as a failure
                r.error = f"{type(err).__name__}: {err}"[:300]
            r.end = time.perf_counter()
            with mutex:
                requests.append(r)
            if r.error:
                return
            history = [{"role": "user", "content": q1}, {"role": "assistant", "content": r.answer or ""}]

    threads = [threading.Thread(target=user, args=(i, *u), daemon=True) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    return requests


def references(engine: Any, users: list[tuple[str, str, str]], max_new_tokens: int) -> list[tuple[str, str]]:
    """Each user's two answers from the model asked alone (the same path as /chat)."""
    from vitdemo.chat.conversation import GenerationSettings
    from vitdemo.chat.session import history_to_session

    gen = GenerationSettings(max_new_tokens=max_new_tokens)
    out = []
    for image, q1, q2 in users:
        a1 = "".join(list(history_to_session(None, image, q1).stream_reply(engine, gen))[-1:]).strip()
        hist = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}]
        a2 = "".join(list(history_to_session(hist, image, q2).stream_reply(engine, gen))[-1:]).strip()
        out.append((a1, a2))
    return out


def single_latency(url: str, user: tuple[str, str, str], n: int = 3) -> float:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.predict(handle_file(user[0]), user[1], None, api_name="/chat")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summarise(requests: list[Request], refs: list[tuple[str, str]], single_s: float, label: str) -> dict[str, Any]:
    done = [r for r in requests if r.error is None]
    failed = [r for r in requests if r.error is not None]
    wrong = [r for r in done if r.answer != refs[r.user][r.turn - 1]]
    lat = [r.latency for r in requests]
    pos = _positions(requests)
    p95_pos = _percentile([float(p) for p in pos], 0.95) if pos else 0.0
    p95 = _percentile(lat, 0.95) if lat else float("nan")
    bound = 1.5 * p95_pos * single_s
    ratios = [r.latency / (p * single_s) for r, p in zip(requests, pos)]
    return {
        "scenario": label, "requests": len(requests), "failed": len(failed), "wrong_owner": len(wrong),
        "distinct_reference_answers": len({a for pair in refs for a in pair}),
        "single_s": round(single_s, 3), "p50_s": round(_percentile(lat, 0.5), 3) if lat else None,
        "p95_s": round(p95, 3), "max_s": round(max(lat), 3) if lat else None,
        "p95_position": p95_pos, "bound_s": round(bound, 3), "p95_within_bound": bool(p95 <= bound),
        "p95_latency_over_position_x_single": round(_percentile(ratios, 0.95), 3) if ratios else None,
        "errors": sorted({r.error for r in failed})[:3],
        "wrong_examples": [(r.user, r.turn, r.answer, refs[r.user][r.turn - 1]) for r in wrong[:3]],
    }


def start_finetune(home: Path, model: str) -> Any:
    """A small fine-tune job on a shipped example dataset, through the job API; returns the Popen."""
    from vitdemo.finetune import jobs
    from vitdemo.finetune.data.records import ingest_upload, load_dataset, save_records

    job = jobs.new_job(home, model=model, config={"max_steps": 50_000, "batch_size": 2, "max_eval_examples": 4,
                                                  "checkpoint_every": 1000})
    ingest_upload([ROOT / "assets" / "datasets" / "shape_at.zip"], job.data_dir)
    report = load_dataset(job.data_dir)
    save_records(report.usable_records(drop_bad=True), report, job.records_path)
    return jobs.start_job(home, job)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: classroom model, else a tiny LLaVA)")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    parser.add_argument("--deadline-s", type=float, default=900.0, help="whole run")
    parser.add_argument("--with-finetune", action="store_true", help="repeat the wave while a fine-tune runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    deadline = time.monotonic() + args.deadline_s

    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from webapp import free_port, serve

    tmp = Path(tempfile.mkdtemp(prefix="vitdemo-load-"))
    model = _model_dir(args.model, tmp)
    engine = Engine(load_model(model))
    users = _scenes(args.users, tmp)
    t0 = time.perf_counter()
    refs = references(engine, users, args.max_new_tokens)
    print(f"model {model}; {len(users)} users; references computed alone in {time.perf_counter() - t0:.1f}s",
          flush=True)
    settings = Settings(model=model, port=free_port(), max_new_tokens=args.max_new_tokens,
                        queue_size=max(16, 2 * args.users), home=tmp / "home")
    results = []
    with serve(settings, engine) as url:
        single = single_latency(url, users[0])
        results.append(summarise(run_users(url, users, deadline, args.timeout_s), refs, single, "chat, no training"))
        print(json.dumps(results[-1]), flush=True)
        if args.with_finetune and time.monotonic() < deadline:
            proc = start_finetune(settings.home, model)
            try:
                time.sleep(10)  # past the runner's start-up, into training steps
                single_ft = single_latency(url, users[0])
                res = summarise(run_users(url, users, deadline, args.timeout_s), refs, single_ft,
                                "chat while a fine-tune runs")
                res["finetune_still_running"] = proc.poll() is None
                results.append(res)
                print(json.dumps(results[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ok = all(r["failed"] == 0 and r["wrong_owner"] == 0 and r["p95_within_bound"] for r in results[:1])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
