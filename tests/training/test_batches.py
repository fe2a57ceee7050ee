"""Batches: the seeded epoch order, sharding across ranks, starting mid-epoch, augmentation."""

from __future__ import annotations

import torch

from trainkit.training.batches import Augment, Batches, epoch_permutation
from trainkit.training.data import DatasetInfo, TensorSplit


def _images(n=10):
    info = DatasetInfo("classification", (1, 2, 2), 3, mean=(0.5,), std=(0.25,))
    inputs = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2)
    return TensorSplit(inputs, torch.arange(n) % 3), info


def test_batches_normalise_on_the_device_and_follow_the_seeded_permutation():
    split, info = _images(10)
    batches = Batches(split, info, 4, torch.device("cpu"), train=True, seed=3)
    order = epoch_permutation(10, 3, 1)
    got = list(batches(epoch=1))
    assert [len(y) for _, y in got] == [4, 4, 2]
    x0, y0 = got[0]
    expected = (split.inputs[order[:4]].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x0, expected) and torch.equal(y0, split.targets[order[:4]])
    assert not torch.equal(epoch_permutation(10, 3, 1), epoch_permutation(10, 3, 2))


def test_starting_mid_epoch_skips_exactly_the_earlier_batches():
    split, info = _images(10)
    batches = Batches(split, info, 3, torch.device("cpu"), train=True, seed=0)
    full = list(batches(epoch=2))
    tail = list(batches(epoch=2, start=2))
    assert len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_rank_shards_together_are_the_single_process_batches():
    split, info = _images(12)
    single = list(Batches(split, info, 4, torch.device("cpu"), train=True, seed=5)(epoch=0))
    ranks = [
        list(Batches(split, info, 2, torch.device("cpu"), train=True, seed=5, rank=r, world_size=2)(epoch=0))
        for r in range(2)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for b, (x, y) in enumerate(single):
        # batch b of one process is positions [4b, 4b+4) of the permutation; rank r takes
        # every 2nd of them from r: the samples themselves, interleaved, not just their labels
        interleaved = [(ranks[r][b][0][i], ranks[r][b][1][i]) for i in range(2) for r in range(2)]
        assert torch.equal(x, torch.stack([xi for xi, _ in interleaved]))
        assert torch.equal(y, torch.stack([yi for _, yi in interleaved]))


def test_uneven_shards_pad_for_training_and_count_each_sample_once_for_evaluation():
    split, info = _images(7)
    train = [Batches(split, info, 2, torch.device("cpu"), train=True, rank=r, world_size=2) for r in range(2)]
    assert [b.samples_per_rank for b in train] == [4, 4]
    evals = [Batches(split, info, 2, torch.device("cpu"), train=False, rank=r, world_size=2) for r in range(2)]
    seen = sorted(i for b in evals for i in b.indices(0).tolist())
    assert seen == list(range(7))


def test_augmentation_is_deterministic_per_batch_and_changes_pixels():
    x = torch.randn(8, 3, 6, 6)
    augment = Augment(crop_padding=2, hflip=True)
    a, b = augment(x, seed=11), augment(x, seed=11)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    assert not torch.equal(augment(x, seed=12), a)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = Augment(crop_padding=1)(x, seed=0)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = [padded[..., i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    assert any(torch.equal(out, w) for w in windows)


def test_random_resized_crop_is_seeded_per_batch_and_keeps_the_shape():
    x = torch.rand(6, 3, 10, 12)
    augment = Augment(resized_crop=((0.35, 1.0), (0.75, 1.33)))
    a, b = augment(x, seed=4), augment(x, seed=4)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, augment(x, seed=5))
    assert not torch.equal(a, x)


def test_random_resized_crop_of_the_whole_image_is_the_image():
    x = torch.rand(4, 1, 8, 8)
    whole = Augment(resized_crop=((1.0, 1.0), (1.0, 1.0)))(x, seed=0)
    assert torch.allclose(whole, x, atol=1e-6)


def test_random_resized_crop_is_crop_then_bilinear_resize():
    """Each image is some window of the input resized as F.interpolate would (as torchvision does)."""
    x = torch.rand(8, 2, 9, 12)
    out = Augment(resized_crop=((0.2, 0.6), (0.5, 2.0)))(x, seed=3)
    resize = torch.nn.functional.interpolate
    for image, source in zip(out, x, strict=True):
        matches = [
            (top, left, ch, cw)
            for ch in range(1, 10)
            for cw in range(1, 13)
            for top in range(10 - ch)
            for left in range(13 - cw)
            if torch.allclose(
                resize(source[None, :, top : top + ch, left : left + cw], size=(9, 12), mode="bilinear")[0],
                image,
                atol=1e-5,
            )
        ]
        assert matches, "not a resized window of its image"
        _, _, ch, cw = matches[0]
        assert 0.2 * 108 - 12 <= ch * cw <= 0.6 * 108 + 12  # the area drawn, up to rounding
