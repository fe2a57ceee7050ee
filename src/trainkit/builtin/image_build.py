"""image_folder's build sequence: scan, check, split, decode (or reuse the cache), statistics.

A fresh run decides everything from the folder and the seed (channels, size, the split,
which files are left out, mean and std) and returns it as the DataBundle's record; resume
and eval get that record back, check that the folder still holds the same files, and
rebuild exactly the same splits from it without looking at an image header again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit.builtin.image_cache import cache_folder, cached_pixels, probe_files
from trainkit.builtin.image_decode import ImageFileError, decode_file, load_decoders
from trainkit.builtin.image_index import (
    EXCLUDED,
    TEST,
    TRAIN,
    FileTable,
    FolderScan,
    check_unchanged,
    name_files,
    scan_folder,
    table_from_record,
    table_record,
)
from trainkit.builtin.image_sources import CachedImages, ImageFiles
from trainkit.builtin.split import stratified_counts
from trainkit.errors import BadDataFileError, ConfigError, DataError, DataLayoutError
from trainkit.training.data import DataBundle, DatasetInfo
from trainkit.training.loader import parallel_map
from trainkit.training.rng import mix_seed

log = logging.getLogger("trainkit")
RECORD_FORMAT = "image_folder/1"
STATS_SAMPLE = 1000  # training images whose pixels give the default mean and std


@dataclass
class Plan:
    """What the run uses of the folder; a fresh run derives it, a resumed one reads it back."""

    use: np.ndarray  # int8 per index row: TRAIN, TEST or EXCLUDED
    labels: np.ndarray  # int64 per index row
    classes: list[str]
    channels: int
    size: tuple[int, int]
    left_out: list[tuple[str, str]]  # (relative path, why), every file not used
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    as_decoded: bool = False  # every used image decodes at the run's size and channels (known on fresh runs)


def _bad_files_error(root: Path, bad: list[tuple[str, str]]) -> BadDataFileError:
    files = "file" if len(bad) == 1 else "files"
    return BadDataFileError(
        f"image_folder: {len(bad)} {files} cannot be read: {name_files(bad, root)}; "
        "fix or remove them, or set data.on_bad_file=skip to leave them out"
    )


def _check_layout(scan: FolderScan, test_fraction: float | None) -> None:
    root = scan.root
    has_train = scan.test_folder is not None or (root / "train").is_dir()
    if scan.test_folder is not None and test_fraction is not None:
        raise ConfigError(
            f"data.test_fraction: {root} has its own {scan.test_folder}/ folder; remove test_fraction or that folder"
        )
    if scan.test_folder is None and test_fraction is None:
        where = (
            f"{root} has train/ but no test/ or val/ folder"
            if has_train
            else (f"{root} has no train/ and test/ folders")
        )
        raise ConfigError(
            f"data.test_fraction: {where}; set data.test_fraction (e.g. 0.1) to hold out a seeded, "
            "stratified part of each class, or add the test folder"
        )
    if not scan.classes:
        inside = f"{root}/train" if has_train else str(root)
        raise DataLayoutError(
            f"image_folder: no class folders in {inside}: expected {root}/train/<class>/ and "
            f"{root}/test/<class>/, or {root}/<class>/ with data.test_fraction"
        )
    if len(scan.table) == 0 and not scan.unreadable:
        ignored = scan.ignored_line()
        raise DataLayoutError(
            f"image_folder: no images in {root} (.jpg, .jpeg, .png, .bmp, .webp or .gif files in class "
            f"folders){'; ' + ignored if ignored else ''}"
        )
    if len(scan.classes) == 1:
        inside = f"{root}/train" if has_train else str(root)
        raise DataLayoutError(
            f"image_folder: one class folder ({scan.classes[0]}) in {inside}: a classifier needs at least two; "
            "is data.root the folder that holds the class folders?"
        )


def _check_classes(scan: FolderScan, plan: Plan) -> None:
    root = scan.root
    if scan.test_only_classes:
        names = ", ".join(scan.test_only_classes[:5])
        raise DataLayoutError(
            f"image_folder: {len(scan.test_only_classes)} class(es) in {root}/{scan.test_folder}/ but not in "
            f"{root}/train/: {names}; a model cannot learn a class it never sees: add training images or "
            "remove those folders"
        )
    counts = np.bincount(plan.labels[plan.use == TRAIN], minlength=len(plan.classes))
    empty = [name for name, n in zip(plan.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        base = root / "train" if scan.test_folder is not None else root
        shown = ", ".join(str(base / name) for name in empty[:3]) + (
            f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        )
        raise DataLayoutError(
            f"image_folder: {len(empty)} class folder(s) without a usable training image: {shown}; "
            "add images or remove the folder"
        )
    if not (plan.use == TEST).any():
        raise DataLayoutError(f"image_folder: no test images in {root}; add some, or raise data.test_fraction")


def _size_default(probes: Any, ok: np.ndarray) -> tuple[int, int]:
    sizes = Counter(zip(probes.height[ok].tolist(), probes.width[ok].tolist(), strict=True))
    if len(sizes) == 1:
        return next(iter(sizes))
    common = sizes.most_common()
    shown = ", ".join(f"{h}x{w}: {n}" for (h, w), n in common[:3]) + (" ..." if len(common) > 3 else "")
    (h, w), _ = common[0]
    suggestion = f"{h}" if h == w else f"[{h}, {w}]"
    raise ConfigError(
        f"data.image_size: the images have {len(sizes)} different sizes (height x width: {shown}); "
        f"set data.image_size to resize them all, e.g. image_size: {suggestion} (the most common)"
    )


def _stratified(labels: np.ndarray, ok: np.ndarray, n_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Per class, a seeded draw of its share of the test files (see split.py)."""
    rng = np.random.Generator(np.random.PCG64(mix_seed(seed, 0x7E57)))
    use = np.full(len(labels), EXCLUDED, dtype=np.int8)
    members = [np.flatnonzero(ok & (labels == c)) for c in range(n_classes)]
    counts = stratified_counts(np.array([len(rows) for rows in members]), fraction)
    for rows, n_test in zip(members, counts.tolist(), strict=True):
        use[rows] = TRAIN
        use[rows[rng.permutation(len(rows))[:n_test]]] = TEST
    return use


