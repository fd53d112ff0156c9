"""Load: a class asking at once, against `python app.py` with its defaults, on loopback.

Every app server here is a separate `python app.py` process started with no flags but the
port (and the model and answer length for the "big" part): no queue-size override.

Part "classroom" (the default model): classes of --classes users (30 and 100) ask at the
same moment through `/chat`, each with its own scene, then again with the history; for
--rounds rounds in a row. Reported per round: refused requests (a full queue), other
errors, p50/p95 latency, answers equal to that user's answer asked alone (greedy, so a
mix-up of images or histories shows; the distinct reference answers are counted so the
check can be seen to be able to fail). Beside it, in the same run, the same class against
a trivial Gradio endpoint with the same inputs and the same queue settings: Gradio's own
floor on this machine. Targets: 0 refused, 0 errors and every answer equal to solo in
every round; the app's p95 within 1.3x of the floor's over all of a class's rounds together
(one more row per class; a single round's p95 rests on its few slowest requests and moves
by itself, see part "floor"). Every round's row keeps its requests' latencies in the JSON.
Each wave starts once both servers are idle, and its row also gives the CPU seconds the
server process and this (client) process used during it (`server_cpu_s`, `client_cpu_s`,
and the floor's), far steadier than latency on a shared machine.
Part "floor" (not in "all"): the same sequence with a second trivial server in the app's
place, to show how far this measurement moves between two identical servers on this
machine (the spread of the p95 ratio that is noise, not the app's cost).
`--light-clients`: the same clients without gradio_client's per-request TLS set-up, which
otherwise takes most of the two cores (see `connect`); the servers' own costs then weigh
far more in the latencies.

Part "big": a random-weight LLaVA of about 76M parameters built in code, every answer
exactly --big-tokens tokens. 16 users at once: p95 against one answer asked alone (target
<= 5x); 30 users: answers per second against the same server started with
`--concurrency 1` (one at a time; target >= 3.5x); answers equal to solo answers.

    .venv/bin/python bench/load.py                          # both parts
    .venv/bin/python bench/load.py --part classroom --classes 30 --rounds 2
    .venv/bin/python bench/load.py --part big --json runs/load_big.json
    .venv/bin/python bench/load.py --part classroom --classes 30 --with-finetune
    .venv/bin/python bench/load.py --part classroom --light-clients
    .venv/bin/python bench/load.py --part floor --light-clients    # floor against floor

Bounded: --deadline-s for the whole run, a timeout per request, servers on 127.0.0.1 only
and stopped at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import gc
import json
import logging
import math
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "helpers")]

log = logging.getLogger("bench.load")

User = tuple[str, str, str]  # (image path, first question, second question)


@dataclass
class Request:
    user: int
    turn: int
    start: float
    end: float = 0.0
    answer: str | None = None
    error: str | None = None
    refused: bool = False

    @property
    def latency(self) -> float:
        return self.end - self.start


# --- users and reference answers ---------------------------------------------------------

def make_users(n: int, folder: Path) -> list[User]:
    """Distinct classroom scenes, one per user, with two questions each."""
    import numpy as np

    from vitdemo.classroom.scenes import generate_scene, questions_for

    out = []
    rng = np.random.default_rng(1234)
    for i in range(n):
        scene = generate_scene(rng, size=96)
        path = folder / f"user{i:03d}.png"
        scene.image.save(path)
        qs = questions_for(scene, rng)
        second = qs[1].question if len(qs) > 1 else "How many shapes are there?"
        out.append((str(path), qs[0].question, second))
    return out


def references(model: str, users: list[User], max_new_tokens: int, turns: int) -> list[tuple[str, ...]]:
    """Each user's answers from the model asked alone, in this process (the /chat path)."""
    from vitdemo.chat.conversation import GenerationSettings
    from vitdemo.chat.session import history_to_session
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    engine = Engine(load_model(model))
    gen = GenerationSettings(max_new_tokens=max_new_tokens)

    def ask(history: Any, image: str, q: str) -> str:
        pieces = list(history_to_session(history, image, q).stream_reply(engine, gen))
        return (pieces[-1] if pieces else "").strip()

    out = []
    for image, q1, q2 in users:
        a1 = ask(None, image, q1)
        if turns == 1:
            out.append((a1,))
            continue
        out.append((a1, ask([{"role": "user", "content": q1}, {"role": "assistant", "content": a1}], image, q2)))
    return out


# --- servers --------------------------------------------------------------------------------

def _free_port() -> int:
    from webapp import free_port

    return free_port()


