"""The image folder's caches, under `data.cache_dir` (default ~/.cache/trainkit/image_folder):

- `index-<root>.npz`: each file's header facts (size, grey or colour, or why it cannot be
  read), reused for every file whose path, size and modification time are unchanged, so a
  second scan of a large folder only lists it (names and stat).
- `pixels-<key>/`: every file decoded to uint8 at the run's channels and size, in one
  memory-mapped `.npy` (N, C, H, W), with which files failed to decode. The key hashes the
  folder's real path, the file index (paths, sizes, mtimes), channels, size and the
  decoder's version: any change makes a new key, never a stale hit.

Both are written to a temporary name and renamed into place (a folder rename for the
pixels), after an fsync, so a killed run leaves at most a temporary that is never trusted
and is removed by the next builder of that key. Builders of the same key take turns
through a lock file (another trial of the same data waits, then reuses).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainkit.builtin.image_decode import ImageFileError, decode_file, load_decoders, probe_file
from trainkit.builtin.image_index import FileTable
from trainkit.training.loader import parallel_map

log = logging.getLogger("trainkit")
FORMAT = 1  # bump when what the cache holds changes
_CHUNK = 256  # files per worker task


def cache_folder(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser() / "image_folder"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainkit" / "image_folder"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path, name: str) -> Iterator[None]:
    """Exclusive use of `name` among processes on this machine (no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / f"{name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("image_folder: waiting for another process that is filling the cache %s", folder / name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _chunks(rows: np.ndarray) -> list[np.ndarray]:
    return [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]


# ------------------------------------------------------------------ header probes


@dataclass
class Probes:
    height: np.ndarray  # int32, 0 where unreadable
    width: np.ndarray
    grey: np.ndarray  # bool
    reason: list[str]  # "" where readable


class _ProbeChunk:
    def __init__(self, root: Path, table: FileTable):
        self.root, self.table = root, table

    def __call__(self, rows: np.ndarray) -> list[tuple[int, int, bool, str]]:
        out = []
        for i in rows.tolist():
            try:
                probe = probe_file(self.table.file(self.root, i))
                out.append((probe.height, probe.width, probe.grey, ""))
            except ImageFileError as exc:
                out.append((0, 0, False, exc.reason))
        return out


def _index_file(folder: Path, root: Path) -> Path:
    return folder / f"index-{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:20]}.npz"


def _load_index(path: Path) -> tuple[FileTable, Probes] | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            if int(saved["format"]) != FORMAT:
                return None
            table = FileTable(saved["blob"], saved["offsets"], saved["sizes"], saved["mtimes"])
            reasons = json.loads(str(saved["reasons"]))
            return table, Probes(saved["height"], saved["width"], saved["grey"], reasons)
    except Exception:  # missing, half-written by another tool, an older layout: probe again
        return None


def _save_index(path: Path, table: FileTable, probes: Probes) -> None:
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            arrays = {
                "format": np.array(FORMAT),
                "reasons": np.array(json.dumps(probes.reason)),
                "height": probes.height,
                "width": probes.width,
                "grey": probes.grey,
                **table.arrays(),
            }
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        log.warning("could not write the image index cache %s (%s)", path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            temp.unlink()


def probe_files(root: Path, table: FileTable, folder: Path | None, num_workers: int) -> Probes:
    """Header facts of every file, from the index cache where the file is unchanged."""
    n = len(table)
    probes = Probes(np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, bool), [""] * n)
    todo = np.arange(n)
    cached = _load_index(_index_file(folder, root)) if folder is not None else None
    if cached is not None:
        old_table, old = cached
        if old_table.same_as(table):
            return old
        known = {key: i for i, key in enumerate(old_table.keys())}
        missing = []
        for i, key in enumerate(table.keys()):
            j = known.get(key)
            if j is None:
                missing.append(i)
            else:
                probes.height[i], probes.width[i], probes.grey[i] = old.height[j], old.width[j], old.grey[j]
                probes.reason[i] = old.reason[j]
        todo = np.array(missing, dtype=np.int64)
    chunks = _chunks(todo)
    if chunks:
        from PIL import Image  # noqa: F401  (imported once, before the workers fork)
    for rows, results in zip(chunks, parallel_map(_ProbeChunk(root, table), chunks, num_workers), strict=True):
        for i, (h, w, grey, reason) in zip(rows.tolist(), results, strict=True):
            probes.height[i], probes.width[i], probes.grey[i], probes.reason[i] = h, w, grey, reason
    if folder is not None:  # the folder changed since the index was cached, or it was not yet
        _save_index(_index_file(folder, root), table, probes)
    return probes


# ------------------------------------------------------------------ decoded pixels


def pixels_key(root: Path, table: FileTable, channels: int, size: tuple[int, int]) -> str:
    # the decoder's version from the package metadata: importing torchvision costs seconds
    from importlib.metadata import PackageNotFoundError, version

    try:
        decoder = f"torchvision {version('torchvision')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        import torchvision

        decoder = f"torchvision {torchvision.__version__}"
    h = hashlib.sha256()
    for part in (f"format {FORMAT}", str(root.resolve()), table.digest(), f"{channels}x{size[0]}x{size[1]}", decoder):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


class _DecodeChunk:
    """Decodes rows of the index straight into the cache file (opened in each worker)."""

    def __init__(self, root: Path, table: FileTable, target: Path, channels: int, size: tuple[int, int]):
        self.root, self.table, self.target = root, table, target
        self.channels, self.size = channels, size

    def __call__(self, rows: np.ndarray) -> list[tuple[int, str]]:
        pixels = np.load(self.target, mmap_mode="r+")
        failed = []
        for i in rows.tolist():
            try:
                image = decode_file(self.table.file(self.root, i), self.channels, self.size)
                pixels[i] = image.numpy()
            except ImageFileError as exc:
                failed.append((i, exc.reason))
        pixels.flush()
        del pixels
        return failed


@dataclass
class PixelCache:
    path: Path  # the .npy file, (N, C, H, W) uint8, one row per index entry
    failed: dict[int, str]  # index row -> why it could not be decoded


def _open_existing(final: Path, shape: tuple[int, ...]) -> PixelCache | None:
    """A finished cache, if it is what its key promises (someone may have truncated it since)."""
    try:
        pixels = np.load(final / "pixels.npy", mmap_mode="r")
        ok = pixels.shape == shape and pixels.dtype == np.uint8
        del pixels
        failed = {int(k): str(v) for k, v in json.loads((final / "failed.json").read_text()).items()}
    except Exception:  # whatever the damage (an emptied file is numpy's EOFError): decode again
        ok = False
    if not ok:
        log.warning("image_folder: the cache %s is damaged; decoding the images again", final)
        return None
    return PixelCache(final / "pixels.npy", failed)


def cached_pixels(
    root: Path,
    table: FileTable,
    channels: int,
    size: tuple[int, int],
    folder: Path,
    num_workers: int,
    transforms: bool = True,
) -> PixelCache | None:
    """Every file of the index decoded (a row of zeros where it failed, and why), from the
    cache or decoded now into it; None when the cache folder cannot hold them (then the
    files are decoded per batch). What a cache holds depends on its key alone.
    `transforms`: some images need resizing or a colour conversion (see load_decoders)."""
    key = pixels_key(root, table, channels, size)
    final = folder / f"pixels-{key}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder, f"pixels-{key}"):
            if final.exists():
                found = _open_existing(final, (len(table), channels, *size))
                if found is not None:
                    return found
                shutil.rmtree(final, ignore_errors=True)  # damaged since it was written: rebuild
            for stale in folder.glob(f"pixels-{key}.tmp-*"):  # a killed builder's leftovers
                shutil.rmtree(stale, ignore_errors=True)
            nbytes = len(table) * channels * size[0] * size[1]
            free = shutil.disk_usage(folder).free
            if nbytes + (64 << 20) > free:
                log.info(
                    "image_folder: not caching decoded images: %.1f GB needed, %.1f GB free in %s",
                    nbytes / 1e9,
                    free / 1e9,
                    folder,
                )
                return None
            return _build(root, table, channels, size, folder, final, key, num_workers, transforms)
    except OSError as exc:
        log.warning(
            "image_folder: cannot use the cache folder %s (%s); decoding without a cache",
            folder,
            exc.strerror or exc,
        )
        return None


def _build(
    root: Path,
    table: FileTable,
    channels: int,
    size: tuple[int, int],
    folder: Path,
    final: Path,
    key: str,
    num_workers: int,
    transforms: bool,
) -> PixelCache:
    load_decoders(transforms)  # before the workers fork
    temp = folder / f"pixels-{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()
    try:
        target = temp / "pixels.npy"
        pixels = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(table), channels, *size))
        pixels.flush()
        del pixels
        failed: dict[int, str] = {}
        for result in parallel_map(
            _DecodeChunk(root, table, target, channels, size), _chunks(np.arange(len(table))), num_workers
        ):
            failed.update(dict(result))
        (temp / "failed.json").write_text(json.dumps({str(k): v for k, v in sorted(failed.items())}))
        for name in ("pixels.npy", "failed.json"):
            with open(temp / name, "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(temp)
        os.rename(temp, final)  # atomic: the cache appears whole or not at all
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return PixelCache(final / "pixels.npy", failed)
