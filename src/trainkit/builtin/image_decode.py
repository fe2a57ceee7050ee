"""Image files -> uint8 (C, H, W) tensors in a data set's channels and size.

One function, `decode_file`, serves training (image_folder, in loader workers) and
`trainkit predict`, so a model sees a file exactly as it saw its training images.

Decoders: torchvision.io.decode_image (libjpeg-turbo, libpng, giflib, libwebp) for JPEG,
PNG, GIF and WebP. It handles CMYK JPEGs, 16-bit, palette and grey+alpha PNGs, and EXIF
orientation (JPEG and PNG) itself. What it cannot do, done here:
- BMP (and any other format torchvision 0.29 does not read): PIL decodes it;
- GIF and WebP ignore the requested mode (always RGB/RGBA, and an animated GIF is a stack
  of frames): the first frame's RGB is taken and converted to grey here when asked;
- 16-bit PNGs come out as uint16: scaled to uint8 by dropping the low byte, as
  torchvision.transforms.v2.functional.to_dtype(scale=True) does.
Alpha is dropped (not composited). Other sizes are resized whole (bilinear, antialiased).
A PNG's bytes are checked first (image_png.py): torchvision's PNG decoder crashes the process
on damaged image data instead of raising. Images over PIL's decompression-bomb limit are
refused from their header.

`probe_file` reads only a file's header to learn its size and whether it is grey, without
decoding the pixels: PNG and JPEG headers directly (image_header.py), others through PIL's
lazy open (torchvision has no header-only call).
The decoders are called as the torch ops they are (`torch.ops.image.decode_image`, what
torchvision.io.decode_image calls after its checks), with torchvision's image library loaded
on its own: milliseconds, where `import torchvision` takes half a second more than the
torch._dynamo it also imports (its models, ops and datasets). torchvision itself is imported
only to resize or to convert colour to grey, or where the library is not found by its name.
"""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from trainkit.builtin.image_header import read_header
from trainkit.builtin.image_png import png_problem, too_many_pixels

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")

# File signatures: the content decides the format, not the extension.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))
_TORCHVISION_FORMATS = {"JPEG", "PNG", "GIF", "WEBP"}
# PIL modes without colour: everything else (RGB, RGBA, CMYK, P, YCbCr, ...) counts as colour
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageFileError(Exception):
    """One file that cannot be read as an image; `reason` is a short phrase for messages."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def sniff(head: bytes) -> str | None:
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    return None


def os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink or vanished file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot read it (permission denied)"
    return f"cannot read it ({exc.strerror or exc})"


def read_bytes(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageFileError(path, os_reason(exc)) from None
    if not data:
        raise ImageFileError(path, "empty file (0 bytes)")
    return data


@dataclass(frozen=True)
class Probe:
    height: int
    width: int
    grey: bool
    format: str


def probe_file(path: str | Path) -> Probe:
    """Size (after EXIF orientation, as decode_file will see it) and colour, from the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if not head:
                raise ImageFileError(path, "empty file (0 bytes)")
            quick = read_header(f, head)  # PNG and JPEG without PIL
    except OSError as exc:
        raise ImageFileError(path, os_reason(exc)) from None
    probe = Probe(*quick) if quick is not None else _probe_with_pil(path, head)
    bomb = too_many_pixels(probe.width, probe.height)
    if bomb is not None:
        raise ImageFileError(path, bomb)
    return probe


