"""The image caches: reused when nothing changed, rebuilt when anything did, never trusted half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, subprocess_env
from helpers_images import write_folder
from trainkit.builtin import image_cache
from trainkit.builtin.image_folder import image_folder
from trainkit.builtin.image_index import scan_folder
from trainkit.builtin.image_sources import CachedImages, ImageFiles


def build(root, cache_dir, **options):
    return image_folder(root=str(root), seed=0, cache_dir=str(cache_dir), **options)


def pixel_folders(cache_dir):
    """The finished pixel caches (not temporaries)."""
    return sorted(p.name for p in (cache_dir / "image_folder").glob("pixels-*") if p.is_dir() and ".tmp-" not in p.name)


@pytest.fixture
def calls(monkeypatch):
    """Counts of header probes and decodes done for the caches."""
    counts = {"probe": 0, "decode": 0}
    probe, decode = image_cache.probe_file, image_cache.decode_file

    def counting_probe(path):
        counts["probe"] += 1
        return probe(path)

    def counting_decode(path, *args):
        counts["decode"] += 1
        return decode(path, *args)

    monkeypatch.setattr(image_cache, "probe_file", counting_probe)
    monkeypatch.setattr(image_cache, "decode_file", counting_decode)
    return counts


def test_a_second_build_probes_and_decodes_nothing(tmp_path, calls):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    first = build(root, tmp_path / "cache")
    assert calls == {"probe": 12, "decode": 12}
    second = build(root, tmp_path / "cache")
    assert calls == {"probe": 12, "decode": 12}  # index and pixels both from the cache
    assert torch.equal(first.train.as_tensor_split().inputs, second.train.as_tensor_split().inputs)
    assert first.info == second.info and isinstance(second.train, CachedImages)


def test_a_changed_file_is_probed_again_and_the_pixels_decoded_under_a_new_key(tmp_path, calls):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    build(root, tmp_path / "cache")
    changed = root / "train" / "class_1" / "0002.png"
    changed.write_bytes(changed.read_bytes())  # same bytes, new modification time
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    build(root, tmp_path / "cache")
    assert calls == {"probe": 13, "decode": 24}  # one header again; a new key decodes every file
    assert len(pixel_folders(tmp_path / "cache")) == 2
    build(root, tmp_path / "cache", image_size=4)  # another size: another key
    assert len(pixel_folders(tmp_path / "cache")) == 3 and calls["probe"] == 13


def test_cache_off_writes_nothing_and_decodes_per_batch(tmp_path):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    bundle = build(root, tmp_path / "cache", cache="off")
    assert isinstance(bundle.train, ImageFiles) and not (tmp_path / "cache").exists()
    cached = build(root, tmp_path / "cache")
    assert bundle.info == cached.info
    x, y, skipped = bundle.train.read_batch(np.arange(8))
    assert torch.equal(x, cached.train.as_tensor_split().inputs) and skipped == []


def test_the_default_cache_folder_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache.cache_folder(None) == tmp_path / "xdg" / "trainkit" / "image_folder"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert image_cache.cache_folder(None) == tmp_path / "home" / ".cache" / "trainkit" / "image_folder"


def test_an_unwritable_cache_folder_decodes_without_a_cache(tmp_path, caplog):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    bundle = build(root, tmp_path / "cache")
    assert isinstance(bundle.train, ImageFiles)
    assert any("decoding without a cache" in r.getMessage() for r in caplog.records)


def test_a_half_written_cache_is_never_trusted_and_is_cleaned_up(tmp_path, calls):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    reference = build(root, tmp_path / "reference").train.as_tensor_split().inputs
    calls["decode"] = 0
    # what a builder killed mid-write leaves: a temporary folder with part of the pixels
    key = image_cache.pixels_key(root, scan_folder(root).table, 1, (8, 8))
    leftover = tmp_path / "cache" / "image_folder" / f"pixels-{key}.tmp-999999-dead"
    leftover.mkdir(parents=True)
    np.lib.format.open_memmap(leftover / "pixels.npy", mode="w+", dtype=np.uint8, shape=(12, 1, 8, 8))
    bundle = build(root, tmp_path / "cache")
    assert calls["decode"] == 12 and not leftover.exists()
    assert pixel_folders(tmp_path / "cache") == [f"pixels-{key}"]
    assert torch.equal(bundle.train.as_tensor_split().inputs, reference)


def test_an_interrupted_build_removes_its_temporary(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    decode = image_cache.decode_file
    seen = []

    def interrupted(path, *args):
        seen.append(path)
        if len(seen) == 5:
            raise KeyboardInterrupt
        return decode(path, *args)

    monkeypatch.setattr(image_cache, "decode_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(root, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "image_folder").glob("pixels-*") if p.is_dir()] == []  # none


KILLED_BUILD = """
import sys, time
from trainkit.builtin import image_cache
from trainkit.builtin.image_folder import image_folder
from trainkit.builtin.image_index import scan_folder
decode = image_cache.decode_file
def slow(path, *args):
    time.sleep(0.05)
    print("decoding", flush=True)
    return decode(path, *args)
