"""Images are untrusted input, read in one place (spikec.images) by run, eval and compile --calib.

- high-depth images (16-bit, 32-bit integer, float) are scaled to 8 bits, not clipped:
  a 16-bit PNG made from an 8-bit one (v16 = v8 * 257) reads back as the same pixels;
- a decompression bomb is refused from its header, before decoding;
- truncated, corrupt, non-image, empty and zero-size files give one SpikecError naming the file;
- an animated image gives its first frame;
- a processor that refuses an image (Qwen2-VL: aspect ratio over 200) gives one error
  naming the file, from `spikec run`, `spikec eval` and `compile --calib` alike.
"""

from __future__ import annotations

import io
import json
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from spikec import images as I
from spikec.errors import SpikecError

LIMIT = Image.MAX_IMAGE_PIXELS
BOMB = "is over the limit of"


# ---------------------------------------------------------------- helpers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 0, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: IHDR (any declared size), one IDAT of `rows` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if rows is not None:
        out += _chunk(b"IDAT", zlib.compress(rows))
    return out + _chunk(b"IEND", b"")


def patch_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """A Pillow-written PNG with the IHDR width/height replaced (and its CRC fixed)."""
    b = bytearray(png)
    start = b.index(b"IHDR")
    b[start + 4:start + 12] = struct.pack(">II", width, height)
    b[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(b[start:start + 17])) & 0xFFFFFFFF)
    return bytes(b)


def save(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    if isinstance(data, Image.Image):
        data.save(p)
    else:
        p.write_bytes(data)
    return p


def pixels(path) -> np.ndarray:
    return np.asarray(I.load_image(path, where="test"))


def refused(path, match: str, where: str = "--image x") -> str:
    with pytest.raises(SpikecError) as info:
        I.load_image(path, where=where)
    msg = str(info.value)
    assert str(path) in msg and match in msg, msg
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- high-depth images are scaled


@pytest.mark.parametrize("seed, shape", [(0, (16, 16)), (1, (7, 33)), (2, (64, 5)), (3, (1, 1))])
def test_16bit_png_of_random_data_equals_its_8bit_source(tmp_path, seed, shape):
    g = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    p8 = save(tmp_path, "g8.png", Image.fromarray(g))
    p16 = save(tmp_path, "g16.png", Image.fromarray(g.astype(np.uint16) * 257))
    assert Image.open(p16).mode == "I;16"
    assert np.array_equal(pixels(p16), pixels(p8))
    assert np.array_equal(pixels(p8)[..., 0], g)
    assert I.read_image(p16).mode == "L" and np.array_equal(np.asarray(I.read_image(p16)), g)


def test_16bit_scaling_rounds_every_value(tmp_path):
    v = np.arange(65536, dtype=np.uint32).reshape(256, 256)
    got = np.asarray(I.read_image(save(tmp_path, "all.png", Image.fromarray(v.astype(np.uint16)))), dtype=np.int64)
    assert np.array_equal(got, (v.astype(np.int64) * 255 + 32767) // 65535)
    assert np.abs(got - v * 255.0 / 65535.0).max() <= 0.5  # round to nearest
    assert got[0, 0] == 0 and got[-1, -1] == 255 and (np.diff(got.ravel()) >= 0).all()


def test_16bit_digits_give_the_8bit_digits(tmp_path):
    from spikec.datasets.digits import load_digit_images, render_image

    digits, _ = load_digit_images()
    for i in (0, 12, 500, 1796):
        g = np.asarray(render_image(digits[i]))
        p8 = save(tmp_path, f"{i}-8.png", Image.fromarray(g))
        p16 = save(tmp_path, f"{i}-16.png", Image.fromarray(g.astype(np.uint16) * 257))
        assert np.array_equal(pixels(p16), pixels(p8)), i


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I;16"])
def test_16bit_tiff_byte_orders(tmp_path, mode):
    v = (np.arange(48).reshape(6, 8) * 1365).astype(np.uint16)
    im = Image.frombytes(mode, (8, 6), v.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    p = save(tmp_path, "x.tif", im)
    assert np.array_equal(np.asarray(I.read_image(p)), ((v.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))


def test_16bit_rgb_png_reads_as_its_8bit_source(tmp_path):
    rgb8 = np.random.default_rng(5).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    rgb16 = rgb8.astype(">u2") * 257
    rows = b"".join(b"\0" + rgb16[y].tobytes() for y in range(3))
    p = save(tmp_path, "rgb16.png", png_bytes(5, 3, 16, 2, rows))
    assert np.array_equal(pixels(p), rgb8)


@pytest.mark.parametrize("values, expected", [
    ([0, 7, 255], [0, 7, 255]),                                    # [0, 255]: kept
    ([0, 257, 65535], [0, 1, 255]),                                # [0, 65535]: 16-bit rule
    ([0, 256, 32768], [0, 1, 128]),
    ([-10, 0, 10], [0, 128, 255]),                                 # else min-max
    ([0, 100000, 200000], [0, 128, 255]),
    ([-(2**31), 0, 2**31 - 1], [0, 128, 255]),
    ([-5, -5, -5], [0, 0, 0]),                                     # constant outside [0, 65535]
    ([70000, 70000, 70000], [255, 255, 255]),
])
def test_mode_I_rules(tmp_path, values, expected):
    p = save(tmp_path, "i.tif", Image.fromarray(np.array([values], dtype=np.int32)))
    assert Image.open(p).mode == "I"
    assert np.asarray(I.read_image(p)).ravel().tolist() == expected
    assert pixels(p)[0, :, 1].tolist() == expected


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.5, 1.0], [0, 128, 255]),                              # [0, 1]: x 255
    ([0.0, 0.25, 1.0 / 255], [0, 64, 1]),
    ([0.0, 2.0, 254.6], [0, 2, 255]),                              # [0, 255]: rounded
    ([0.0, 257.0, 65535.0], [0, 1, 255]),                          # [0, 65535]: 16-bit scale
    ([-1.0, 0.0, 1.0], [0, 128, 255]),                             # else min-max
    ([-3.0, -3.0], [0, 0]),
    ([1e9, 1e9], [255, 255]),
])
def test_mode_F_rules(tmp_path, values, expected):
    p = save(tmp_path, "f.tif", Image.fromarray(np.array([values], dtype=np.float32)))
    assert Image.open(p).mode == "F"
    assert np.asarray(I.read_image(p)).ravel().tolist() == expected


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_mode_F_non_finite_is_refused(tmp_path, bad):
    p = save(tmp_path, "nan.tif", Image.fromarray(np.array([[0.0, bad]], dtype=np.float32)))
    refused(p, "NaN or infinite")


