"""Reading images from untrusted files: the one place spikec opens an image.

Every command that takes images reads them here: `spikec run --image` and the Python
API's `generate(path, ...)` (spikec.runtime.model), `spikec eval` folders
(spikec.evaluate, spikec.datasets.digits.EvalItem.open_image) and `spikec compile
--calib` folders (spikec.calibration). An image file is untrusted input, so:

- its size is checked from the header before anything is decoded (a decompression
  bomb is refused without allocating its pixels);
- every error Pillow raises while identifying, verifying or decoding it (truncated
  data, bad PNG chunks or CRCs, not an image, broken animation frames, ...) becomes
  one `SpikecError` naming the file;
- 16-bit, 32-bit integer and float images are scaled to 8 bits (see `read_image`),
  not clipped as `Image.convert` does.

Reading sets process-wide state for its duration (a `warnings.catch_warnings` filter
that makes Pillow's DecompressionBombWarning an error, and `ImageFile.LOAD_TRUNCATED_IMAGES`
= False), restored afterwards; like `warnings.catch_warnings`, it is not meant to run
in several threads at once.

The checkpoint's processor may still refuse a well-formed image (Qwen2-VL: an aspect
ratio over 200). `spikec.frontend.export.processor_inputs` raises
`ProcessorRefusedImage` for that; a caller that knows the file name turns it into a
message naming the file with `naming_image`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from spikec.errors import SpikecError

#: Modes of unsigned 16-bit samples, scaled by v8 = (v * 255 + 32767) // 65535.
UINT16_MODES: tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N")


class ProcessorRefusedImage(SpikecError):
    """The checkpoint's processor refused a (well-formed) image, e.g. an aspect ratio over its limit.

    Raised by `spikec.frontend.export.processor_inputs`; the message starts with the
    image size ("image WxH: the qwen2_vl processor refuses it: ...") but not the file,
    which the processor never sees: wrap the call in `naming_image` to add it.
    """


def where_prefix(path: str | os.PathLike, where: str | None) -> str:
    """The start of an error message about image `path` read for `where`.

    `where` names the option or data file line the path came from ("--image x.png",
    "--calib DIR/data.jsonl:3", "--data DIR/data.jsonl:7"). The result always names
    the file: `where` alone if it already holds the path, else "`where`: `path`"
    (just the path when `where` is empty or None).
    """
    p = str(path)
    if not where:
        return p
    return where if p in where else f"{where}: {p}"


@contextlib.contextmanager
def naming_image(path: str | os.PathLike, *, where: str | None) -> Iterator[None]:
    """Re-raise a `ProcessorRefusedImage` raised inside the block as a `SpikecError` naming `path`.

    The message becomes "<where_prefix(path, where)>: image WxH: the <family> processor
    refuses it: <the processor's message>". Other exceptions pass through unchanged.
    """
    try:
        yield
    except ProcessorRefusedImage as exc:
        raise SpikecError(f"{where_prefix(path, where)}: {exc}") from None


def pixel_limit() -> int | None:
    """The most pixels (width x height) an image may have: Pillow's `Image.MAX_IMAGE_PIXELS`.

    Read at each call (default 89,478,485, about 0.25 GiB of RGB); None means no limit.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(limit)