image_cache.decode_file = slow
image_folder(root=sys.argv[1], seed=0, cache_dir=sys.argv[2], num_workers=0)
"""


@pytest.mark.slow
def test_a_build_killed_by_sigkill_leaves_nothing_trusted(tmp_path):
    root = write_folder(tmp_path / "data", train=20, test=5, classes=2)
    env = subprocess_env() | {"PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(root), str(tmp_path / "cache")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    for _ in range(10):  # killed in the middle of decoding
        process.stdout.readline()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    folder = tmp_path / "cache" / "image_folder"
    assert pixel_folders(tmp_path / "cache") == [] and len(list(folder.glob("pixels-*.tmp-*"))) == 1
    bundle = build(root, tmp_path / "cache")
    reference = build(root, tmp_path / "reference")
    assert len(pixel_folders(tmp_path / "cache")) == 1 and list(folder.glob("pixels-*.tmp-*")) == []
    assert torch.equal(bundle.train.as_tensor_split().inputs, reference.train.as_tensor_split().inputs)


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_finished_cache_is_rebuilt(tmp_path, calls, caplog, damage):
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    reference = build(root, tmp_path / "cache").train.as_tensor_split().inputs.clone()
    (finished,) = pixel_folders(tmp_path / "cache")
    pixels = tmp_path / "cache" / "image_folder" / finished / "pixels.npy"
    # behind trainkit's back; an empty file is numpy's EOFError, which Click printed as "Aborted!"
    pixels.write_bytes(pixels.read_bytes()[:300] if damage == "truncated" else b"")
    bundle = build(root, tmp_path / "cache")
    assert calls["decode"] == 24 and any("is damaged" in r.getMessage() for r in caplog.records)
    assert torch.equal(bundle.train.as_tensor_split().inputs, reference)


def test_cache_off_written_bare_in_yaml_means_off(cli, tmp_path):
    """YAML 1.1 reads a bare `off` as false (and `on` as true): both mean what they say."""
    root = write_folder(tmp_path / "data", train=4, test=2, classes=2)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: c\nmodel: {{name: mlp}}\noptimizer: {{name: sgd, lr: 0.1}}\ntrainer: {{epochs: 1, device: cpu}}\n"
        f"checkpoint: {{dir: {tmp_path / 'ckpt'}}}\n"
        f"data: {{name: image_folder, root: {root}, cache: off, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    code, out, err = cli("train", config, "-q")
    assert code == 0, err
    assert not (tmp_path / "cache").exists()
    code, out, err = cli("train", config, "-q", "--overwrite", "data.cache=on")
    assert code == 0, err
    assert len(pixel_folders(tmp_path / "cache")) == 1