@pytest.mark.parametrize("make", [
    lambda rng: Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), "RGBA"),
    lambda rng: Image.fromarray(rng.integers(0, 256, (9, 11, 2), dtype=np.uint8), "LA"),
    lambda rng: Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).convert("P"),
    lambda rng: Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).convert("1"),
    lambda rng: Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)),
])
def test_8bit_modes_convert_as_before(tmp_path, make):
    im = make(np.random.default_rng(0))
    p = save(tmp_path, "x.png", im)
    assert np.array_equal(pixels(p), np.asarray(Image.open(p).convert("RGB")))


def test_cmyk_jpeg_converts_as_before(tmp_path):
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8), "CMYK")
    p = save(tmp_path, "c.jpg", im)
    assert Image.open(p).mode == "CMYK"
    assert np.array_equal(pixels(p), np.asarray(Image.open(p).convert("RGB")))
    assert I.load_image(p, where="x").mode == "RGB"


# ---------------------------------------------------------------- decompression bombs


@pytest.mark.parametrize("w, h", [(30000, 30000), (13400, 13400), (LIMIT + 1, 1), (1, 2 * LIMIT + 1), (65535, 65535)])
def test_bomb_refused_from_the_header(tmp_path, w, h):
    p = save(tmp_path, "bomb.png", png_bytes(w, h, rows=b"\0"))
    assert p.stat().st_size < 100
    t = time.perf_counter()
    msg = refused(p, BOMB, where=f"--image {p}")
    assert time.perf_counter() - t < 1.0
    assert msg == f"--image {p}: image of {w}x{h} pixels is over the limit of {LIMIT} pixels (a decompression bomb?)"


