"""image_folder under torchrun: ranks build one cache together and each loads only its shard."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import load_ckpt, subprocess_env, write_config
from helpers_images import image_config, write_folder

pytestmark = pytest.mark.slow


def _torchrun(config):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "trainkit", "train", str(config), "-q"]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)


def test_two_processes_share_the_cache_and_match_one_process(tmp_path, cli):
    root = write_folder(tmp_path / "data", train=16, test=4, classes=2)

    def config(name, batch, **data):
        base = image_config(tmp_path, root, batch_size=batch, cache_dir=str(tmp_path / f"cache-{name}"), **data)
        return write_config(tmp_path / f"{name}.yaml", base | {"name": name})

    assert cli("train", config("one", 8), "-q")[0] == 0
    cached = _torchrun(config("two", 4))  # both ranks start with an empty cache folder
    assert cached.returncode == 0, cached.stderr
    files = _torchrun(config("files", 4, cache="off", num_workers=1))  # each rank decodes its own shard
    assert files.returncode == 0, files.stderr
    assert len(list((tmp_path / "cache-two" / "image_folder").glob("pixels-*/pixels.npy"))) == 1
    one, two, per_batch = (load_ckpt(tmp_path / "ckpt" / n / "last.pt") for n in ("one", "two", "files"))
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], rtol=1e-5, atol=1e-6), key
        assert torch.equal(two["model"][key], per_batch["model"][key]), key  # cache or not: the same bits
