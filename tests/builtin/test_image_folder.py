"""image_folder: layouts, defaults, the seeded split, the record, and images of every kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainkit
from conftest import load_ckpt
from helpers_images import Image, class_images, image_config, mnist_folder, save, write_folder
from trainkit.builtin.image_folder import image_folder
from trainkit.builtin.image_sources import CachedImages, ImageFiles
from trainkit.errors import ConfigError, DataLayoutError


def build(root, tmp_path, **options):
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    return image_folder(root=str(root), seed=options.pop("seed", 0), **options)


def test_split_layout_classes_shapes_and_record(tmp_path):
    root = write_folder(tmp_path / "data", train=5, test=2, classes=3)
    bundle = build(root, tmp_path)
    info = bundle.info
    assert info.task == "classification" and info.input_shape == (1, 8, 8) and info.num_classes == 3
    assert info.class_names == ["class_0", "class_1", "class_2"]
    assert len(bundle.train) == 15 and len(bundle.test) == 6
    assert isinstance(bundle.train, CachedImages)
    split = bundle.train.as_tensor_split()
    assert split.inputs.dtype == torch.uint8 and split.inputs.shape == (15, 1, 8, 8)
    assert split.targets.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    first = np.array(Image.open(root / "train" / "class_0" / "0000.png"))
    assert torch.equal(split.inputs[0, 0], torch.from_numpy(first))
    record = bundle.record
    assert record["classes"] == info.class_names and record["channels"] == 1 and record["image_size"] == [8, 8]
    assert len(record["mean"]) == 1 and record["mean"] == list(info.mean) and record["left_out"] == []


def test_val_folder_is_the_test_split_and_both_is_refused(tmp_path):
    root = write_folder(tmp_path / "data", train=3, test=2, classes=2, test_folder="val")
    assert len(build(root, tmp_path).test) == 4
    write_folder(root, train=3, test=2, classes=2, test_folder="test")
    with pytest.raises(DataLayoutError, match="has both test/ and val/"):
        build(root, tmp_path)


def test_flat_layout_needs_test_fraction_and_splits_each_class_by_seed(tmp_path):
    root = write_folder(tmp_path / "data", train=16, test=4, classes=3, layout="flat")
    with pytest.raises(ConfigError) as info:
        build(root, tmp_path)
    assert "data.test_fraction:" in str(info.value) and "no train/ and test/ folders" in str(info.value)
    a, b = build(root, tmp_path, test_fraction=0.25), build(root, tmp_path, test_fraction=0.25)
    other = build(root, tmp_path, test_fraction=0.25, seed=1)
    assert torch.equal(a.record["use"], b.record["use"]) and not torch.equal(a.record["use"], other.record["use"])
    assert np.bincount(a.test.labels).tolist() == [5, 5, 5]  # stratified: round(0.25 * 20) per class
    assert np.bincount(a.train.labels).tolist() == [15, 15, 15]


def test_small_classes_share_the_test_fraction_rounded_together(tmp_path):
    """Few images per class: each class rounded on its own gave 4 classes of 4 at 0.1 no test
    image at all, and classes of 2 at 0.25 half their images."""
    root = write_folder(tmp_path / "four", train=4, test=0, classes=10, layout="flat")
    bundle = build(root, tmp_path, test_fraction=0.1)
    assert len(bundle.test) == 4 and len(bundle.train) == 36  # round(0.1 * 40)
    assert np.bincount(bundle.test.labels, minlength=10).max() == 1  # one from each of 4 classes
    root = write_folder(tmp_path / "two", train=2, test=0, classes=10, layout="flat")
    bundle = build(root, tmp_path, test_fraction=0.25)
    assert len(bundle.test) == 5 and np.bincount(bundle.train.labels).min() == 1  # each class keeps one


def test_stratified_counts_total_the_fraction_and_leave_every_class_a_training_item():
    from trainkit.builtin.split import stratified_counts

    assert stratified_counts(np.array([20, 20, 20]), 0.25).tolist() == [5, 5, 5]
    assert stratified_counts(np.array([3, 3, 3, 3]), 0.25).tolist() == [1, 1, 1, 0]  # 3 in all, ties in order
    assert stratified_counts(np.array([1, 1, 10]), 0.5).tolist() == [0, 0, 6]  # classes of one stay in training
    assert stratified_counts(np.array([0, 7]), 0.3).tolist() == [0, 2]  # a class left with no readable file
    sizes = np.random.default_rng(0).integers(2, 50, size=200)
    for fraction in (0.01, 0.1, 0.33, 0.9):
        counts = stratified_counts(sizes, fraction)
        floor = np.minimum(np.floor(fraction * sizes), sizes - 1)
        assert (counts <= sizes - 1).all() and ((counts == floor) | (counts == floor + 1)).all()
        assert counts.sum() == round(fraction * sizes.sum())


def test_test_fraction_with_a_test_folder_is_refused(tmp_path):
    root = write_folder(tmp_path / "data", train=3, test=1, classes=2)
    with pytest.raises(ConfigError, match="has its own test/ folder; remove test_fraction"):
        build(root, tmp_path, test_fraction=0.2)


def test_train_only_folder_with_test_fraction(tmp_path):
    root = write_folder(tmp_path / "data", train=10, test=0, classes=2)
    assert not (root / "test").exists()
    bundle = build(root, tmp_path, test_fraction=0.2)
    assert len(bundle.train) == 16 and len(bundle.test) == 4


def test_channels_default_from_the_images_and_colour_wins(tmp_path):
    root = write_folder(tmp_path / "data", train=3, test=1, classes=2)
    assert build(root, tmp_path).info.input_shape == (1, 8, 8)
    save(class_images(1, 0, channels=3)[0], root / "train" / "class_0" / "colour.png")
    assert build(root, tmp_path).info.input_shape == (3, 8, 8)
    assert build(root, tmp_path, channels=1).info.input_shape == (1, 8, 8)


def test_sizes_that_disagree_need_image_size(tmp_path):
    root = write_folder(tmp_path / "data", train=3, test=1, classes=2)
    save(np.zeros((12, 10), np.uint8), root / "train" / "class_1" / "big.png")
    with pytest.raises(ConfigError) as info:
        build(root, tmp_path)
    assert str(info.value) == (
        "data.image_size: the images have 2 different sizes (height x width: 8x8: 8, 12x10: 1); "
        "set data.image_size to resize them all, e.g. image_size: 8 (the most common)"
    )
    bundle = build(root, tmp_path, image_size=[6, 5])
    assert bundle.info.input_shape == (1, 6, 5)
    assert bundle.train.as_tensor_split().inputs.shape[1:] == (1, 6, 5)
    assert build(root, tmp_path, image_size=4).info.input_shape == (1, 4, 4)


def test_mean_and_std_from_a_seeded_sample_or_given(tmp_path):
    root = write_folder(tmp_path / "data", train=6, test=2, classes=2)
    bundle = build(root, tmp_path)
    pixels = bundle.train.as_tensor_split().inputs.double() / 255
    assert bundle.info.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-12)  # the sample is all 12 here
    assert bundle.info.std[0] == pytest.approx(pixels.std().item(), abs=1e-12)
    given = build(root, tmp_path, mean=[0.5], std=[0.25])
    assert given.info.mean == (0.5,) and given.info.std == (0.25,) and given.record["mean"] == [0.5]
    with pytest.raises(ConfigError, match=r"data.mean: has 3 values for 1-channel images"):
        build(root, tmp_path, mean=[0.5, 0.5, 0.5])


def test_hidden_files_and_other_types_are_ignored_and_counted(tmp_path, caplog):
    root = write_folder(tmp_path / "data", train=3, test=1, classes=2)
    (root / "train" / "class_0" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "class_0" / "._0000.png").write_bytes(b"x")  # macOS resource fork: hidden
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "class_1" / "labels.txt").write_text("x")
    (root / "train" / "README.md").write_text("x")
    save(class_images(1, 0)[0], root / "train" / "class_0" / "UPPER.PNG")
    caplog.set_level("INFO", logger="trainkit")
    bundle = build(root, tmp_path)
    assert len(bundle.train) == 7  # UPPER.PNG counts: extensions are case-insensitive
    lines = [r.getMessage() for r in caplog.records if "image_folder:" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].endswith(
        "7 training and 2 test images, 2 classes, 1x8x8 (decoded images cached); "
        "ignored 5 entries: 3 hidden, 1 outside class folders, 1 of other types (.txt)"
    )


def test_files_in_nested_folders_belong_to_their_class(tmp_path):
    root = write_folder(tmp_path / "data", train=2, test=1, classes=2)
    save(class_images(1, 1)[0], root / "train" / "class_1" / "more" / "deep.png")
    bundle = build(root, tmp_path)
    assert bundle.train.labels.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_every_image_kind_decodes_in_the_data_sets_channels(tmp_path, cache):
    """grey, RGB, RGBA, LA, palette, 16-bit, CMYK JPEG, WebP, GIF, BMP in one class folder."""
    root = tmp_path / "data"
    rgb = class_images(1, 0, size=8, channels=3)[0]
    grey = rgb[..., 0]
    folder = root / "train" / "a"
    save(grey, folder / "grey.png")
    save(rgb, folder / "rgb.png")
    save(np.dstack([rgb, grey]), folder / "rgba.png")
    Image.fromarray(grey).convert("LA").save(folder / "la.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    save((grey.astype(np.uint16) * 257), folder / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    save(rgb, folder / "lossless.webp", lossless=True)
    save(rgb, folder / "anim.gif")
    save(rgb, folder / "rgb.bmp")
    save(grey, root / "test" / "a" / "t.png")
    save(grey, root / "train" / "b" / "b.png")  # a classifier needs two classes; b's come after a's
    save(grey, root / "test" / "b" / "t.png")
    bundle = build(root, tmp_path, cache=cache)
    assert bundle.info.input_shape == (3, 8, 8)
    names = sorted(p.name for p in folder.iterdir())
    expected = {"grey.png": np.stack([grey] * 3), "rgb.png": rgb, "rgba.png": rgb, "deep16.png": np.stack([grey] * 3)}
    expected["rgb.bmp"] = rgb
    expected["lossless.webp"] = rgb
    for i, name in enumerate(names):
        x, label = bundle.train[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and label == 0
        if name in expected:
            want = expected[name] if expected[name].shape[0] == 3 else expected[name].transpose(2, 0, 1)
            assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(want))), name
    grey_bundle = build(root, tmp_path, cache=cache, channels=1)
    assert all(grey_bundle.train[i][0].shape == (1, 8, 8) for i in range(len(names)))


def test_exif_rotated_jpeg_is_decoded_upright_and_sized_upright(tmp_path):
    root = tmp_path / "data"
    wide = np.zeros((6, 10, 3), np.uint8)
    wide[:, :5] = 255  # left half white
    for split in ("train", "test"):
        for name in ("a", "b"):  # two classes, one photo each
            (root / split / name).mkdir(parents=True)
            image = Image.fromarray(wide)
            exif = image.getexif()
            exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
            image.save(root / split / name / "photo.jpg", exif=exif)
    bundle = build(root, tmp_path)
    assert bundle.info.input_shape == (3, 10, 6)  # displayed upright: 10 high, 6 wide
    x = bundle.train[0][0].float()
    assert x[:, :5].mean() > 200 and x[:, 5:].mean() < 50  # the white half is now on top


def test_a_folder_of_mnist_pngs_trains_like_mnist(tmp_path):
    """Real digits written as PNG files: the same model sizes itself and learns them."""
    root = mnist_folder(tmp_path / "mnist", n_train=1200, n_test=300)
    config = image_config(tmp_path, root, batch_size=32, eval_batch_size=100)
    config["model"] = {"name": "cnn", "channels": [8, 16], "hidden": 32}
    config["trainer"]["epochs"] = 2
    result = trainkit.train(config, quiet=True)
    assert result["final"]["val_accuracy"] >= 0.85
    ckpt = load_ckpt(result["best_checkpoint"])
    assert tuple(ckpt["data_info"]["input_shape"]) == (1, 28, 28)
    assert ckpt["data_info"]["class_names"] == [str(d) for d in range(10)]
    assert abs(ckpt["data_info"]["mean"][0] - 0.1307) < 0.02 and abs(ckpt["data_info"]["std"][0] - 0.3081) < 0.02


def test_a_plain_dataset_interface_for_anyone(tmp_path):
    root = write_folder(tmp_path / "data", train=2, test=1, classes=2)
    files = build(root, tmp_path, cache="off")
    assert isinstance(files.train, ImageFiles) and len(files.train) == 4
    x, label = files.train[3]
    assert x.shape == (1, 8, 8) and label == 1
    cached = build(root, tmp_path)
    assert torch.equal(cached.train[3][0], x)


def test_predict_names_the_folders_classes_and_reads_a_file_as_training_did(tmp_path, cli):
    from trainkit.tools.predict import model_inputs, read_image
    from trainkit.training.batches import Batches
    from trainkit.training.loader import place

    root = write_folder(tmp_path / "data", train=6, test=2, classes=3, size=10, channels=3, ext=".jpg")
    result = trainkit.train(image_config(tmp_path, root), quiet=True)
    bundle = build(root, tmp_path)
    file = root / "test" / "class_1" / "0007.jpg"
    position = 3  # test files in order: class_0 0006, 0007, class_1 0006, 0007, ...
    evaluated = next(
        Batches(place(bundle.test, torch.device("cpu")), bundle.info, 10, torch.device("cpu"), train=False)()
    )
    predicted = model_inputs(read_image(file, bundle.info.input_shape)[None], bundle.info)
    assert torch.equal(predicted[0], evaluated[0][position]) and evaluated[1][position] == 1
    code, out, err = cli("predict", "--ckpt", result["run_dir"], file, "-k", "3")
    assert code == 0, err
    assert out.startswith(f"{file}: class_") and {"class_0", "class_1", "class_2"} <= set(out.replace(",", " ").split())