def _probe_with_pil(path: str | Path, head: bytes) -> Probe:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning for huge images
            with Image.open(path) as image:
                width, height = image.size
                mode, fmt = image.mode, (image.format or "").upper()
                orientation = 1
                # EXIF read at open (JPEG APP1, PNG eXIf before IDAT); getexif() would decode a PNG
                if "exif" in image.info and fmt in ("JPEG", "PNG"):
                    orientation = int(image.getexif().get(0x0112, 1) or 1)
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageFileError(path, _content_reason(sniff(head))) from None
        if exc.errno is None:  # PIL's own complaint about the content
            raise ImageFileError(path, f"truncated or corrupt {sniff(head) or 'image'} header ({exc})") from None
        raise ImageFileError(path, os_reason(exc)) from None
    except (ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageFileError(path, f"damaged image header ({exc})") from None
    if width < 1 or height < 1:
        raise ImageFileError(path, f"image of size {width}x{height}")
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: decode_file returns it upright
        width, height = height, width
    return Probe(height, width, mode in _GREY_MODES, fmt)


def _content_reason(kind: str | None) -> str:
    if kind is None:
        return "not an image (its content is not JPEG, PNG, GIF, WebP or BMP)"
    return f"damaged {kind} data (unreadable header)"


_TORCH_LOCATION = re.compile(r"^[\w()<>]+, \S+\.(?:cpp|h|cu):\d+, ")


def _decoder_reason(kind: str, exc: Exception) -> str:
    # torchvision prefixes its C++ source location ("decode_jpeg, /__w/.../decode_jpeg.cpp:171, ");
    # only the readable part is shown
    text = _TORCH_LOCATION.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return f"truncated or corrupt {kind} data ({text.rstrip('.')})"


# ImageReadMode's values, which the ops take
_GRAY, _RGB = 1, 3
_LIBRARIES = ("image_stable", "image")  # torchvision's image library: 0.29's name, then older ones'
_ops_loaded = False


def _image_ops() -> object:
    """torch.ops.image with torchvision's decoders registered (loaded once per process)."""
    global _ops_loaded
    if not _ops_loaded:
        _ops_loaded = _load_image_library()
        if not _ops_loaded:  # an unusual install: torchvision registers them as it always does
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 0.29's, in favour of TorchCodec
                import torchvision.io  # noqa: F401

            _ops_loaded = True
    return torch.ops.image


def _load_image_library() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if os.name == "nt" or spec is None or not spec.submodule_search_locations:
        return False  # Windows: torchvision sets up its DLL folder first
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    for name in _LIBRARIES:
        found = finder.find_spec(name)
        if found is not None and found.origin:
            try:
                torch.ops.load_library(found.origin)
            except OSError:
                continue
            if hasattr(torch.ops.image, "decode_image"):
                return True
    return False


def load_decoders(transforms: bool = True) -> None:
    """Load the decoders here, once, before loader workers are forked (each would otherwise
    load them itself). `transforms`: also torchvision's resize and colour conversion, for
    folders whose images are not all at the run's size and channels (half a second: not for
    those that are, nor at module level: a run whose images are all cached needs nothing)."""
    _image_ops()
    from PIL import Image  # noqa: F401

    if transforms:
        import torchvision.transforms.v2.functional  # noqa: F401


def decode_bytes(data: bytes, path: str | Path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Encoded bytes -> uint8 (channels, H, W), resized to `size` = (H, W) when given and different."""
    kind = sniff(data[:16])
    problem = png_problem(data) if kind == "PNG" else _jpeg_problem(data) if kind == "JPEG" else None
    if problem is not None:  # what would crash torchvision's decoder, or take gigabytes
        raise ImageFileError(path, problem)
    if kind in _TORCHVISION_FORMATS:
        image = _torchvision_decode(data, path, kind, channels)
    else:
        image = _pil_decode(data, path, kind, channels)
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        image = resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image.contiguous()


def _jpeg_problem(data: bytes) -> str | None:
    header = read_header(io.BytesIO(data), data[:64])
    return None if header is None else too_many_pixels(header.width, header.height)


def decode_file(path: str | Path, channels: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A file as uint8 (channels, H, W); ImageFileError says in a few words why not."""
    return decode_bytes(read_bytes(path), path, channels, size)


def _torchvision_decode(data: bytes, path: str | Path, kind: str, channels: int) -> torch.Tensor:
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    # GIF and WebP decoders ignore GRAY (they return RGB/RGBA): ask for RGB, convert below
    mode = _GRAY if channels == 1 and kind in ("JPEG", "PNG") else _RGB
    try:
        image = _image_ops().decode_image(encoded, mode, True)  # type: ignore[attr-defined]
    except RuntimeError as exc:
        raise ImageFileError(path, _decoder_reason(kind, exc)) from None
    if image.dim() == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype == torch.uint16:  # 16-bit PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.shape[0] == 4:  # RGBA from a decoder that ignored the mode: drop alpha
        image = image[:3]
    if channels == 1 and image.shape[0] == 3:
        from torchvision.transforms.v2.functional import rgb_to_grayscale

        image = rgb_to_grayscale(image)
    elif channels == 3 and image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image


def _pil_decode(data: bytes, path: str | Path, kind: str | None, channels: int) -> torch.Tensor:
    # torchvision 0.29 reads JPEG, PNG, GIF and WebP only: BMP (or a stray TIFF) goes through PIL
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as opened:
                image = ImageOps.exif_transpose(opened).convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise ImageFileError(path, _content_reason(kind)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageFileError(path, f"truncated or corrupt {kind or 'image'} data ({exc})") from None
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, channels).permute(2, 0, 1).contiguous()
