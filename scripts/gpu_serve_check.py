"""GPU serving check: the same requests served by vLLM (when installed) and by the app's own
batcher, side by side, on one CUDA GPU; prints one JSON object of figures. No network.

Requests: --users classroom scenes (one image and question each), greedy, --tokens new
tokens each (min = max, so every answer has the same length and both servers do the
same work). For each server: answers per second and generated tokens per second with all
users at once, and for the app also one user at a time (its serial throughput), so the
batcher's gain on this GPU can be read directly.

    python scripts/gpu_serve_check.py                      # the classroom model
    python scripts/gpu_serve_check.py --users 32 --tokens 64
    python scripts/gpu_serve_check.py --big                 # also a random ~1B LLaVA, 4-bit, batcher only

Without CUDA it stops at once with a message and exit status 2: there is nothing to measure
(the CPU figures come from bench/load.py). vLLM missing is reported, not fatal.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "helpers")]
CLASSROOM = ROOT / "assets" / "classroom"


def requests_for(n: int) -> list[tuple[Any, str]]:
    """n (image, question) pairs from distinct classroom scenes."""
    import numpy as np

    from vitdemo.classroom.scenes import generate_scene, questions_for

    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        scene = generate_scene(rng, size=96)
        out.append((scene.image, questions_for(scene, rng)[0].question))
    return out


def app_batcher(model_dir: str, reqs: list[tuple[Any, str]], tokens: int, quant: str) -> dict[str, Any]:
    """The app's path (Engine + stream_answer, i.e. its batching scheduler): all at once, then serially."""
    import torch

    from vitdemo.chat import conversation
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    engine = Engine(load_model(model_dir, device="cuda", quant=quant))
    engine.model.generation_config.min_new_tokens = tokens  # equal work per answer
    gen = conversation.GenerationSettings(max_new_tokens=tokens)

    def one(req: tuple[Any, str]) -> str:
        image, question = req
        return "".join(conversation.stream_answer(engine, [conversation.user_message(question, 1)], [image], gen))

    one(reqs[0])  # warm-up: CUDA kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
        batched = list(pool.map(one, reqs))
    together_s = time.perf_counter() - start
    start = time.perf_counter()
    serial = [one(r) for r in reqs]
    serial_s = time.perf_counter() - start
    n = len(reqs)
    return {
        "params_m": round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 1),
        "quant": quant, "together_s": round(together_s, 3), "serial_s": round(serial_s, 3),
        "answers_per_s": round(n / together_s, 2), "serial_answers_per_s": round(n / serial_s, 2),
        "tokens_per_s": round(n * tokens / together_s, 1),
        "throughput_over_serial": round(serial_s / together_s, 2),
        "greedy_equal_batched_vs_serial": sum(a == b for a, b in zip(batched, serial)),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def vllm_server(model_dir: str, reqs: list[tuple[Any, str]], tokens: int) -> dict[str, Any]:
    """The same requests through vLLM's offline engine (continuous batching), same prompts."""
    try:
        import vllm
    except ImportError:
        return {"skipped": "vllm is not installed here (pip install vllm on the GPU machine)"}
    from transformers import AutoProcessor

    from vitdemo.chat import conversation

    processor = AutoProcessor.from_pretrained(model_dir)
    prompts = [{"prompt": processor.apply_chat_template([conversation.user_message(q, 1)],
                                                         add_generation_prompt=True, tokenize=False),
                "multi_modal_data": {"image": image}} for image, q in reqs]
    try:
        llm = vllm.LLM(model=model_dir, max_model_len=512, gpu_memory_utilization=0.5, enforce_eager=False)
    except Exception as err:  # noqa: BLE001 - a model vLLM cannot serve is a finding, not a crash
        return {"error": f"vLLM could not load the model: {type(err).__name__}: {err}"[:500]}
    params = vllm.SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens)
    llm.generate(prompts[:1], params)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    together_s = time.perf_counter() - start
    start = time.perf_counter()
    for p in prompts:
        llm.generate([p], params, use_tqdm=False)
    serial_s = time.perf_counter() - start
    n = len(prompts)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"vllm": vllm.__version__, "together_s": round(together_s, 3), "serial_s": round(serial_s, 3),
            "answers_per_s": round(n / together_s, 2), "tokens_per_s": round(generated / together_s, 1),
            "throughput_over_serial": round(serial_s / together_s, 2)}


def build_big(out: Path) -> str:
    """A random-weight LLaVA of about 1.0B parameters built in code (Llama 2048 x 26, CLIP 1024 x 12)."""
    from tiny_models import TinyLlavaSpec, build_tiny_llava

    spec = TinyLlavaSpec(image_size=224, patch_size=14, vision_hidden=1024, vision_layers=12, vision_heads=16,
                         text_hidden=2048, text_layers=26, text_heads=16, text_kv_heads=4, vocab_size=4096)
    return str(build_tiny_llava(out, seed=0, spec=spec))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--big", action="store_true", help="also a random ~1B LLaVA, 4-bit, through the app's batcher")
    args = parser.parse_args()
    report: dict[str, Any] = {"ok": False, "users": args.users, "tokens": args.tokens}
    try:
        import torch

        report.update(torch=torch.__version__, cuda_available=torch.cuda.is_available())
        if not torch.cuda.is_available():
            report["error"] = ("no CUDA GPU visible to torch: this check measures serving on a GPU; "
                               "run it on a GPU machine (CPU figures: bench/load.py)")
            print(json.dumps(report))
            return 2
        report["gpu"] = torch.cuda.get_device_name(0)
        reqs = requests_for(args.users)
        report["app_classroom"] = app_batcher(str(CLASSROOM), reqs, args.tokens, quant="none")
        torch.cuda.empty_cache()
        report["vllm_classroom"] = vllm_server(str(CLASSROOM), reqs, args.tokens)
        if args.big:
            torch.cuda.empty_cache()
            report["app_big_4bit"] = app_batcher(build_big(Path(tempfile.mkdtemp()) / "big"), reqs,
                                                 args.tokens, quant="4bit")
        app = report["app_classroom"]
        report["ok"] = app["greedy_equal_batched_vs_serial"] == args.users and app["throughput_over_serial"] > 1
    except Exception as err:  # noqa: BLE001 - reported in the JSON with its traceback
        report["error"] = f"{type(err).__name__}: {err}"
        report["traceback"] = traceback.format_exc()[-3000:]
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