def _new_plan(
    scan: FolderScan,
    seed: int,
    image_size: int | list[int] | None,
    channels: int | None,
    test_fraction: float | None,
    skip_bad: bool,
    folder: Path | None,
    num_workers: int,
) -> Plan:
    _check_layout(scan, test_fraction)
    probes = probe_files(scan.root, scan.table, folder, num_workers)
    ok = np.array([not r for r in probes.reason], dtype=bool)
    bad = list(scan.unreadable) + [(scan.table.path(i), probes.reason[i]) for i in np.flatnonzero(~ok).tolist()]
    if bad and not skip_bad:
        raise _bad_files_error(scan.root, bad)
    if not ok.any():
        raise DataLayoutError(f"image_folder: none of the {len(ok)} image files in {scan.root} can be read")
    if channels is None:
        channels = 1 if bool(probes.grey[ok].all()) else 3
    if image_size is None:
        size = _size_default(probes, ok)
    else:
        size = (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])
    ok &= scan.labels >= 0  # a test class training lacks is refused in _check_classes
    if test_fraction is None:
        use = np.where(ok, scan.split, EXCLUDED).astype(np.int8)
    else:
        use = _stratified(scan.labels, ok, len(scan.classes), test_fraction, seed)
    plan = Plan(use, scan.labels, scan.classes, channels, size, bad)
    _check_classes(scan, plan)
    used = plan.use != EXCLUDED
    same_size = bool((probes.height[used] == size[0]).all() and (probes.width[used] == size[1]).all())
    # GIF and WebP decode as colour only: grey runs convert them
    plan.as_decoded = same_size and not (channels == 1 and _gif_or_webp(scan.table))
    return plan


def _gif_or_webp(table: FileTable) -> bool:
    names = table.blob.tobytes().lower()
    return b".gif" in names or b".webp" in names