@dataclass
class Server:
    url: str
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        import psutil

        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.NoSuchProcess:
            raise RuntimeError(f"the server (pid {self.pid}) has exited; see its log") from None
        return times.user + times.system


@contextlib.contextmanager
def server(args: list[str], tmp: Path, name: str, start_timeout_s: float = 240.0) -> Iterator[Server]:
    """A server process on 127.0.0.1 (`python app.py` + args, or this file's trivial app);
    yields it once it answers; stopped at the end."""
    port = _free_port()
    log_path = tmp / f"{name}.log"
    env = {**os.environ, "VITDEMO_HOME": str(tmp / f"home-{name}"), "VITDEMO_HOST": "127.0.0.1"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer in {start_timeout_s:.0f}s") from None
                time.sleep(0.5)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def serve_trivial(port: int) -> None:
    """A Gradio app whose /chat takes the app's inputs (file, text, JSON) and returns at once,
    queued with the app's default queue settings: the floor of Gradio's own per-request work."""
    import gradio as gr

    from vitdemo.config import Settings

    settings = Settings()

    def chat(image: str | None, question: str, history: Any = None) -> str:
        return f"{len(question or '')} characters"

    with gr.Blocks(analytics_enabled=False) as demo:
        image, question = gr.File(type="filepath"), gr.Textbox()
        history, answer = gr.JSON(), gr.Textbox()
        gr.Button().click(chat, [image, question, history], answer, api_name="chat")
    try:  # the app's own queue set-up where it exists, else the same two figures
        from vitdemo.ui.queue_limit import configure_queue
        configure_queue(demo, settings)
    except ImportError:
        demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    demo.launch(server_name="127.0.0.1", server_port=port, ssr_mode=False, quiet=True)


# --- clients --------------------------------------------------------------------------------

@functools.cache
def _shared_tls_context() -> ssl.SSLContext:
    """One TLS context (with the certificates httpx loads by default) for every client."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def connect(url: str, n: int, timeout_s: float, light: bool = False) -> list[Any]:
    """n gradio_client Clients (each reads the app's config once), connected 8 at a time.

    `light`: the clients share one TLS context. By default gradio_client opens a new httpx
    connection for each upload, submit and stream, and httpx builds a new TLS context for
    each, even for plain http: about 21 ms of CPU each. A wave of 100 then costs this process
    20-37 CPU-s instead of 1.3-7.4, on the cores the measured servers also use. Real students
    pay that on their own devices, so light clients leave the servers' costs far more visible
    (docs/reliability.md)."""
    from gradio_client import Client

    verify: Any = _shared_tls_context() if light else True

    def one(_: int) -> Any:  # gradio_client hands ssl_verify on to httpx as `verify`
        return Client(url, verbose=False, ssl_verify=verify, httpx_kwargs={"timeout": timeout_s})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def wave(clients: list[Any], users: list[User], turns: int, deadline: float, timeout_s: float) -> list[Request]:
    """Every user asks at the same moment (a barrier), then again with the history."""
    from gradio_client import handle_file

    requests: list[Request] = []
    mutex = threading.Lock()
    barrier = threading.Barrier(len(users))

    def user(i: int) -> None:
        image, q1, q2 = users[i]
        barrier.wait(timeout=timeout_s)
        history = None
        for turn, q in list(((1, q1), (2, q2)))[:turns]:
            r = Request(i, turn, time.perf_counter())
            try:
                if time.monotonic() > deadline:
                    raise TimeoutError("bench deadline reached")
                job = clients[i].submit(handle_file(image), q, history, api_name="/chat")
                r.answer = job.result(timeout=timeout_s)
            except Exception as err:  # noqa: BLE001 - counted and reported
                r.error = f"{type(err).__name__}: {err}"[:300]
                r.refused = type(err).__name__ in ("QueueError", "ValidationError") or "Queue is full" in str(err)
            r.end = time.perf_counter()
            with mutex:
                requests.append(r)
            if r.error:
                return
            history = [{"role": "user", "content": q1}, {"role": "assistant", "content": r.answer or ""}]

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    return requests


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in this process during a wave: collect before it, none inside.

    This one process stands for a whole class's devices. With torch imported (the reference
    answers) a full collection here walks hundreds of thousands of objects, stalling every
    student's thread at once, inside whichever server's wave it happens to land. Rounds of a
    class of 30 where one wave's client CPU doubled (0.58-0.77 s against 0.27-0.34) had the
    ratio at 1.85x and 2.56x when that fell in the app's wave, and at 0.57-0.65x when in the
    floor's."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def paused_wave(clients: list[Any], users: list[User], turns: int, deadline: float,
                timeout_s: float) -> list[Request]:
    """`wave` with this process's garbage collector paused (see `collector_paused`)."""
    with collector_paused():
        return wave(clients, users, turns, deadline, timeout_s)


def settle(servers: list[Server], window_s: float = 0.5, quiet_cpu_s: float = 0.03, timeout_s: float = 30.0) -> None:
    """Wait until no server is busy (each used under `quiet_cpu_s` of CPU in `window_s`), so
    a wave never shares the cores with work the other server is still finishing."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        before = [srv.cpu_s() for srv in servers]
        time.sleep(window_s)
        if all(srv.cpu_s() - b < quiet_cpu_s for srv, b in zip(servers, before)):
            return
    log.warning("servers still busy after %.0f s; measuring anyway", timeout_s)


def timed_wave(srv: Server, clients: list[Any], users: list[User], deadline: float,
               timeout_s: float) -> tuple[list[Request], dict[str, float]]:
    """A two-turn wave, with the CPU seconds the server process and this (client) process
    used during it: where the time of a wave goes, far less noisy than its latency."""
    with collector_paused():
        server_before, client_before = srv.cpu_s(), time.process_time()
        requests = wave(clients, users, 2, deadline, timeout_s)
    cpu = {"server": round(srv.cpu_s() - server_before, 2), "client": round(time.process_time() - client_before, 2)}
    return requests, cpu


def solo_latency(client: Any, user: User, n: int = 3) -> float:
    """Median time of one request with nothing else running."""
    from gradio_client import handle_file

    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.predict(handle_file(user[0]), user[1], None, api_name="/chat")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- figures --------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(round(q * (len(ordered) - 1)))))
    return ordered[k]


def summarise(requests: list[Request], refs: list[tuple[str, ...]] | None, label: str) -> dict[str, Any]:
    done = [r for r in requests if r.error is None]
    lat = [r.latency for r in done]
    span = (max(r.end for r in requests) - min(r.start for r in requests)) if requests else float("nan")
    out: dict[str, Any] = {
        "scenario": label, "requests": len(requests), "answered": len(done),
        "refused": sum(r.refused for r in requests),
        "other_errors": sum(1 for r in requests if r.error and not r.refused),
        "p50_s": round(percentile(lat, 0.5), 3), "p95_s": round(percentile(lat, 0.95), 3),
        "max_s": round(max(lat), 3) if lat else None,
        "wall_s": round(span, 3), "answers_per_s": round(len(done) / span, 3) if span else None,
        "errors": sorted({r.error for r in requests if r.error})[:3],
    }
    if refs is not None:
        wrong = [r for r in done if r.answer != refs[r.user][r.turn - 1]]
        out["equal_to_solo"] = len(done) - len(wrong)
        out["distinct_reference_answers"] = len({a for pair in refs for a in pair})
        out["wrong_examples"] = [(r.user, r.turn, r.answer, refs[r.user][r.turn - 1]) for r in wrong[:3]]
    return out


def emit(results: list[dict[str, Any]], row: dict[str, Any]) -> None:
    results.append(row)
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("latencies_s")}), flush=True)


# --- the parts --------------------------------------------------------------------------

def paired_rounds(args: argparse.Namespace, n: int, floor_server: Server, measured: Server,
                  users: list[User], refs: list[tuple[str, ...]] | None, label: str, deadline: float,
                  results: list[dict[str, Any]]) -> list[Any]:
    """--rounds waves of `users` against the floor, then the same against `measured`, each
    wave once both servers are idle; one row per round with `measured`'s p95 over the
    floor's, then one row over all the rounds' requests together (`pooled_row`). Returns
    the measured server's clients."""
    measured_clients = connect(measured.url, n, args.timeout_s, args.light_clients)
    floor_clients = connect(floor_server.url, n, args.timeout_s, args.light_clients)
    solo = solo_latency(measured_clients[0], users[0])
    floor_solo = solo_latency(floor_clients[0], users[0])
    all_measured: list[Request] = []
    all_floor: list[Request] = []
    rounds_done = 0
    for rnd in range(1, args.rounds + 1):
        if time.monotonic() > deadline:
            break
        settle([measured, floor_server])
        floor_requests, floor_cpu = timed_wave(floor_server, floor_clients, users, deadline, args.timeout_s)
        all_floor += floor_requests
        floor = summarise(floor_requests, None, "floor")
        settle([measured, floor_server])
        requests, cpu = timed_wave(measured, measured_clients, users, deadline, args.timeout_s)
        all_measured += requests
        row = summarise(requests, refs, f"{label}, class of {n}, round {rnd}")
        row.update(students=n, solo_s=round(solo, 3), floor_solo_s=round(floor_solo, 3),
                   **beside_floor(row, floor),
                   server_cpu_s=cpu["server"], client_cpu_s=cpu["client"],
                   floor_server_cpu_s=floor_cpu["server"], floor_client_cpu_s=floor_cpu["client"],
                   latencies_s=latencies(requests), floor_latencies_s=latencies(floor_requests))
        emit(results, row)
        rounds_done = rnd
    if rounds_done:
        emit(results, pooled_row(all_measured, all_floor, refs, label, n, rounds=rounds_done))
    return measured_clients


def beside_floor(row: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The floor's figures for a row, and the row's p95 over the floor's."""
    return {"floor_p95_s": floor["p95_s"], "floor_p50_s": floor["p50_s"], "floor_refused": floor["refused"],
            "floor_requests": floor["requests"], "floor_answered": floor["answered"],
            "p95_over_floor": round(row["p95_s"] / floor["p95_s"], 2) if floor["p95_s"] else None}


def latencies(requests: list[Request]) -> list[float]:
    """Each answered request's latency, sorted (kept in the JSON so any statistic can be redone)."""
    return sorted(round(r.latency, 3) for r in requests if r.error is None)


def pooled_row(measured: list[Request], floor: list[Request], refs: list[tuple[str, ...]] | None, label: str,
               n: int, rounds: int) -> dict[str, Any]:
    """One class's requests of all its rounds together, beside the floor's of the same rounds.

    The p95 of one round (60 requests for a class of 30) is its fourth-slowest request, so
    it moves a lot by itself: two identical trivial servers gave round ratios of 0.70-1.64
    for a class of 30 (docs/reliability.md). Over all the rounds it rests on several times
    more requests, and this row's ratio is the one held against the 1.3x target."""
    row = summarise(measured, refs, f"{label}, class of {n}, all {rounds} rounds")
    del row["wall_s"], row["answers_per_s"]  # the rounds' span includes the pauses between them
    row.update(students=n, rounds=rounds, **beside_floor(row, summarise(floor, None, "floor")))
    return row


def part_classroom(args: argparse.Namespace, tmp: Path, deadline: float, results: list[dict[str, Any]]) -> None:
    from vitdemo.config import Settings

    model = str(ROOT / "assets" / "classroom")
    users_all = make_users(max(args.classes), tmp)
    t0 = time.perf_counter()
    refs_all = references(model, users_all, Settings().max_new_tokens, turns=2)
    print(f"classroom: references for {len(users_all)} users computed alone in {time.perf_counter() - t0:.1f}s",
          flush=True)
    for n in args.classes:
        users, refs = users_all[:n], refs_all[:n]
        with server([str(ROOT / "app.py")], tmp, f"app{n}") as app_server, \
                server([__file__, "--serve-trivial"], tmp, f"trivial{n}") as floor_server:
            app_clients = paired_rounds(args, n, floor_server, app_server, users, refs, "classroom", deadline,
                                        results)
            if args.with_finetune and n == args.classes[0] and time.monotonic() < deadline:
                proc = start_finetune(tmp / "home-ft", model)
                try:
                    time.sleep(10)  # past the runner's start-up, into training steps
                    row = summarise(paused_wave(app_clients, users, 2, deadline, args.timeout_s), refs,
                                    f"classroom, class of {n}, while a fine-tune runs")
                    row["finetune_still_running"] = proc.poll() is None
                    emit(results, row)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)


def part_floor_spread(args: argparse.Namespace, tmp: Path, deadline: float, results: list[dict[str, Any]]) -> None:
    """The classroom part with a second trivial server in the app's place: how far the
    floor's p95 moves against itself, round to round, on this machine. A ratio this
    measurement gives two identical servers is noise, not the app's cost."""
    users_all = make_users(max(args.classes), tmp)
    for n in args.classes:
        with server([__file__, "--serve-trivial"], tmp, f"trivial-b{n}") as second, \
                server([__file__, "--serve-trivial"], tmp, f"trivial{n}") as floor_server:
            paired_rounds(args, n, floor_server, second, users_all[:n], None, "floor against floor", deadline,
                          results)


def build_big_llava(out: Path, tokens: int) -> tuple[str, int]:
    """A random-weight LLaVA of about 76M parameters, built in code, that always answers
    exactly `tokens` tokens (min_new_tokens in its generation config)."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from tiny_models import TinyLlavaSpec, build_tiny_llava

    spec = TinyLlavaSpec(image_size=96, patch_size=12, vision_hidden=384, vision_layers=6, vision_heads=6,
                         text_hidden=768, text_layers=13, text_heads=12, text_kv_heads=4, vocab_size=2048)
    build_tiny_llava(out, seed=0, spec=spec)
    config = GenerationConfig.from_pretrained(out)
    config.min_new_tokens = tokens
    config.save_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    return str(out), n_params


def part_big(args: argparse.Namespace, tmp: Path, deadline: float, results: list[dict[str, Any]]) -> None:
    model, n_params = build_big_llava(tmp / "big_llava", args.big_tokens)
    users = make_users(30, tmp)
    refs = references(model, users, args.big_tokens, turns=1)
    print(f"big LLaVA: {n_params / 1e6:.1f}M parameters, {args.big_tokens} tokens per answer", flush=True)
    flags = [str(ROOT / "app.py"), "--model", model, "--max-new-tokens", str(args.big_tokens)]
    with server(flags, tmp, "big") as srv:
        clients = connect(srv.url, 30, args.timeout_s, args.light_clients)
        solo = solo_latency(clients[0], users[0])
        row = summarise(paused_wave(clients[:16], users[:16], 1, deadline, args.timeout_s), refs,
                        "big LLaVA, 16 users")
        row.update(solo_s=round(solo, 3), p95_over_solo=round(row["p95_s"] / solo, 2), n_params=n_params)
        emit(results, row)
        batched = summarise(paused_wave(clients, users, 1, deadline, args.timeout_s), refs, "big LLaVA, 30 users")
    with server([*flags, "--concurrency", "1"], tmp, "big-serial") as srv:
        clients = connect(srv.url, 30, args.timeout_s, args.light_clients)
        serial = summarise(paused_wave(clients, users, 1, deadline, args.timeout_s), refs,
                           "big LLaVA, 30 users, serial server (--concurrency 1)")
    batched.update(serial_answers_per_s=serial["answers_per_s"], serial_p95_s=serial["p95_s"],
                   serial_equal_to_solo=serial.get("equal_to_solo"),
                   throughput_over_serial=round(batched["answers_per_s"] / serial["answers_per_s"], 2)
                   if batched["answers_per_s"] and serial["answers_per_s"] else None)
    emit(results, batched)


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


def verdicts(results: list[dict[str, Any]], rounds_asked: int) -> list[tuple[str, bool]]:
    """Every round of a class: 0 refused, 0 errors, all answers equal to solo. A class over
    all its rounds: every round asked was run and every request answered, and the p95 is
    within 1.3x the floor's. A round's own ratio is printed beside it, flagged over 1.3x."""
    out = []
    for r in results:
        classroom = r["scenario"].startswith("classroom, class of")
        if classroom and "rounds" not in r and "round " in r["scenario"]:
            alone = f"p95 {r['p95_over_floor']}x floor this round alone{', over 1.3x' if over(r) else ''}"
            out.append((f"{r['scenario']}: 0 refused, 0 errors, all equal to solo ({alone})",
                        r["refused"] == 0 and r["other_errors"] == 0 and r["equal_to_solo"] == r["requests"]))
        elif classroom and "rounds" in r:
            rounds_over = sum(over(x) for x in results if "rounds" not in x and x.get("students") == r["students"]
                              and x["scenario"].startswith("classroom, class of"))
            out.append((f"{r['scenario']}: p95 <= 1.3x floor ({r['p95_over_floor']}x; {r['answered']} of "
                        f"{2 * r['students'] * rounds_asked} requests answered, floor {r['floor_answered']}; "
                        f"{rounds_over} of {r['rounds']} rounds over 1.3x alone)",
                        not over(r) and all_answered(r, rounds_asked)))
        elif r["scenario"] == "big LLaVA, 16 users":
            out.append((f"big 16 users: p95 <= 5x solo ({r['p95_over_solo']}x), all equal to solo",
                        r["p95_over_solo"] <= 5 and r["equal_to_solo"] == r["requests"]))
        elif r["scenario"] == "big LLaVA, 30 users":
            out.append((f"big 30 users: throughput >= 3.5x serial ({r['throughput_over_serial']}x), all equal to solo",
                        (r["throughput_over_serial"] or 0) >= 3.5 and r["equal_to_solo"] == r["requests"]))
    return out


def ratio_of(row: dict[str, Any]) -> float | None:
    """A row's p95 over the floor's, or None when there is no finite one."""
    ratio = row.get("p95_over_floor")
    return ratio if ratio is not None and math.isfinite(ratio) else None


def over(row: dict[str, Any], limit: float = 1.3) -> bool:
    """A row's p95 over `limit` times the floor's (or no ratio at all)."""
    ratio = ratio_of(row)
    return ratio is None or ratio > limit


def all_answered(row: dict[str, Any], rounds_asked: int) -> bool:
    """Every turn of every student answered by both servers; for a class over its rounds, also
    every round asked run."""
    rounds = row.get("rounds", 1)
    answered = (row["requests"] == row["answered"] == row["floor_requests"] == row["floor_answered"]
                == 2 * row["students"] * rounds)
    return answered and ("rounds" not in row or rounds == rounds_asked)


def floor_spread_summary(results: list[dict[str, Any]], rounds_asked: int) -> int:
    """Print how far the floor's p95 moved against itself, round by round and over each
    class's rounds together; 0 if every round asked ran and every request of both servers,
    every turn of every student, was answered."""
    rounds = [r for r in results if "rounds" not in r]
    for name, rows in (("rounds", rounds), ("classes over all their rounds", [r for r in results if "rounds" in r])):
        ratios = [x for x in map(ratio_of, rows) if x is not None]
        if ratios:
            print(f"floor against floor, {name}: p95 ratio {min(ratios)}-{max(ratios)}x, "
                  f"{sum(x <= 1.3 for x in ratios)} of {len(rows)} within 1.3x")
    complete = all(all_answered(r, rounds_asked) for r in results)
    if not complete:
        print("FAIL  some rounds did not run or some requests were not answered (see the rows above)")
    finite = all(ratio_of(r) is not None for r in results)
    return 0 if rounds and finite and complete else 1


def write_json(path: Path, header: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The run's header and one line per row (rows hold hundreds of latencies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps(header, indent=1)[:-2]  # without the closing brace: the rows follow
    rows = ",\n  ".join(json.dumps(row) for row in results)
    path.write_text(f'{head},\n "results": [\n  {rows}\n ]\n}}\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "classroom", "big", "floor"), default="all",
                        help="floor: the classroom part with a second trivial server in the app's place "
                             "(the measurement's own spread; not part of all)")
    parser.add_argument("--classes", type=int, nargs="+", default=[30, 100], help="class sizes (classroom part)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in a row per class size")
    parser.add_argument("--big-tokens", type=int, default=32, help="answer length of the ~76M LLaVA")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    parser.add_argument("--deadline-s", type=float, default=1800.0, help="whole run")
    parser.add_argument("--with-finetune", action="store_true", help="one more wave while a fine-tune trains")
    parser.add_argument("--light-clients", action="store_true",
                        help="clients share one TLS context: far less client CPU on the shared cores (see connect)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.serve_trivial:
        serve_trivial(args.port)
        return 0
    deadline = time.monotonic() + args.deadline_s
    # A tree exported with `git archive` (to bench a commit while others edit the checkout)
    # is not a git checkout: it names its commit through BENCH_COMMIT.
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = not os.environ.get("BENCH_COMMIT") and bool(subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    print(f"commit {commit}{' + uncommitted changes' if dirty else ''}"
          f"{', light clients' if args.light_clients else ''}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="vitdemo-load-"))
    results: list[dict[str, Any]] = []
    try:
        if args.part in ("all", "classroom"):
            part_classroom(args, tmp, deadline, results)
        if args.part in ("all", "big") and time.monotonic() < deadline:
            part_big(args, tmp, deadline, results)
        if args.part == "floor":
            part_floor_spread(args, tmp, deadline, results)
    finally:  # what was measured is kept even when a later part fails
        if args.json:
            write_json(args.json, {"commit": commit, "dirty": dirty, "light_clients": args.light_clients,
                                   "rounds_asked": args.rounds}, results)
    if args.part == "floor":  # a measurement of noise: nothing to pass, but every request must be answered
        return floor_spread_summary(results, args.rounds)
    checks = verdicts(results, args.rounds)
    if args.part in ("all", "classroom"):
        measured = {r.get("students") for r in results if "rounds" in r}
        checks += [(f"classroom, class of {n}: measured before the deadline", False)
                   for n in args.classes if n not in measured]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if checks and all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
