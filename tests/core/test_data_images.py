"""open_image: hostile and unusual images (issue 6's list), each a clear ImageError or a clean RGB."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from vitdemo.core.images import open_image
from vitdemo.errors import ImageError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A valid 40000x40000 1-bit PNG (1.6 G pixels) that is only ~200 KB on disk."""
    side = 40_000
    row = b"\x00" + b"\x00" * (side // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def test_decompression_bomb_refused_fast(bomb_png: bytes) -> None:
    assert len(bomb_png) < 1_000_000
    start = time.perf_counter()
    with pytest.raises(ImageError, match="pixels"):
        open_image(bomb_png)
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageError, match=r"300x200 = 60,000 pixels; the limit is 50,000"):
        open_image(data, max_pixels=50_000)
    assert open_image(data, max_pixels=60_000).size == (300, 200)


def test_huge_jpeg_header_refused() -> None:
    data = bytearray(_encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width in the SOF header
    start = time.perf_counter()
    with pytest.raises(ImageError, match="3600000000 pixels"):
        open_image(bytes(data))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("payload, match", [
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", "SVG/HTML"),
    (b"\xef\xbb\xbf  \n<!DOCTYPE html><html><body>hi</body></html>", "SVG/HTML"),
    (b"<?xml version='1.0'?><svg/>", "SVG/HTML"),
    ("<svg/>".encode("utf-16"), "SVG/HTML"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not an image"),
    (b"", "empty"),
    (b"GIF89a", "damaged|not an image"),
])
def test_not_images_refused(payload: bytes, match: str, tmp_path) -> None:
    path = tmp_path / "photo.png"  # the extension lies
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=match):
        open_image(path)


def test_truncated_jpeg_refused() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    data = _encode(img, "JPEG", quality=90)
    with pytest.raises(ImageError, match="damaged or truncated"):
        open_image(data[: len(data) // 2])


def test_truncated_png_refused() -> None:
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _encode(img, "PNG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        open_image(data[: len(data) // 2])


def test_missing_file_and_wrong_type(tmp_path) -> None:
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="cannot open an image from a int"):
        open_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "LA", "P", "I;16", "I", "F", "1", "L"])
def test_modes_become_rgb(mode: str) -> None:
    base = Image.new("RGB", (8, 6), (200, 30, 30))
    if mode == "I;16":
        img = Image.fromarray(np.full((6, 8), 40000, dtype=np.uint16))
    elif mode in ("I", "F"):
        img = Image.new(mode, (8, 6), 1000)
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    out = open_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (8, 6)
    if mode in ("I;16",):
        assert out.getpixel((0, 0)) == (155, 155, 155)  # 40000 / 257


def test_transparency_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    out = open_image(_encode(img, "PNG"))
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    assert open_image(_encode(pal, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = open_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)  # upright: portrait
    r, g, b = out.getpixel((10, 3))  # the left strip is now on top
    assert r > 200 and g < 60


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = open_image(buf.getvalue())
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50


def test_file_like_and_path(tmp_path) -> None:
    data = _encode(Image.new("RGB", (5, 7), (1, 2, 3)), "WEBP", lossless=True)
    path = tmp_path / "x.webp"
    path.write_bytes(data)
    assert open_image(path).getpixel((0, 0)) == (1, 2, 3)
    assert open_image(str(path)).size == (5, 7)
    with path.open("rb") as fh:
        assert open_image(fh).size == (5, 7)
    with pytest.raises(ImageError, match="larger than"):
        open_image(data, max_bytes=10)