def test_bomb_patched_into_a_real_png(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (4, 4), 9).save(buf, format="PNG")
    p = save(tmp_path, "patched.png", patch_ihdr_size(buf.getvalue(), 30000, 30000))
    refused(p, f"image of 30000x30000 pixels {BOMB} {LIMIT} pixels")


def test_bomb_limit_is_exact_and_leaves_no_state(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)
    filters = list(warnings.filters)
    for w, h in [(100, 100), (1, 10000), (10000, 1), (99, 101)]:          # at or just under the limit: read
        assert I.load_image(save(tmp_path, f"ok{w}x{h}.png", Image.new("L", (w, h), 3)), where="x").size == (w, h)
    for w, h in [(100, 101), (101, 100), (1, 10001), (150, 150), (100, 201)]:  # just over, and over 2x
        p = save(tmp_path, f"big{w}x{h}.png", Image.new("L", (w, h), 3))
        refused(p, f"image of {w}x{h} pixels is over the limit of 10000 pixels")
    assert warnings.filters == filters


def test_bomb_in_other_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("big.gif", "big.bmp", "big.tif", "big.jpg"):
        refused(save(tmp_path, name, Image.new("RGB", (40, 30), (1, 2, 3))), "image of 40x30 pixels is over the limit of 1000")


# ---------------------------------------------------------------- corrupt files


def _png(tmp_path=None) -> bytes:
    """A 40x40 RGB PNG written by Pillow, with a tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "spikec test image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_png(tmp_path, keep):
    data = _png()
    refused(save(tmp_path, "t.png", data[:int(len(data) * keep)]), "t.png")


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.95])
def test_truncated_jpeg(tmp_path, keep):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    refused(save(tmp_path, "t.jpg", data[:int(len(data) * keep)]), "t.jpg")


def test_truncated_refused_even_if_pillow_is_told_to_accept_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _png()
    refused(save(tmp_path, "t.png", data[:len(data) // 2]), "corrupt or truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("chunk", [b"IHDR", b"tEXt", b"IDAT"])
def test_bad_crc(tmp_path, chunk):
    b = bytearray(_png())
    at = b.index(chunk)
    length = struct.unpack(">I", b[at - 4:at])[0]
    b[at + 4 + length] ^= 0xFF  # first CRC byte
    refused(save(tmp_path, "crc.png", bytes(b)), "crc.png")


def test_corrupt_compressed_data(tmp_path):
    b = bytearray(_png())
    at = b.index(b"IDAT")
    length = struct.unpack(">I", b[at - 4:at])[0]
    for i in range(at + 10, at + 4 + length, 7):
        b[i] ^= 0x5A
    b[at + 4 + length:at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(b[at:at + 4 + length])) & 0xFFFFFFFF)
    refused(save(tmp_path, "z.png", bytes(b)), "corrupt or truncated")


@pytest.mark.parametrize("name, data, match", [
    ("text.png", b"this is not an image\n", "not an image"),
    ("empty.png", b"", "not an image"),
    ("sig-only.png", b"\x89PNG\r\n\x1a\n", ""),
    ("random.jpg", bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8)), "not an image"),
    ("zero-width.png", png_bytes(0, 10, rows=b""), ""),
    ("zero-height.png", png_bytes(10, 0, rows=b""), ""),
])
def test_not_an_image(tmp_path, name, data, match):
    refused(save(tmp_path, name, data), match)


def test_missing_file_and_folder(tmp_path):
    refused(tmp_path / "nope.png", "no such file")
    refused(tmp_path, "not a file")


# ---------------------------------------------------------------- animated images


def _frames():
    return [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]


@pytest.mark.parametrize("fmt", ["gif", "png", "webp"])
def test_animated_image_gives_its_first_frame(tmp_path, fmt):
    fr = _frames()
    p = tmp_path / f"anim.{fmt}"
    fr[0].save(p, save_all=True, append_images=fr[1:], duration=50, loop=0, **({"lossless": True} if fmt == "webp" else {}))
    assert Image.open(p).n_frames == 3
    got = pixels(p)
    assert got.shape == (24, 32, 3) and (got == (255, 0, 0)).all()


def test_gif_with_a_broken_later_frame_gives_its_first_frame(tmp_path):
    fr = _frames()
    fr[0].save(tmp_path / "a.gif", save_all=True, append_images=fr[1:], duration=50)
    data = (tmp_path / "a.gif").read_bytes()
    second = [i for i in range(len(data)) if data.startswith(b"\x21\xf9\x04", i)][1]
    p = save(tmp_path, "broken.gif", data[:second + 14] + b"\xff" * 7)
    assert (pixels(p) == (255, 0, 0)).all()


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize("where, expected", [
    (None, "a/b.png"), ("", "a/b.png"), ("--image a/b.png", "--image a/b.png"),
    ("--calib d/data.jsonl:3", "--calib d/data.jsonl:3: a/b.png"),
])
def test_where_prefix(where, expected):
    assert I.where_prefix(Path("a/b.png"), where) == expected


def test_naming_image_only_rewrites_processor_refusals():
    with pytest.raises(SpikecError, match=r"^--data d/data.jsonl:7: x.png: image 2x600: no$"):
        with I.naming_image("x.png", where="--data d/data.jsonl:7"):
            raise I.ProcessorRefusedImage("image 2x600: no")
    with pytest.raises(ValueError):
        with I.naming_image("x.png", where="w"):
            raise ValueError("other")


# ---------------------------------------------------------------- the call sites


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(export folder, .sbin) of tiny-qwen2-vl, shared with the other test modules."""
    from spike_graphs import exported
    from test_ort_target import compiled

    return exported("tiny-qwen2-vl"), Path(compiled("tiny-qwen2-vl"))


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    data = _png()
    out = {
        "text": save(d, "text.png", b"not a png\n"),
        "truncated": save(d, "truncated.png", data[:len(data) // 2]),
        "bomb": save(d, "bomb.png", png_bytes(30000, 30000, rows=b"\0")),
        "sliver": save(d, "sliver.png", Image.fromarray(rng.integers(0, 256, (2, 600, 3), dtype=np.uint8))),
        "good": save(d, "good.png", Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))),
    }
    return out


