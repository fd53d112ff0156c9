"""Hypothesis fuzz run over open_image and the dataset parsers (bounded example counts).

Property: whatever the bytes, open_image returns an RGB image or raises ImageError, and the
parsers return records/problems or raise DatasetError: never any other exception.
"""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitdemo.core.images import open_image
from vitdemo.finetune.data.formats import ParseLimits, parse_annotation_text
from vitdemo.errors import DatasetError, ImageError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _seed_images() -> list[bytes]:
    out = []
    img = Image.new("RGB", (12, 9), (10, 200, 30))
    for fmt, kw in [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("BMP", {}), ("TIFF", {}),
                    ("WEBP", {"lossless": True})]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


def _check_open(data: bytes) -> None:
    try:
        out = open_image(data, max_pixels=1_000_000)
    except ImageError:
        return
    assert out.mode == "RGB" and out.width * out.height <= 1_000_000


@FUZZ
@given(st.binary(max_size=2048))
def test_open_image_random_bytes(data: bytes) -> None:
    _check_open(data)


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)),
                                                     max_size=8), st.integers(1, 5000))
def test_open_image_mutated_files(seed: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_open(bytes(data[:cut]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["image", "images", "conversations", "messages", "from", "value", "role", "content",
                         "type", "text", "instruction", "response", "id"]), children, max_size=5),
    max_leaves=20,
)


def _check_parse(text: str, name: str) -> None:
    try:
        result = parse_annotation_text(text, name, ParseLimits(max_records=50))
    except DatasetError:
        return
    for r in result.records:
        for m in r.messages:
            assert m["role"] in ("user", "assistant", "system")
            assert all(p["type"] in ("image", "text") for p in m["content"])
        if r.ok:
            assert sum(p["type"] == "image" for m in r.messages for p in m["content"]) == len(r.images)
            assert r.answer.strip()
    for p in result.problems:
        assert p.message and p.fix


@FUZZ
@given(st.lists(json_values, max_size=6))
def test_parse_structured_json(values: list) -> None:
    _check_parse(json.dumps(values), "d.json")
    _check_parse("\n".join(json.dumps(v) for v in values), "d.jsonl")


@FUZZ
@given(st.text(max_size=400), st.sampled_from(["d.json", "d.jsonl", "d.csv", "d.tsv", "d.txt"]))
def test_parse_random_text(text: str, name: str) -> None:
    _check_parse(text, name)
