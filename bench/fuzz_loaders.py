"""A longer fuzz run (hypothesis) over the image and dataset loaders than the test suite's.

Targets: `open_image` (random bytes, mutated PNG/JPEG/GIF/BMP/TIFF/WEBP files),
`parse_annotation_text` (random text, mutated valid JSON/JSONL/CSV annotations) and
`extract_zip` (mutated zip archives). Property: each returns normally or raises its typed
error (ImageError / DatasetError); anything else is a crash. Prints inputs tried, crashes
and time. Bounded by --seconds (each target gets an equal share) and --examples.

    .venv/bin/python bench/fuzz_loaders.py --seconds 300
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from vitdemo.finetune.data.archive import ArchiveLimits, extract_zip  # noqa: E402
from vitdemo.core.images import open_image  # noqa: E402
from vitdemo.finetune.data.formats import ParseLimits, parse_annotation_text  # noqa: E402
from vitdemo.errors import DatasetError, ImageError  # noqa: E402


def _seed_images() -> list[bytes]:
    out = []
    img = Image.new("RGB", (16, 12), (10, 200, 30))
    img.paste((200, 10, 10), (2, 2, 8, 8))
    for fmt, kw in [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("BMP", {}), ("TIFF", {}),
                    ("WEBP", {"lossless": True}), ("PNG", {"bits": 4})]:
        buf = io.BytesIO()
        (img.convert("P") if kw.get("bits") else img).save(buf, format=fmt, **{k: v for k, v in kw.items()
                                                                                if k != "bits"})
        out.append(buf.getvalue())
    return out


SEED_TEXTS = [
    json.dumps([{"id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square."}]}]),
    "\n".join(json.dumps({"image": f"{i}.png", "question": "What?", "answer": "red"}) for i in range(3)),
    "image,question,answer\na.png,What colour?,red\nb.png,How many?,2\n",
    json.dumps([{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}],
                 "images": ["a.png"]}]),
]


def _seed_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/train.jsonl", SEED_TEXTS[1])
        zf.writestr("data/0.png", _seed_images()[0])
        zf.writestr("data/sub/1.png", _seed_images()[0])
    return buf.getvalue()


SEEDS = _seed_images()
ZIP = _seed_zip()
mutations = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=12)


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[: max(1, cut % (len(buf) + 1))])


class Run:
    def __init__(self) -> None:
        self.tried = 0
        self.crashes: list[str] = []

    def check(self, fn: Callable[[], object], allowed: tuple[type[BaseException], ...]) -> None:
        self.tried += 1
        try:
            fn()
        except allowed:
            pass
        except Exception:  # noqa: BLE001 - a crash: recorded and counted
            self.crashes.append(traceback.format_exc(limit=4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="time budget for all targets together")
    parser.add_argument("--examples", type=int, default=200_000, help="cap per target")
    args = parser.parse_args()
    share = args.seconds / 5
    tmp = Path(tempfile.mkdtemp(prefix="vitdemo-fuzz-"))
    limits = ParseLimits()
    zip_limits = ArchiveLimits(max_total_bytes=8 * 1024 * 1024, max_member_bytes=4 * 1024 * 1024)
    total = Run()

    def budget() -> settings:
        # Generate only: the stop signal at the end of a share must not start a shrink.
        return settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck))

    def timed(name: str, test: Callable[[], None]) -> None:
        before, start = total.tried, time.perf_counter()
        stop_at = time.monotonic() + share
        Run.stop_at = stop_at  # type: ignore[attr-defined]
        try:
            test()
        except _Done:
            pass
        print(f"{name:28s} {total.tried - before:7d} inputs  {time.perf_counter() - start:6.1f}s", flush=True)

    class _Done(Exception):
        pass

    def guard() -> None:
        if time.monotonic() > Run.stop_at:  # type: ignore[attr-defined]
            raise _Done

    @budget()
    @given(st.binary(max_size=4096))
    def images_random(data: bytes) -> None:
        guard()
        total.check(lambda: open_image(data, max_pixels=4_000_000), (ImageError,))

    @budget()
    @given(st.sampled_from(range(len(SEEDS))), mutations, st.integers(0, 1 << 16))
    def images_mutated(seed: int, flips: list[tuple[int, int]], cut: int) -> None:
        guard()
        total.check(lambda: open_image(_mutate(SEEDS[seed], flips, cut), max_pixels=4_000_000), (ImageError,))

    @budget()
    @given(st.text(max_size=2000), st.sampled_from(["a.json", "a.jsonl", "a.csv", "a.tsv", "a"]))
    def text_random(text: str, name: str) -> None:
        guard()
        total.check(lambda: parse_annotation_text(text, name, limits), (DatasetError,))

    @budget()
    @given(st.sampled_from(range(len(SEED_TEXTS))), st.lists(st.tuples(st.integers(0, 4000), st.characters()),
                                                               max_size=10), st.integers(0, 4000))
    def text_mutated(seed: int, edits: list[tuple[int, str]], cut: int) -> None:
        guard()
        chars = list(SEED_TEXTS[seed])
        for pos, ch in edits:
            chars[pos % len(chars)] = ch
        text = "".join(chars)[: max(1, cut % (len(chars) + 1))]
        name = ["a.json", "a.jsonl", "a.csv", "a.json"][seed]
        total.check(lambda: parse_annotation_text(text, name, limits), (DatasetError,))

    counter = iter(range(10**9))

    @budget()
    @given(mutations, st.integers(0, 1 << 16))
    def zips_mutated(flips: list[tuple[int, int]], cut: int) -> None:
        guard()
        n = next(counter)
        path = tmp / f"{n}.zip"
        path.write_bytes(_mutate(ZIP, flips, cut + len(ZIP) * (cut % 2)))  # half the cases whole length
        dest = tmp / f"out{n}"
        dest.mkdir()
        total.check(lambda: extract_zip(path, dest, zip_limits), (DatasetError,))
        for p in sorted(dest.rglob("*"), reverse=True):  # keep the disk bounded
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        dest.rmdir()
        path.unlink()
        escaped = [p for p in tmp.iterdir() if not p.name.endswith(".zip") and not p.name.startswith("out")]
        if escaped:
            total.crashes.append(f"files written outside the destination: {escaped}")

    start = time.perf_counter()
    for name, test in [("open_image random bytes", images_random), ("open_image mutated files", images_mutated),
                       ("annotations random text", text_random), ("annotations mutated", text_mutated),
                       ("extract_zip mutated zips", zips_mutated)]:
        timed(name, test)
    elapsed = time.perf_counter() - start
    print(f"inputs tried: {total.tried}; crashes found: {len(total.crashes)}; time: {elapsed:.1f}s")
    for crash in total.crashes[:5]:
        print("---\n" + crash)
    return 1 if total.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