EXPECT = {"text": "not an image", "truncated": "corrupt or truncated", "bomb": "image of 30000x30000 pixels is over",
          "sliver": "image 600x2: the qwen2_vl processor refuses it: absolute aspect ratio must be smaller than 200"}


def test_processor_refusal_names_the_size_and_limit(qwen, bad_images):
    from spikec.frontend.generate import OrtGenerator

    gen = OrtGenerator(qwen[0])
    with pytest.raises(I.ProcessorRefusedImage, match=r"^image 600x2: the qwen2_vl processor refuses it: absolute aspect"):
        gen.prepare([I.load_image(bad_images["sliver"], where="x")], ["describe"])
    assert gen.prepare([I.load_image(bad_images["good"], where="x")], ["describe"])["input_ids"].shape[0] == 1


@pytest.mark.parametrize("kind", ["text", "truncated", "bomb", "sliver"])
def test_cli_run_bad_image_is_one_line(run_cli, qwen, bad_images, kind):
    path = bad_images[kind]
    r = run_cli("run", str(qwen[1]), "--image", str(path), "--prompt", "describe", "--max-new-tokens", "2")
    assert r.code == 1, (r.out, r.err)
    assert r.err.startswith(f"error: --image {path}: {EXPECT[kind]}"), r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.out + r.err


def test_python_api_generate_names_the_file(qwen, bad_images):
    from spikec.runtime.model import load, load_image

    with load(qwen[1]) as model:
        with pytest.raises(SpikecError, match=f"^--image {bad_images['sliver']}: image 600x2: the qwen2_vl"):
            model.generate(bad_images["sliver"], "describe", max_new_tokens=2)
        with pytest.raises(SpikecError, match=f"^--image {bad_images['bomb']}: image of 30000x30000"):
            model.generate(str(bad_images["bomb"]), "describe", max_new_tokens=2)
    assert load_image(bad_images["good"]).mode == "RGB"  # the old import still works


