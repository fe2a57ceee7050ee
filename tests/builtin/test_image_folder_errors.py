"""Every bad image folder gets one line naming the files (first few and a count) and its exit code."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from conftest import load_ckpt, write_config
from helpers_images import image_config, save, write_folder
from trainkit.builtin import image_decode
from trainkit.training.batches import epoch_permutation


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data", train=6, test=2, classes=3)


def run(cli, tmp_path, root, *overrides, command="train", **data):
    path = write_config(tmp_path / "images.yaml", image_config(tmp_path, root, **data))
    return cli(command, path, *overrides)


def one_error(err: str) -> str:
    """The one error line (notes such as the host-memory one may precede it); never a traceback."""
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == errors[0], err
    return errors[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"hello, this is text\n", "not an image (its content is not JPEG, PNG, GIF, WebP or BMP)"),
    ],
    ids=["zero-byte", "text-named-jpg"],
)
def test_unreadable_files_are_named_with_the_reason_exit_1(cli, tmp_path, folder, content, reason):
    bad = folder / "train" / "class_1" / "bad.jpg"
    bad.write_bytes(content)
    code, out, err = run(cli, tmp_path, folder)
    assert code == 1 and out == ""
    assert one_error(err) == (
        f"image_folder: 1 file cannot be read: {bad} ({reason}); "
        "fix or remove them, or set data.on_bad_file=skip to leave them out"
    )
    assert not (tmp_path / "ckpt" / "images").exists()  # nothing was started


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_files_found_while_decoding_first_few_and_a_count(cli, tmp_path, folder, workers):
    names = []
    for i in range(5):  # headers intact, data cut: found by the decoder, not by the header probe
        path = folder / "train" / f"class_{i % 3}" / f"000{i}.png"
        path.write_bytes(path.read_bytes()[:60])
        names.append(path)
    code, out, err = run(cli, tmp_path, folder, num_workers=workers)
    line = one_error(err)
    assert code == 1
    assert line.startswith(f"image_folder: 5 files cannot be read: {sorted(names)[0]} (truncated or corrupt PNG")
    assert line.endswith(" and 2 more; fix or remove them, or set data.on_bad_file=skip to leave them out")
    assert "Traceback" not in err and "worker" not in line


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_byte_in_a_png_is_named_not_a_crash(cli, tmp_path, folder, workers):
    """torchvision's PNG decoder dies with SIGSEGV on such a file (see image_png.py): with no
    workers that was the trainkit process itself, without a word."""
    path = folder / "train" / "class_1" / "0002.png"
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 6] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out, err = run(cli, tmp_path, folder, num_workers=workers)
    assert code == 1
    assert one_error(err) == (
        f"image_folder: 1 file cannot be read: {path} (truncated or corrupt PNG data (chunk IDAT: CRC mismatch)); "
        "fix or remove them, or set data.on_bad_file=skip to leave them out"
    )


def test_skip_leaves_bad_files_out_lists_them_once_and_records_them(cli, tmp_path, folder):
    (folder / "train" / "class_0" / "empty.png").write_bytes(b"")
    truncated = folder / "train" / "class_2" / "0003.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    code, out, err = run(cli, tmp_path, folder, "-q", on_bad_file="skip")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "left out" in line]
    assert len(warnings) == 1 and "left out 2 unreadable files (on_bad_file: skip)" in warnings[0]
    record = load_ckpt(tmp_path / "ckpt" / "images" / "last.pt")["data_record"]
    assert sorted(path for path, _ in record["left_out"]) == ["train/class_0/empty.png", "train/class_2/0003.png"]
    assert int((record["use"] == 0).sum()) == 17  # 18 + empty.png training files, 2 left out


def test_an_empty_class_folder_exit_2(cli, tmp_path, folder):
    (folder / "train" / "class_9").mkdir()
    code, _, err = run(cli, tmp_path, folder)
    assert code == 2
    assert one_error(err) == (
        f"image_folder: 1 class folder(s) without a usable training image: {folder / 'train' / 'class_9'}; "
        "add images or remove the folder"
    )


def test_a_class_only_the_test_split_has_exit_2(cli, tmp_path, folder):
    save(np.zeros((8, 8), np.uint8), folder / "test" / "zebra" / "z.png")
    code, _, err = run(cli, tmp_path, folder)
    assert code == 2
    assert one_error(err) == (
        f"image_folder: 1 class(es) in {folder}/test/ but not in {folder}/train/: zebra; a model cannot "
        "learn a class it never sees: add training images or remove those folders"
    )


def test_a_folder_without_images_exit_2(cli, tmp_path):
    root = tmp_path / "data"
    (root / "train" / "cats").mkdir(parents=True)
    (root / "test" / "cats").mkdir(parents=True)
    (root / "train" / "cats" / "notes.txt").write_text("x")
    code, _, err = run(cli, tmp_path, root)
    assert code == 2
    assert one_error(err) == (
        f"image_folder: no images in {root} (.jpg, .jpeg, .png, .bmp, .webp or .gif files in class folders); "
        "ignored 1 entry: 1 of other types (.txt)"
    )
    code, _, err = run(cli, tmp_path, tmp_path / "nowhere")
    assert code == 2 and one_error(err).endswith(f"data.root: {tmp_path / 'nowhere'} does not exist")


def test_a_symlink_loop_is_named_not_followed_forever(cli, tmp_path, folder):
    os.symlink("..", folder / "train" / "class_0" / "loop")
    os.symlink("self.png", folder / "train" / "class_1" / "self.png")
    code, _, err = run(cli, tmp_path, folder)
    assert code == 1
    assert one_error(err) == (
        f"image_folder: 2 files cannot be read: {folder}/train/class_0/loop (symlink loop (a folder that "
        f"contains itself)), {folder}/train/class_1/self.png (symlink loop); "
        "fix or remove them, or set data.on_bad_file=skip to leave them out"
    )


def test_unreadable_permissions_exit_1(cli, tmp_path, folder, monkeypatch):
    locked = folder / "train" / "class_2" / "0001.png"
    real_open = open

    def guarded(path, *args, **kwargs):  # as the kernel answers a file without read permission
        if str(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(image_decode, "open", guarded, raising=False)
    code, _, err = run(cli, tmp_path, folder)
    assert code == 1
    assert f"{locked} (cannot read it (permission denied))" in one_error(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions_for_real(cli, tmp_path, folder):
    locked = folder / "train" / "class_2" / "0001.png"
    locked.chmod(0)
    code, _, err = run(cli, tmp_path, folder)
    assert code == 1 and f"{locked} (cannot read it (permission denied))" in one_error(err)


def test_sizes_that_disagree_is_a_config_error_exit_2(cli, tmp_path, folder):
    save(np.zeros((12, 10), np.uint8), folder / "train" / "class_1" / "big.png")
    code, _, err = run(cli, tmp_path, folder)
    assert code == 2 and "data.image_size: the images have 2 different sizes" in one_error(err)
    code, _, err = run(cli, tmp_path, folder, "-q", image_size=8)
    assert code == 0, err


def _bad_position_file(folder, batch_size: int = 8):
    """A training file that epoch 1 reads in its second batch or later."""
    files = sorted((folder / "train").rglob("*.png"))
    order = epoch_permutation(len(files), 0, 0).tolist()
    return files[order[batch_size + 1]]


def test_a_bad_file_met_in_training_saves_a_checkpoint_and_resumes_with_skip(cli, tmp_path, folder):
    bad = _bad_position_file(folder)
    bad.write_bytes(bad.read_bytes()[:60])
    # mean and std given: nothing is decoded before training, the file is met in batch 2
    data = {"cache": "off", "mean": [0.5], "std": [0.25], "num_workers": 2}
    code, out, err = run(cli, tmp_path, folder, **data)
    assert code == 1
    assert one_error(err) == (
        f"image_folder: cannot read {bad}: truncated or corrupt PNG data (the file ends inside its image data); "
        "set data.on_bad_file=skip to leave such files out"
    )
    run_dir = tmp_path / "ckpt" / "images"
    assert load_ckpt(run_dir / "last.pt")["state"]["batch"] == 1  # what was trained is kept
    code, out, err = cli("resume", run_dir, "data.on_bad_file=skip", "-q")
    assert code == 0, err
    assert f"skipped {bad} (truncated or corrupt PNG data" in err


def test_a_changed_folder_refuses_resume_and_eval_exit_2(cli, tmp_path, folder):
    code, _, err = run(cli, tmp_path, folder, "-q")
    assert code == 0, err
    run_dir = tmp_path / "ckpt" / "images"
    added = save(np.zeros((8, 8), np.uint8), folder / "train" / "class_0" / "new.png")
    (folder / "test" / "class_1" / "0006.png").unlink()
    replaced = folder / "train" / "class_2" / "0000.png"
    os.utime(replaced, ns=(0, 10**9))
    code, _, err = cli("resume", run_dir, "trainer.epochs=3")
    assert code == 2
    assert one_error(err) == (
        f"image_folder: {folder} changed since this run was trained: 1 file added: {added}; 1 file removed: "
        f"{folder}/test/class_1/0006.png; 1 file replaced (other size or time): {replaced}. "
        "Put the folder back as it was, or start a new run"
    )
    code, _, err = cli("eval", "--ckpt", run_dir)
    assert code == 2 and "changed since this run was trained" in one_error(err)


def test_one_class_folder_is_probably_the_wrong_root_exit_2(cli, tmp_path, folder):
    code, _, err = run(cli, tmp_path, folder / "train" / "class_0", test_fraction=0.2)
    assert code == 2
    assert one_error(err) == (
        f"image_folder: no class folders in {folder / 'train' / 'class_0'}: expected "
        f"{folder / 'train' / 'class_0'}/train/<class>/ and {folder / 'train' / 'class_0'}/test/<class>/, "
        f"or {folder / 'train' / 'class_0'}/<class>/ with data.test_fraction"
    )
    single = tmp_path / "single"
    write_folder(single, train=3, test=1, classes=1)
    code, _, err = run(cli, tmp_path, single)
    assert code == 2 and one_error(err) == (
        f"image_folder: one class folder (class_0) in {single}/train: a classifier needs at least two; "
        "is data.root the folder that holds the class folders?"
    )


def test_an_image_size_over_the_pixel_limit_is_a_config_error_before_any_decoding(cli, tmp_path, folder):
    code, out, err = run(cli, tmp_path, folder, image_size=20000, cache_dir=str(tmp_path / "cache"))
    assert code == 2
    assert one_error(err) == (
        "data.image_size: 20000x20000 is 400,000,000 pixels an image, over the limit of 178,956,970 "
        "that image files have too"
    )
    assert not (tmp_path / "cache").exists()
