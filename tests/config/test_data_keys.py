"""trainkit's own data keys for data read from disk: num_workers and random_resized_crop."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from trainkit.config import resolve
from trainkit.errors import ConfigError


def _resolve(tmp_path, **data):
    return resolve(tiny_config(tmp_path, data=data))


def test_num_workers_defaults_to_unset_and_takes_a_count(tmp_path):
    assert _resolve(tmp_path).data.num_workers is None
    assert _resolve(tmp_path, num_workers=3).data.num_workers == 3
    with pytest.raises(ConfigError, match=r"data.num_workers: should be greater than or equal to 0, got -1"):
        _resolve(tmp_path, num_workers=-1)


def test_random_resized_crop_takes_torchvisions_ranges(tmp_path):
    crop = _resolve(tmp_path, augment={"random_resized_crop": {"scale": [0.35, 1]}}).data.augment.random_resized_crop
    assert crop is not None and crop.scale == (0.35, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert _resolve(tmp_path).data.augment.random_resized_crop is None
    for bad in ([0.5, 0.2], [0, 1], [0.5, 1.5]):
        with pytest.raises(ConfigError) as info:
            _resolve(tmp_path, augment={"random_resized_crop": {"scale": bad}})
        assert (
            "data.augment.random_resized_crop.scale: should be [low, high] with 0.0 < low <= high and at most 1.0"
            in str(info.value)
        )
    with pytest.raises(ConfigError, match="random_resized_crop.scal: unknown key; did you mean 'scale'"):
        _resolve(tmp_path, augment={"random_resized_crop": {"scal": [0.5, 1]}})