def _eval_folder(root: Path, image: Path, line: int = 2) -> Path:
    d = root / f"eval-{image.stem}"
    d.mkdir()
    (d / "good.png").write_bytes((image.parent / "good.png").read_bytes())
    (d / image.name).write_bytes(image.read_bytes())
    rows = [{"image": "good.png", "prompt": "describe", "answer": "x"}] * (line - 1)
    rows.append({"image": image.name, "prompt": "describe", "answer": "x"})
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.mark.parametrize("kind", ["truncated", "bomb", "sliver"])
def test_eval_bad_image_names_line_and_file(qwen, bad_images, tmp_path, kind):
    from spikec.evaluate import evaluate

    d = _eval_folder(tmp_path, bad_images[kind])
    with pytest.raises(SpikecError) as info:
        evaluate(qwen[0], d, max_new_tokens=1)
    msg = str(info.value)
    assert msg.startswith(f"--data {d / 'data.jsonl'}:2: ") and bad_images[kind].name in msg and EXPECT[kind] in msg, msg


def test_cli_eval_on_sbin_is_one_line(run_cli, qwen, bad_images, tmp_path):
    d = _eval_folder(tmp_path, bad_images["sliver"], line=1)
    r = run_cli("eval", str(qwen[1]), "--data", str(d))
    assert r.code == 1 and r.err.startswith(f"error: --data {d / 'data.jsonl'}:1: "), r.err
    assert "sliver.png" in r.err and EXPECT["sliver"] in r.err and r.err.count("\n") == 1


@pytest.mark.parametrize("kind", ["text", "truncated", "bomb", "sliver"])
@pytest.mark.parametrize("layout", ["pairs", "jsonl"])
def test_calibration_bad_image_names_the_file(qwen, bad_images, tmp_path, kind, layout):
    from spikec.calibration import export_folder_feeds

    d = tmp_path / "calib"
    d.mkdir()
    img = bad_images[kind]
    (d / img.name).write_bytes(img.read_bytes())
    if layout == "pairs":
        (d / img.with_suffix(".txt").name).write_text("describe")
        start = f"--calib {d / img.name}: "
    else:
        (d / "data.jsonl").write_text(json.dumps({"image": img.name, "prompt": "describe"}) + "\n")
        start = f"--calib {d / 'data.jsonl'}:1: "
    with pytest.raises(SpikecError) as info:
        export_folder_feeds(qwen[0], d, 4)
    msg = str(info.value)
    assert msg.startswith(start) and img.name in msg and EXPECT[kind] in msg, msg


def test_cli_compile_calib_bad_image_is_one_line(run_cli, qwen, bad_images, tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    (d / "a.png").write_bytes(bad_images["truncated"].read_bytes())
    (d / "a.txt").write_text("describe")
    r = run_cli("compile", str(qwen[0]), "-o", str(tmp_path / "o.sbin"), "--calib", str(d))
    assert r.code == 1 and r.err.strip().splitlines()[-1].startswith(f"error: --calib {d / 'a.png'}: corrupt or truncated")
    assert "Traceback" not in r.out + r.err and not (tmp_path / "o.sbin").exists()


def test_eval_folder_items_read_through_images(tmp_path):
    from spikec.datasets.digits import load_eval_folder, make_items, write_eval_folder

    d = write_eval_folder(make_items("test")[:3], tmp_path / "ev")
    items = load_eval_folder(d)
    first = items[0].image_path
    g = np.asarray(Image.open(first))
    Image.fromarray(g.astype(np.uint16) * 257).save(first)  # the same picture, 16-bit
    assert np.array_equal(np.asarray(load_eval_folder(d)[0].open_image()), g)
    first.write_bytes(first.read_bytes()[:30])
    with pytest.raises(SpikecError) as info:
        load_eval_folder(d)[0].open_image()
    msg = str(info.value)
    assert msg.startswith(f"{d / 'data.jsonl'}:1: {first}: ") and "\n" not in msg, msg