def read_image(path: str | os.PathLike, *, where: str | None = None):
    """Read one image file, safely, as a fully loaded 8-bit PIL image (file closed).

    Args:
        path: the image file (any format Pillow reads: PNG, JPEG, BMP, GIF, TIFF, ...).
        where: the option or data-file line the path came from, put before the file
            name in error messages (see `where_prefix`).

    Returns:
        A `PIL.Image.Image` of 8-bit samples, in the file's own mode for 8-bit images
        ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", ...; `load_image` converts those to
        RGB exactly as `Image.convert("RGB")` does) and in mode "L" for high-depth
        grayscale images, scaled (never clipped) as follows, with v the stored sample:

        - unsigned 16 bit (modes I;16, I;16L, I;16B): v8 = round(v * 255 / 65535),
          computed exactly as (v * 255 + 32767) // 65535; so v = v8 * 257 gives v8 back;
        - 32-bit integer (mode I): if every v lies in [0, 255], v8 = v; else if every v
          lies in [0, 65535], the 16-bit rule above; else min-max scaling,
          v8 = ((v - min) * 255 + (max - min) // 2) // (max - min); a constant image
          outside [0, 65535] becomes 0 (negative) or 255;
        - 32-bit float (mode F): NaN or infinite samples are refused; if every v lies in
          [0, 1], v8 = floor(v * 255 + 0.5); else if in [0, 255], v8 = floor(v + 0.5);
          else if in [0, 65535], v8 = floor(v * 255 / 65535 + 0.5); else min-max,
          v8 = floor((v - min) * 255 / (max - min) + 0.5); a constant image outside
          [0, 65535] becomes 0 (negative) or 255.

        16-bit RGB(A) and gray+alpha PNGs are reduced to 8 bits by Pillow's decoder itself
        (the high byte, v >> 8, which also gives v8 back for v = v8 * 257). An animated
        image gives its first frame.

    Raises:
        SpikecError: naming the file (after `where`) when it does not exist or is not a
            file; declares more pixels than `pixel_limit()` ("image of WxH pixels is over
            the limit of N pixels (a decompression bomb?)", refused from the header,
            before decoding); has zero width or height; is not an image; or fails to
            verify or decode (truncated data, bad chunk or CRC, broken frame: any
            exception Pillow raises, `KeyboardInterrupt` aside).
    """
    from PIL import Image, ImageFile

    p = Path(path)
    prefix = where_prefix(p, where)
    if not p.exists():
        raise SpikecError(f"{prefix}: no such file")
    if not p.is_file():
        raise SpikecError(f"{prefix}: not a file")
    limit = pixel_limit()
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a partly grey image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # First pass: the header (size check) and, where the format has one, Pillow's
            # integrity check (every PNG chunk's CRC); verify() leaves the image unusable.
            with _open(p, prefix, limit) as im:
                im.verify()
            # Second pass: decode the first frame.
            with _open(p, prefix, limit) as im:
                im.seek(0)
                im.load()
                out = _to_8bit(im, prefix)
                if out is im:
                    out = im.copy()
    except SpikecError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # A frame or tile inside the file (GIF, TIFF) larger than the limit.
        raise SpikecError(f"{prefix}: {_bomb_message(exc, limit)}") from None
    except Image.UnidentifiedImageError as exc:
        raise SpikecError(f"{prefix}: not an image ({exc})") from None
    except PermissionError as exc:
        raise SpikecError(f"{prefix}: cannot read the file ({exc.strerror or exc})") from None
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError, ...: all decoding failures
        raise SpikecError(f"{prefix}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    return out


def load_image(path: str | os.PathLike, *, where: str | None = None):
    """Read one image file as an RGB PIL image (mode "RGB", 8 bits a sample, file closed).

    `read_image` followed by `Image.convert("RGB")`: high-depth images are scaled to
    8 bits as `read_image` documents; palette, gray, gray+alpha, RGBA and CMYK images
    convert as Pillow converts them (alpha dropped). Raises SpikecError naming the
    file, as `read_image` does.
    """
    im = read_image(path, where=where)
    try:
        return im.convert("RGB")
    except Exception as exc:  # a mode Pillow cannot convert to RGB (e.g. LAB)
        raise SpikecError(f"{where_prefix(path, where)}: cannot convert the image from mode {im.mode} "
                          f"to RGB ({exc})") from None


# ---------------------------------------------------------------- internals


def _open(p: Path, prefix: str, limit: int | None):
    """Image.open (lazy: the header only), with the declared size checked before any decoding."""
    from PIL import Image

    try:
        im = Image.open(p)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise SpikecError(f"{prefix}: {_bomb_message(exc, limit)}") from None
    try:
        w, h = im.size
        if limit is not None and w * h > limit:
            raise SpikecError(f"{prefix}: image of {w}x{h} pixels is over the limit of {limit} pixels "
                              f"(a decompression bomb?)")
        if w <= 0 or h <= 0:
            raise SpikecError(f"{prefix}: image of {w}x{h} pixels is empty")
    except BaseException:
        im.close()
        raise
    return im


def _bomb_message(exc: BaseException, limit: int | None) -> str:
    """'image of WxH pixels is over the limit of N pixels ...' for Pillow's own bomb check.

    Pillow raises before it returns the image, so the size is taken from the checking
    function's argument in the traceback; Pillow's pixel count is the fallback.
    """
    size = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_decompression_bomb_check":
            s = tb.tb_frame.f_locals.get("size")
            if isinstance(s, tuple) and len(s) == 2:
                size = s
        tb = tb.tb_next
    what = f"{size[0]}x{size[1]}" if size else _pixels_in(str(exc))
    return f"image of {what} pixels is over the limit of {limit} pixels (a decompression bomb?)"


def _pixels_in(message: str) -> str:
    import re

    m = re.search(r"\((\d+) pixels\)", message)
    return m.group(1) if m else "too many"


def _to_8bit(im, prefix: str):
    """`im` itself if its samples are 8-bit; else a mode "L" image scaled as read_image documents."""
    from PIL import Image

    mode = im.mode
    if mode in UINT16_MODES:
        return Image.fromarray(_scale_uint16(np.asarray(im).astype(np.int64)))
    if mode == "I" or mode.startswith("I;"):
        a = np.asarray(im if mode == "I" else im.convert("I")).astype(np.int64)
        return Image.fromarray(_scale_int(a))
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise SpikecError(f"{prefix}: float image (mode F) with NaN or infinite samples")
        return Image.fromarray(_scale_float(a))
    return im


def _scale_uint16(a: np.ndarray) -> np.ndarray:
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _scale_int(a: np.ndarray) -> np.ndarray:
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _scale_uint16(a)
    if hi > lo:
        return (((a - lo) * 255 + (hi - lo) // 2) // (hi - lo)).astype(np.uint8)
    return np.full(a.shape, 0 if hi < 0 else 255, dtype=np.uint8)


def _scale_float(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        v = a * 255.0
    elif lo >= 0 and hi <= 255:
        v = a
    elif lo >= 0 and hi <= 65535:
        v = a * 255.0 / 65535.0
    elif hi > lo:
        v = (a - lo) * 255.0 / (hi - lo)
    else:
        return np.full(a.shape, 0 if hi < 0 else 255, dtype=np.uint8)
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)
