"""Size and colour of a PNG or JPEG from its first bytes, without decoding or PIL.

A first scan reads every file's header to learn the images' size and colour; PIL's lazy
open costs about as much as decoding a small PNG, these few struct reads a fraction of it.
Anything unusual (another format, an eXIf chunk in a PNG, a header this does not follow)
returns None, and the caller asks PIL instead. The answers agree with what PIL reports and
with what the decoder returns: EXIF orientations 5-8 (rotated by 90 degrees) swap height
and width, as torchvision's apply_exif_orientation does for JPEG.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

_PNG = b"\x89PNG\r\n\x1a\n"
# start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT C4, JPG C8, DAC CC
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_MAX_PNG_CHUNKS = 64  # ancillary chunks walked before IDAT before giving up


class Header(NamedTuple):
    height: int
    width: int
    grey: bool
    format: str


def read_header(f: BinaryIO, head: bytes) -> Header | None:
    """`head` is the file's first bytes (at least 33); `f` may be read and seeked."""
    try:
        if head.startswith(_PNG):
            return _png(f, head)
        if head.startswith(b"\xff\xd8\xff"):
            return _jpeg(f)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(f: BinaryIO, head: bytes) -> Header | None:
    if head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    colour = head[25]
    position = 8
    for _ in range(_MAX_PNG_CHUNKS):  # an eXIf chunk before the pixels may rotate the image
        f.seek(position)
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        length, kind = struct.unpack(">I4s", chunk)
        if kind == b"IDAT":
            return Header(height, width, colour in (0, 4), "PNG") if width and height else None
        if kind == b"eXIf":
            return None
        position += 12 + length
    return None


def _jpeg(f: BinaryIO) -> Header | None:
    f.seek(2)
    orientation = 1
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        code = marker[1]
        while code == 0xFF:  # fill bytes
            code = f.read(1)[0]
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
            continue
        if code in (0xD9, 0xDA):  # end of image, or the scan began without a frame header
            return None
        (length,) = struct.unpack(">H", f.read(2))
        if code == 0xE1 and orientation == 1:
            orientation = _exif_orientation(f.read(length - 2))
            continue
        if code in _SOF:
            _, height, width, components = struct.unpack(">BHHB", f.read(6))
            if not (height and width):
                return None
            if orientation in (5, 6, 7, 8):
                height, width = width, height
            return Header(height, width, components == 1, "JPEG")
        f.seek(length - 2, 1)


def _exif_orientation(data: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an APP1 Exif segment; 1 if absent."""
    if not data.startswith(b"Exif\x00\x00"):
        return 1
    tiff = data[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value
    return 1