def _plan_from_record(scan: FolderScan, record: dict[str, Any]) -> Plan:
    if record.get("format") != RECORD_FORMAT:
        raise DataError(
            f"image_folder: the checkpoint's data record is {record.get('format')!r}, not {RECORD_FORMAT!r} "
            "(written by another trainkit version)"
        )
    try:
        table = table_from_record(record["index"])
        check_unchanged(scan, table, list(record["unreadable"]))
        return Plan(
            use=record["use"].numpy().astype(np.int8),
            labels=record["labels"].numpy().astype(np.int64),
            classes=list(record["classes"]),
            channels=int(record["channels"]),
            size=(int(record["image_size"][0]), int(record["image_size"][1])),
            left_out=[(str(p), str(r)) for p, r in record["left_out"]],
            mean=tuple(record["mean"]),
            std=tuple(record["std"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(
            f"image_folder: the checkpoint's data record is damaged ({type(exc).__name__}: {exc})"
        ) from None


class _DecodeRows:
    def __init__(self, root: Path, table: FileTable, channels: int, size: tuple[int, int]):
        self.root, self.table, self.channels, self.size = root, table, channels, size

    def __call__(self, rows: np.ndarray) -> list[tuple[int, np.ndarray | str]]:
        out: list[tuple[int, np.ndarray | str]] = []
        for i in rows.tolist():
            try:
                out.append((i, decode_file(self.table.file(self.root, i), self.channels, self.size).numpy()))
            except ImageFileError as exc:
                out.append((i, exc.reason))
        return out


def _stats_sample(plan: Plan, seed: int) -> np.ndarray:
    train = np.flatnonzero(plan.use == TRAIN)
    rng = np.random.Generator(np.random.PCG64(mix_seed(seed, 0x57A75)))
    return np.sort(train[rng.permutation(len(train))[:STATS_SAMPLE]])


def _mean_std(images: list[np.ndarray], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels scaled to [0, 1], in float64 (numpy: thread-count independent)."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for image in images:
        pixels = image.reshape(channels, -1).astype(np.float64) / 255.0
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0) * count / max(count - 1, 1)
    std = np.sqrt(var)
    std[std < 1e-6] = 1.0  # constant images: no scaling rather than a division by zero
    return tuple(mean.tolist()), tuple(std.tolist())


def _exclude(plan: Plan, scan: FolderScan, failed: dict[int, str], skip_bad: bool) -> None:
    """Files whose data would not decode (the header did): an error, or left out."""
    failed = {i: r for i, r in failed.items() if plan.use[i] != EXCLUDED}
    if not failed:
        return
    bad = [(scan.table.path(i), reason) for i, reason in sorted(failed.items())]
    if not skip_bad:
        raise _bad_files_error(scan.root, bad)
    plan.use[list(failed)] = EXCLUDED
    plan.left_out += bad
    _check_classes(scan, plan)


def build_image_folder(
    root: str,
    seed: int,
    record: dict[str, Any] | None,
    num_workers: int,
    image_size: int | list[int] | None,
    channels: int | None,
    mean: list[float] | None,
    std: list[float] | None,
    test_fraction: float | None,
    on_bad_file: str,
    cache: str,
    cache_dir: str | None,
) -> DataBundle:
    scan = scan_folder(Path(root).expanduser())
    skip_bad = on_bad_file == "skip"
    folder = cache_folder(cache_dir) if cache == "auto" else None
    fresh = record is None
    if record is None:
        plan = _new_plan(scan, seed, image_size, channels, test_fraction, skip_bad, folder, num_workers)
    else:
        plan = _plan_from_record(scan, record)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != plan.channels:
            raise ConfigError(f"data.{name}: has {len(values)} values for {plan.channels}-channel images")
    shape = (plan.channels, *plan.size)
    pixels = None
    if folder is not None:
        pixels = cached_pixels(
            scan.root, scan.table, plan.channels, plan.size, folder, num_workers, transforms=not plan.as_decoded
        )
    sample = _stats_sample(plan, seed) if fresh and (mean is None or std is None) else None
    if pixels is not None:
        # resumed: a used file that no longer decodes (same size and time, other bytes) is an error
        _exclude(plan, scan, pixels.failed, skip_bad and fresh)
        if sample is not None:
            mapped = np.load(pixels.path, mmap_mode="r")
            plan.mean, plan.std = _mean_std([mapped[i] for i in sample if i not in pixels.failed], plan.channels)
            del mapped
    else:
        load_decoders(transforms=not plan.as_decoded)  # files are decoded from here on: once here, not per worker
        if sample is not None:
            chunks = [sample[i : i + 128] for i in range(0, len(sample), 128)]
            reader = _DecodeRows(scan.root, scan.table, plan.channels, plan.size)
            decoded = [item for part in parallel_map(reader, chunks, num_workers) for item in part]
            _exclude(plan, scan, {i: r for i, r in decoded if isinstance(r, str)}, skip_bad)
            plan.mean, plan.std = _mean_std([r for _, r in decoded if not isinstance(r, str)], plan.channels)
    if mean is not None:
        plan.mean = tuple(mean)
    if std is not None:
        plan.std = tuple(std)
    splits: dict[int, CachedImages | ImageFiles] = {}
    for code in (TRAIN, TEST):
        rows = np.flatnonzero(plan.use == code)
        labels = plan.labels[rows]
        if pixels is not None:
            splits[code] = CachedImages(pixels.path, rows, labels, shape)
        else:
            splits[code] = ImageFiles(scan.root, scan.table, rows, labels, shape, skip_bad)
    if fresh:
        _report(scan, plan, splits, pixels is not None)
        record = {
            "format": RECORD_FORMAT,
            "index": table_record(scan.table),
            "use": torch.from_numpy(plan.use.copy()),
            "labels": torch.from_numpy(plan.labels.copy()),
            "classes": list(plan.classes),
            "channels": plan.channels,
            "image_size": list(plan.size),
            "mean": list(plan.mean or ()),
            "std": list(plan.std or ()),
            "left_out": [list(item) for item in plan.left_out],
            "unreadable": [path for path, _ in scan.unreadable],
        }
    info = DatasetInfo(
        "classification", shape, len(plan.classes), class_names=list(plan.classes), mean=plan.mean, std=plan.std
    )
    return DataBundle(info, splits[TRAIN], splits[TEST], record=record)


def _report(scan: FolderScan, plan: Plan, splits: dict[int, Any], cached: bool) -> None:
    c, (h, w) = plan.channels, plan.size
    where = "decoded images cached" if cached else "decoded per batch"
    ignored = scan.ignored_line()
    log.info(
        "image_folder: %s: %d training and %d test images, %d classes, %dx%dx%d (%s)%s",
        scan.root,
        len(splits[TRAIN]),
        len(splits[TEST]),
        len(plan.classes),
        c,
        h,
        w,
        where,
        f"; {ignored}" if ignored else "",
    )
    if plan.left_out:
        files = "file" if len(plan.left_out) == 1 else "files"
        log.warning(
            "image_folder: left out %d unreadable %s (on_bad_file: skip): %s",
            len(plan.left_out),
            files,
            name_files(plan.left_out, scan.root),
        )
