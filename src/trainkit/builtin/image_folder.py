"""`data: {name: image_folder, root: DIR}`: your own images, sorted into class folders.

    DIR/train/<class>/*.png  and  DIR/test/<class>/*.png   (val/ in place of test/)
    DIR/<class>/*.jpg  with  test_fraction: 0.1            (a seeded, stratified split)

The heavy lifting is in image_build.py (sequence), image_index.py (the file index),
image_cache.py (probe and pixel caches), image_decode.py (decoders) and image_sources.py
(the Datasets the loader reads). This module only registers the builder and declares its
options, so `trainkit ls` and `validate` stay free of torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from trainkit.registry import DATASETS

Side = Annotated[int, Field(gt=0)]
ImageSize = Side | Annotated[list[Side], Field(min_length=2, max_length=2)]


@DATASETS.register("image_folder", task="classification")
def image_folder(
    root: str,
    seed: int,
    record: dict[str, Any] | None = None,
    num_workers: int = 0,
    image_size: ImageSize | None = None,
    channels: Literal[1, 3] | None = None,
    mean: list[float] | None = None,
    std: list[Annotated[float, Field(gt=0)]] | None = None,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] | None = None,
    on_bad_file: Literal["error", "skip"] = "error",
    cache: Literal["auto", "off"] | bool = "auto",  # YAML reads a bare `off` as false, `on` as true
    cache_dir: str | None = None,
):
    """Your own images in class folders: root/train/<class>/ + root/test/<class>/, or root/<class>/."""
    from trainkit.builtin.image_build import build_image_folder

    if isinstance(cache, bool):  # `cache: off` as written, which YAML 1.1 makes False
        cache = "auto" if cache else "off"
    if image_size is not None:
        _check_size(image_size)
    return build_image_folder(
        root,
        seed,
        record,
        num_workers,
        image_size,
        channels,
        mean,
        std,
        test_fraction,
        on_bad_file,
        cache,
        cache_dir,
    )


def _check_size(image_size: int | list[int]) -> None:
    """An image_size over the limit that image files have (a typo of 20000 for 200 would
    otherwise fill gigabytes of cache before the first batch fails to fit in memory)."""
    from trainkit.builtin.image_png import MAX_PIXELS
    from trainkit.errors import ConfigError

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height * width > MAX_PIXELS:
        raise ConfigError(
            f"data.image_size: {height}x{width} is {height * width:,} pixels an image, over the limit of "
            f"{MAX_PIXELS:,} that image files have too"
        )
