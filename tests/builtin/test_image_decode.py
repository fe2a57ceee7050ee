"""Headers and decoders: the quick header reader agrees with PIL; decoding converts as documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers_images import Image, class_images, save
from trainkit.builtin.image_decode import ImageFileError, _probe_with_pil, decode_file, probe_file
from trainkit.builtin.image_header import read_header


def header_and_pil(path):
    with open(path, "rb") as f:
        head = f.read(64)
        quick = read_header(f, head)
    return quick, dataclasses.astuple(_probe_with_pil(path, head))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_headers_agree_with_pil_for_every_exif_orientation(tmp_path, orientation, progressive):
    image = Image.fromarray(class_images(1, 0, size=12, channels=3)[0][:, :7])
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif, progressive=progressive)
    quick, pil = header_and_pil(path)
    assert quick is not None and tuple(quick) == pil
    assert (quick.height, quick.width) == ((7, 12) if orientation >= 5 else (12, 7))
    assert tuple(decode_file(path, 3).shape[1:]) == (quick.height, quick.width)  # as the decoder sees it


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_png_headers_agree_with_pil(tmp_path, mode):
    array = class_images(1, 0, size=9, channels=3)[0][:, :5]
    path = tmp_path / "image.png"
    if mode == "I;16":
        save(array[..., 0].astype(np.uint16) * 257, path)  # a 16-bit grey PNG
    else:
        Image.fromarray(array).convert(mode).save(path)
    quick, pil = header_and_pil(path)
    assert quick is not None and tuple(quick) == pil and (quick.height, quick.width) == (9, 5)
    assert quick.grey == (mode in ("L", "LA", "I;16"))


def test_a_png_with_exif_goes_to_pil(tmp_path):
    image = Image.fromarray(class_images(1, 0, size=6)[0])
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "e.png", exif=exif)
    with open(tmp_path / "e.png", "rb") as f:
        assert read_header(f, f.read(64)) is None
    assert probe_file(tmp_path / "e.png").format == "PNG"


def test_probe_and_decode_reasons(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all, just text\n")
    good = save(class_images(1, 0, size=16, channels=3)[0], tmp_path / "good.jpg")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:-200])
    for name, reason in [
        ("empty.png", "empty file (0 bytes)"),
        ("text.jpg", "not an image (its content is not JPEG, PNG, GIF, WebP or BMP)"),
        ("missing.png", "broken symlink or vanished file"),
    ]:
        with pytest.raises(ImageFileError) as info:
            probe_file(tmp_path / name)
        assert info.value.reason == reason
    assert probe_file(tmp_path / "cut.jpg").height == 16  # the header is whole: decoding finds the cut
    with pytest.raises(ImageFileError, match="truncated or corrupt JPEG data"):
        decode_file(tmp_path / "cut.jpg", 3)


def test_resizing_and_channel_conversion(tmp_path):
    rgb = class_images(1, 2, size=10, channels=3)[0]
    path = save(rgb, tmp_path / "x.png")
    assert torch.equal(decode_file(path, 3), torch.from_numpy(rgb).permute(2, 0, 1))
    grey = decode_file(path, 1)
    assert grey.shape == (1, 10, 10) and grey.dtype == torch.uint8
    small = decode_file(path, 3, (4, 6))
    assert small.shape == (3, 4, 6) and small.dtype == torch.uint8
