"""An image folder's file index: what files there are, kept in arrays, and how it changed.

The index holds every candidate image file (by extension) as one bytes blob of relative
paths plus offsets, with sizes and modification times, all numpy arrays: a loader worker
gets arrays, never a Python list of path strings (whose reference counts would copy the
pages of a forked worker one by one). The same arrays key the caches and are recorded in
checkpoints, so a resume can say exactly which files were added, removed or replaced.

Layouts: DIR/train/<class>/... with DIR/test/<class>/... (or DIR/val/), or DIR/<class>/...
Class folders may nest sub-folders (their files belong to the class); symlinks are
followed, with a folder inside itself reported as a symlink loop. Hidden files and
folders, files of other extensions and files outside class folders are ignored and counted.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainkit.builtin.image_decode import EXTENSIONS, os_reason
from trainkit.errors import BadDataFileError, ConfigError, DataChangedError, DataLayoutError

TRAIN, TEST, EXCLUDED = 0, 1, -1  # what a file is used for
TEST_FOLDERS = ("test", "val")


@dataclass
class FileTable:
    """Files as arrays: relative paths ('/'-separated, one blob + offsets), sizes, mtimes (ns)."""

    blob: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len + 1
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64

    @classmethod
    def from_entries(cls, entries: list[tuple[str, int, int]]) -> FileTable:
        # one encode of all paths joined by NUL (which no path contains), as os.fsencode would
        joined = os.fsencode("\0".join(path for path, _, _ in entries) + "\0") if entries else b""
        separators = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == 0)
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        offsets[1:] = separators - np.arange(len(entries))  # positions once the separators are gone
        blob = np.frombuffer(joined.replace(b"\0", b""), dtype=np.uint8).copy()
        sizes = np.array([s for _, s, _ in entries], dtype=np.int64)
        mtimes = np.array([m for _, _, m in entries], dtype=np.int64)
        return cls(blob, offsets, sizes, mtimes)

    def __len__(self) -> int:
        return len(self.sizes)

    def path(self, i: int) -> str:
        return os.fsdecode(self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes())

    def file(self, root: Path, i: int) -> str:
        """The i-th file's full path (os.path rather than pathlib: ~10 us less per file read)."""
        return os.path.join(root, self.path(i))

    def paths(self) -> list[str]:
        raw, offsets = self.blob.tobytes(), self.offsets.tolist()
        return [os.fsdecode(raw[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def keys(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of each file: what identifies an unchanged file."""
        return list(zip(self.paths(), self.sizes.tolist(), self.mtimes.tolist(), strict=True))

    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.offsets, self.blob, self.sizes, self.mtimes):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def same_as(self, other: FileTable) -> bool:
        return all(
            np.array_equal(a, b)
            for a, b in (
                (self.offsets, other.offsets),
                (self.blob, other.blob),
                (self.sizes, other.sizes),
                (self.mtimes, other.mtimes),
            )
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {"blob": self.blob, "offsets": self.offsets, "sizes": self.sizes, "mtimes": self.mtimes}


@dataclass
class FolderScan:
    root: Path
    test_folder: str | None  # "test" or "val" in the train/test layout; None for DIR/<class>/
    classes: list[str]  # the training classes, sorted: their index is the label
    table: FileTable  # train files first (class by class), then test files
    labels: np.ndarray  # int64 class index per file; -1 for a test class that training lacks
    split: np.ndarray  # int8 TRAIN / TEST per file (all TRAIN without a test folder)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    test_only_classes: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # why -> count; ".ext" for other file types

    def ignored_line(self) -> str:
        """'ignored 4 entries: 2 hidden, 2 of other types (.json, .txt)', or ''."""
        if not self.ignored:
            return ""
        types = sorted(k for k in self.ignored if k.startswith("."))
        parts = [f"{n} {why}" for why, n in sorted(self.ignored.items()) if not why.startswith(".")]
        if types:
            parts.append(f"{sum(self.ignored[t] for t in types)} of other types ({', '.join(types)})")
        total = sum(self.ignored.values())
        return f"ignored {total} {'entry' if total == 1 else 'entries'}: {', '.join(parts)}"


def _listdir(folder: Path, rel: str, unreadable: list[tuple[str, str]]) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        unreadable.append((rel or ".", f"cannot list the folder: {os_reason(exc)}"))
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _walk_class(
    folder: Path,
    rel: str,
    ancestors: frozenset[tuple[int, int]],
    files: list[tuple[str, int, int]],
    unreadable: list[tuple[str, str]],
    ignored: Counter,
) -> None:
    """Every image file under one class folder, recursively, in name order."""
    for entry in _listdir(folder, rel, unreadable):
        name = entry.name
        relpath = f"{rel}/{name}"
        if name[0] == ".":
            ignored["hidden"] += 1
            continue
        if _is_dir(entry):
            try:
                info = entry.stat()
            except OSError as exc:
                unreadable.append((relpath, os_reason(exc)))
                continue
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                unreadable.append((relpath, "symlink loop (a folder that contains itself)"))
                continue
            _walk_class(Path(entry.path), relpath, ancestors | {key}, files, unreadable, ignored)
            continue
        dot = name.rfind(".")
        extension = name[dot:].lower() if dot > 0 else ""
        if extension not in EXTENSIONS:
            ignored[extension or ".(no extension)"] += 1
            continue
        try:
            info = entry.stat()  # follows a symlink to its target
        except OSError as exc:
            unreadable.append((relpath, os_reason(exc)))
            continue
        if not stat.S_ISREG(info.st_mode):
            unreadable.append((relpath, "not a regular file"))
            continue
        files.append((relpath, info.st_size, info.st_mtime_ns))


def _class_folders(folder: Path, rel: str, unreadable: list, ignored: Counter) -> list[os.DirEntry]:
    folders = []
    for entry in _listdir(folder, rel, unreadable):
        if entry.name.startswith("."):
            ignored["hidden"] += 1
        elif _is_dir(entry):
            folders.append(entry)
        else:
            ignored["outside class folders"] += 1
    return folders


def check_root(root: Path) -> None:
    if not root.exists():
        raise ConfigError(f"data.root: {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder")


def scan_folder(root: Path) -> FolderScan:
    """List the folder (names and stat only: no file is opened)."""
    check_root(root)
    unreadable: list[tuple[str, str]] = []
    ignored: Counter = Counter()
    top_folders = _class_folders(root, "", unreadable, ignored)
    if unreadable:  # the root itself cannot be listed
        raise BadDataFileError(f"image_folder: {root}: {unreadable[0][1]}")
    top = {e.name: e for e in top_folders}
    test_folders = [name for name in TEST_FOLDERS if name in top]
    if "train" in top:
        if len(test_folders) > 1:
            raise DataLayoutError(
                f"image_folder: {root} has both test/ and val/; one of them is the test split: move or rename the other"
            )
        test_folder = test_folders[0] if test_folders else None
        splits = [("train", TRAIN)] + ([(test_folder, TEST)] if test_folder else [])
        others = [name for name in top if name not in ("train", *TEST_FOLDERS)]
        if others:
            ignored["folders beside train/ and test/"] += len(others)
    elif test_folders:
        raise DataLayoutError(
            f"image_folder: {root} has {test_folders[0]}/ but no train/ folder: put the training images in "
            f"{root}/train/<class>/"
        )
    else:
        test_folder = None
        splits = [("", TRAIN)]
    per_split: dict[int, dict[str, list[tuple[str, int, int]]]] = {}
    root_key = (root.stat().st_dev, root.stat().st_ino)
    for name, code in splits:
        above = {root_key}  # a link back to the root or the split folder is a loop too
        if name:
            info = (root / name).stat()
            above.add((info.st_dev, info.st_ino))
        folders = _class_folders(root / name, name, unreadable, ignored) if name else top_folders
        classes: dict[str, list[tuple[str, int, int]]] = {}
        for entry in folders:
            rel = f"{name}/{entry.name}" if name else entry.name
            files: list[tuple[str, int, int]] = []
            try:
                key = entry.stat()
            except OSError as exc:
                unreadable.append((rel, os_reason(exc)))
                continue
            ancestors = frozenset(above | {(key.st_dev, key.st_ino)})
            _walk_class(Path(entry.path), rel, ancestors, files, unreadable, ignored)
            classes[entry.name] = files
        per_split[code] = classes
    class_names = sorted(per_split[TRAIN])
    index = {name: i for i, name in enumerate(class_names)}
    entries: list[tuple[str, int, int]] = []
    labels: list[int] = []
    split: list[int] = []
    for code, classes in per_split.items():
        for name in sorted(classes):
            entries += classes[name]
            labels += [index.get(name, -1)] * len(classes[name])
            split += [code] * len(classes[name])
    test_only = sorted(n for n, files in per_split.get(TEST, {}).items() if n not in index and files)
    return FolderScan(
        root=root,
        test_folder=test_folder,
        classes=class_names,
        table=FileTable.from_entries(entries),
        labels=np.array(labels, dtype=np.int64),
        split=np.array(split, dtype=np.int8),
        unreadable=unreadable,
        test_only_classes=test_only,
        ignored=ignored,
    )


def name_files(items: list[tuple[str, str]], root: Path, limit: int = 3) -> str:
    """'root/a.png (empty file), root/b.jpg (...) and 5 more'."""
    shown = ", ".join(f"{root / path} ({reason})" for path, reason in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def _names(paths: list[str], root: Path, limit: int = 3) -> str:
    shown = ", ".join(str(root / p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def describe_changes(old: FileTable, new: FileTable, root: Path) -> str:
    """What differs between the recorded index and the folder now; '' when nothing does."""
    before = {p: (s, m) for p, s, m in old.keys()}
    after = {p: (s, m) for p, s, m in new.keys()}
    added = [p for p in after if p not in before]
    removed = [p for p in before if p not in after]
    replaced = [p for p in after if p in before and after[p] != before[p]]
    parts = []
    for what, paths in (("added", added), ("removed", removed), ("replaced (other size or time)", replaced)):
        if paths:
            files = "file" if len(paths) == 1 else "files"
            parts.append(f"{len(paths)} {files} {what}: {_names(paths, root)}")
    return "; ".join(parts)


def check_unchanged(scan: FolderScan, recorded: FileTable, recorded_unreadable: list[str]) -> None:
    """Resume and eval need the folder the run was trained on: DataChangedError if not."""
    changes = describe_changes(recorded, scan.table, scan.root)
    new_unreadable = [p for p, _ in scan.unreadable if p not in set(recorded_unreadable)]
    if new_unreadable:
        changes = "; ".join(filter(None, [changes, f"newly unreadable: {_names(new_unreadable, scan.root)}"]))
    if changes:
        raise DataChangedError(
            f"image_folder: {scan.root} changed since this run was trained: {changes}. "
            "Put the folder back as it was, or start a new run"
        )


def table_record(table: FileTable) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in table.arrays().items()}


def table_from_record(values: dict[str, Any]) -> FileTable:
    return FileTable(**{k: values[k].numpy() for k in ("blob", "offsets", "sizes", "mtimes")})
