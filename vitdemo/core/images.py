"""Open any uploaded image safely: header checks before decoding, then a clean RGB image.

`open_image` is the one door every image goes through (chat uploads, datasets, tests).
It never trusts the file name or the extension, only the bytes:

- SVG / HTML / XML named as an image are refused (never rendered, never decoded);
- only raster formats from an allow-list are opened (no EPS/PDF, which need Ghostscript);
- the pixel count is read from the header and checked *before* any pixel is decoded, so a
  40000x40000 decompression bomb is refused in milliseconds with no memory spent;
- truncated or corrupt files raise ImageError instead of returning half an image;
- EXIF orientation is applied (phone photos come out upright);
- every mode (CMYK, RGBA, LA, P with transparency, I;16, I, F, 1, ...) becomes RGB;
  transparency is composited on white; animated / multi-page files give the first frame.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitdemo.errors import ImageError

logger = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than any phone photo, far below a bomb
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # an encoded image larger than this is refused unread
# Raster formats Pillow decodes itself, without external programs.
# (No TGA: it has no magic number, so random bytes could pass as one.)
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG covers MPO


def _read_bytes(source: ImageSource, max_bytes: int) -> tuple[bytes, str]:
    """Bytes of the source (at most max_bytes + 1 are read) and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "the uploaded data"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name or str(path)
        if not path.is_file():
            raise ImageError(f"image {name!r} not found (looked for {path})")
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"cannot read image {name!r}: {exc.strerror or exc}") from None
    elif hasattr(source, "read"):
        name = str(getattr(source, "name", "the uploaded file"))
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{name} was opened in text mode; open it with 'rb'")
        data = bytes(data)
    else:
        raise ImageError(f"cannot open an image from a {type(source).__name__}; give a path, bytes or a file")
    if len(data) > max_bytes:
        raise ImageError(f"image {name!r} is larger than {max_bytes // (1024 * 1024)} MB; use a smaller file")
    if not data:
        raise ImageError(f"image {name!r} is empty (0 bytes)")
    return data, name


def _looks_like_markup(data: bytes) -> bool:
    """SVG, HTML or XML text (possibly after a BOM and whitespace)."""
    head = data[:512]
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            head = head[len(bom):].decode(encoding, errors="ignore").encode("utf-8")
            break
    # Every image format starts with binary magic; markup starts with "<" after whitespace.
    return head.lstrip().startswith(b"<")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha composited on white; high bit depths scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # 0..65535 -> 0..255
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            if 0.0 <= lo and hi <= 255.0:
                pass  # already 8-bit range
            elif 0.0 <= lo and hi <= 65535.0:
                arr = arr / 257.0
            else:
                arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0  # stretch to the full range
        arr = np.nan_to_num(arr, nan=0.0)
        gray = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))  # mode "L"
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1, ...: Pillow's converters handle these directly.
    return img.convert("RGB")


def open_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Open `source` (path, bytes or binary file) as a fully loaded, upright RGB image.

    Raises ImageError with a message a person can act on for anything that is not a
    usable raster image: markup, unknown bytes, truncated data, too many pixels.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    data, name = _read_bytes(source, max_bytes)
    if _looks_like_markup(data):
        raise ImageError(
            f"{name!r} is SVG/HTML/XML text, not a photo or picture; export it as PNG or JPEG"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns about bombs (our check below is stricter) and about corrupt
            # metadata it skips; neither is the user's business once the decode succeeds.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))  # header only
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(f"{name!r} has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(
                    f"{name!r} is {width}x{height} = {width * height:,} pixels; the limit is "
                    f"{max_pixels:,}. Resize it (for example to 2048 px on the long side)."
                )
            fmt = img.format or "?"
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF / multi-page TIFF: the first frame
            img.load()  # decode now, inside the try: truncated data raises here
            img = ImageOps.exif_transpose(img)  # phone photos upright (no-op without EXIF)
            rgb = _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires inside Image.open for sizes far above any sane limit.
        raise ImageError(
            f"{name!r} has far more than the {max_pixels:,} pixels allowed (a decompression bomb?): "
            f"{str(exc).rstrip('.')}. Resize it (for example to 2048 px on the long side)."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name!r} is not an image this app can read (supported: "
            f"{', '.join(ALLOWED_FORMATS)}); the file may be damaged or have the wrong extension"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError,
            ZeroDivisionError, KeyError, AttributeError) as exc:
        # Pillow raises all of these on damaged files ("image file is truncated", ...).
        raise ImageError(f"{name!r} is damaged or truncated and cannot be decoded ({exc})") from None
    if rgb.mode != "RGB":
        raise ImageError(f"internal: {name!r} converted to {rgb.mode}, expected RGB")
    logger.debug("opened %s: %s %dx%d", name, fmt, rgb.width, rgb.height)
    return rgb.copy() if rgb is img else rgb
