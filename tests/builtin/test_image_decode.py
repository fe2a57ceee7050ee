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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("suffix", ["png", "jpg", "gif", "webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_library_ops_decode_as_torchvision_io_does(tmp_path, suffix, channels):
    """decode_file calls torchvision's decoder op straight from its library; what comes out is
    what torchvision.io.decode_image (and its grey conversion) gives."""
    import warnings

    import torchvision.io as tio
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    path = save(class_images(1, 1, size=12, channels=3)[0], tmp_path / f"x.{suffix}")
    encoded = tio.read_file(str(path))
    native = suffix in ("png", "jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mode = tio.ImageReadMode.GRAY if channels == 1 and native else tio.ImageReadMode.RGB
        expected = tio.decode_image(encoded, mode=mode, apply_exif_orientation=True)
    if expected.shape[0] == 4:
        expected = expected[:3]
    if channels == 1 and not native:
        expected = rgb_to_grayscale(expected)
    assert torch.equal(decode_file(path, channels), expected)


def test_decoding_without_the_library_file_imports_torchvision(tmp_path, monkeypatch):
    """An install whose image library is not where or what we look for: torchvision.io loads it."""
    from trainkit.builtin import image_decode

    path = save(class_images(1, 0, size=8, channels=3)[0], tmp_path / "x.png")
    expected = decode_file(path, 3)
    monkeypatch.setattr(image_decode, "_LIBRARIES", ("no_such_library",))
    monkeypatch.setattr(image_decode, "_ops_loaded", False)
    assert not image_decode._load_image_library()
    assert torch.equal(decode_file(path, 3), expected) and image_decode._ops_loaded


def test_a_folder_at_its_own_size_is_cached_without_importing_torchvision(tmp_path):
    """torchvision's import (half a second beyond torch._dynamo) is for resizing and colour
    conversion only; a folder of same-size PNGs is decoded and cached without it."""
    import subprocess
    import sys

    from helpers_images import write_folder

    root = write_folder(tmp_path / "images", train=6, test=2, size=10)
    code = (
        "import sys\n"
        "from trainkit.builtin.image_build import build_image_folder\n"
        f"b = build_image_folder({str(root)!r}, 0, None, 0, None, None, None, None, None, 'error', 'auto', "
        f"{str(tmp_path / 'cache')!r})\n"
        "print(len(b.train), len(b.test), 'torchvision' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["18", "6", "False"], done.stdout + done.stderr
    assert list((tmp_path / "cache" / "image_folder").glob("pixels-*/pixels.npy"))
