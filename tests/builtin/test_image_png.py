"""PNG bytes that would crash torchvision's decoder are refused first, with a reason; valid
PNGs of every kind (interlaced too) pass and decode to the pixels that were written."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from conftest import subprocess_env
from trainkit.builtin.image_decode import ImageFileError, decode_bytes, probe_file
from trainkit.builtin.image_png import _ADAM7, png_problem

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _rows(pixels: np.ndarray, depth: int) -> list[bytes]:
    """Each row of (H, W, C) samples as PNG bytes (big-endian 16-bit; 1-bit packed)."""
    if depth == 1:
        return [np.packbits(row[:, 0] > 0).tobytes() for row in pixels]
    return [row.astype(">u2" if depth == 16 else np.uint8).tobytes() for row in pixels]


def encode(pixels: np.ndarray, colour: int, depth: int = 8, interlaced: bool = False, filters: int = 0) -> bytes:
    """A PNG written by hand (filter type `filters` on every row, which must be 0 for real
    pixels), so the tests control every byte, Adam7 interlacing included."""
    height, width = pixels.shape[:2]
    raw = b""
    for row0, row_step, col0, col_step in _ADAM7 if interlaced else ((0, 1, 0, 1),):
        part = pixels[row0::row_step, col0::col_step]
        if part.size:
            raw += b"".join(bytes([filters]) + row for row in _rows(part, depth))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlaced))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize(
    "colour,depth,size", [(0, 8, (9, 7)), (0, 16, (5, 11)), (0, 1, (10, 3)), (2, 8, (1, 1)), (6, 8, (13, 6))]
)
def test_valid_pngs_pass_and_decode_to_their_pixels(interlaced, colour, depth, size):
    rng = np.random.default_rng(colour + depth)
    top = 2 if depth == 1 else 2**depth
    pixels = rng.integers(0, top, (*size, CHANNELS[colour]))
    data = encode(pixels, colour, depth, interlaced)
    assert png_problem(data) is None
    channels = 1 if colour in (0, 4) else 3
    image = decode_bytes(data, "x.png", channels, None)
    expected = pixels[..., :channels] * 255 if depth == 1 else pixels[..., :channels] >> (depth - 8)
    assert torch.equal(image, torch.from_numpy(expected.astype(np.uint8)).permute(2, 0, 1))


def _damaged(kind: str) -> bytes:
    pixels = np.arange(28 * 28).reshape(28, 28, 1) % 251
    good = encode(pixels, 0)
    if kind == "crc":  # a byte of the image data changed: the chunk's CRC no longer matches
        data = bytearray(good)
        data[good.index(b"IDAT") + 10] ^= 0xFF
        return bytes(data)
    if kind == "short":  # valid chunks, but rows for 4 of 28 lines
        short = encode(pixels[:4], 0)
        return good[:16] + struct.pack(">II", 28, 28) + good[24:33] + short[33:]
    if kind == "zlib":  # a damaged stream under a CRC that matches it
        raw = bytearray(zlib.compress(b"\x00" * (29 * 28)))
        raw[4] ^= 0xFF
        return good[:33] + _chunk(b"IDAT", bytes(raw)) + _chunk(b"IEND", b"")
    if kind == "filter":  # row filter type 9
        return encode(pixels, 0, filters=9)
    if kind == "cut":  # the file ends inside its image data, after a damaged byte
        data = bytearray(good[: good.index(b"IDAT") + 30])
        data[-10] ^= 0xFF
        return bytes(data)
    if kind == "cut_clean":  # the file ends inside its image data: all of the rows, not the stream's end
        start = good.index(b"IDAT")
        return good[: start + 4 + struct.unpack(">I", good[start - 4 : start])[0] - 2]
    if kind == "split":  # a chunk between two IDAT chunks: libpng's image data is the first run only
        start = good.index(b"IDAT")
        stream = good[start + 4 : start + 4 + struct.unpack(">I", good[start - 4 : start])[0]]
        half = len(stream) // 2
        middle = _chunk(b"IDAT", stream[:half]) + _chunk(b"tEXt", b"a\x00b") + _chunk(b"IDAT", stream[half:])
        return good[: start - 4] + middle + _chunk(b"IEND", b"")
    if kind == "unended":  # every row there, but the stream stops before its checksum
        stream = zlib.compress(b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in pixels))
        return good[:33] + _chunk(b"IDAT", stream[:-3]) + _chunk(b"IEND", b"")
    raise AssertionError(kind)


REASONS = {
    "crc": "truncated or corrupt PNG data (chunk IDAT: CRC mismatch)",
    "short": "truncated or corrupt PNG data (image data ends after 116 of 812 bytes)",
    "zlib": "truncated or corrupt PNG data (image data: Error -3 while decompressing data: incorrect data check)",
    "unended": "truncated or corrupt PNG data (the image data's zlib stream does not end)",
    "split": "truncated or corrupt PNG data (image data ends after 179 of 812 bytes)",
    "cut": "truncated or corrupt PNG data (image data: Error -3 while decompressing data: invalid distance too far "
    "back)",
    "cut_clean": "truncated or corrupt PNG data (the file ends inside its image data)",
    "filter": "truncated or corrupt PNG data (a row with an unknown filter type)",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_damaged_pngs_get_a_reason_instead_of_a_decoder_crash(kind):
    data = _damaged(kind)
    assert png_problem(data) == REASONS[kind]
    with pytest.raises(ImageFileError) as info:
        decode_bytes(data, "x.png", 1, None)
    assert info.value.reason == REASONS[kind]


def test_what_the_check_prevents_is_a_crash_of_the_process():
    """The reason for the check: torchvision's decoder takes these bytes down with SIGSEGV
    (run in a child process; if a later torchvision raises instead, this says so)."""
    probe = (
        "import sys, torch; from trainkit.builtin.image_decode import _image_ops; "
        "data = torch.frombuffer(bytearray(sys.stdin.buffer.read()), dtype=torch.uint8); "
        "_image_ops().decode_image(data, 1, True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], input=_damaged("crc"), capture_output=True, env=subprocess_env(), timeout=120
    )
    if done.returncode >= 0:
        pytest.skip(f"this torchvision survives a damaged PNG (exit {done.returncode})")
    assert done.returncode < 0  # killed by a signal


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)))
    reason = "50000x50000 pixels, over the limit of 178,956,970 (a decompression bomb?)"
    for read in (probe_file, lambda p: decode_bytes(p.read_bytes(), p, 1, None)):
        with pytest.raises(ImageFileError) as info:
            read(path)
        assert info.value.reason == reason


def test_every_png_the_check_lets_through_decodes_without_a_crash(tmp_path):
    """Mutated image data (rows cut or added, bytes changed, filter types out of range, the
    stream cut short), recompressed under valid CRCs: each either gets a reason, or decodes
    in a child process that must not crash."""
    rng = np.random.default_rng(0)
    passed, refused = [], 0
    for colour, depth, interlaced in [(0, 8, False), (2, 8, True), (6, 16, False), (0, 1, True), (4, 8, True)]:
        size = tuple(rng.integers(1, 20, 2))
        good = encode(
            rng.integers(0, 2 if depth == 1 else 2**depth, (*size, CHANNELS[colour])), colour, depth, interlaced
        )
        start = good.index(b"IDAT")
        raw = zlib.decompress(good[start + 4 : start + 4 + struct.unpack(">I", good[start - 4 : start])[0]])
        for _ in range(40):
            mutated, how = bytearray(raw), rng.integers(4)
            if how == 0:
                mutated = mutated[: rng.integers(len(mutated))]
            elif how == 1:
                mutated += bytes(int(rng.integers(1, 30)))
            else:
                mutated[rng.integers(len(mutated))] = rng.integers(5 if how == 3 else 0, 256)
            stream = zlib.compress(bytes(mutated))
            stream = stream[: -int(rng.integers(1, 4))] if rng.random() < 0.2 else stream
            data = good[: start - 4] + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
            if png_problem(data) is None:
                passed.append(data)
            else:
                refused += 1
    assert refused > 50 and len(passed) > 50  # both kinds were tried
    cases = tmp_path / "cases"
    cases.mkdir()
    for i, data in enumerate(passed):
        (cases / f"{i}.png").write_bytes(data)
    child = (
        "import sys, pathlib, torch; from trainkit.builtin.image_decode import _image_ops\n"
        "for path in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
        "    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)\n"
        "    try: _image_ops().decode_image(data, 0, True)\n"
        "    except RuntimeError: pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(cases)], capture_output=True, env=subprocess_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-500:]
