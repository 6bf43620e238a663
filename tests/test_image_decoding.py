"""Images that are not 8-bit: real files written by Pillow (float TIFF, 32-bit integer TIFF, 16-bit PNG) are
brought to 0..255 by the range their values really use (docs/data.md, "Images that are not 8-bit")."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.imagefolder import decode


def _ramp(n: int = 64):
    return np.linspace(0.0, 1.0, n * n).reshape(n, n)


def _levels(path) -> np.ndarray:
    return np.unique(decode(path, 1).numpy())


def test_a_float_tiff_in_0_1_keeps_its_grey_levels(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(_ramp().astype(np.float32)).save(path)
    assert Image.open(path).mode == "F"
    levels = _levels(path)
    assert levels.min() == 0 and levels.max() == 255 and len(levels) == 256


def test_a_float_tiff_in_0_255_is_taken_as_is(tmp_path):
    path = tmp_path / "float255.tif"
    Image.fromarray((_ramp() * 200).astype(np.float32)).save(path)
    assert _levels(path).max() == 200


def test_a_32_bit_integer_tiff_above_65535_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "int32.tif"
    values = (_ramp() * 1_000_000).astype(np.int32)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    levels = _levels(path)
    assert len(levels) > 200 and levels.max() > 200  # 20 bits of data over 0..255, not clipped to white
    # the ramp's midpoint stays in the middle (scaled by 2**20 - 1, the depth the values use)
    mid = decode(path, 1).numpy()[0, 32, 0]
    assert 100 < mid < 160


@pytest.mark.parametrize("bits", [12, 16])
def test_16_bit_png_uses_the_depth_its_values_reach(tmp_path, bits):
    path = tmp_path / f"{bits}bit.png"
    values = (_ramp() * (2 ** bits - 1)).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    levels = _levels(path)
    assert len(levels) == 256 and levels.max() == 255


def test_one_folders_16_bit_images_of_the_same_depth_share_one_scale(tmp_path):
    """Two 12-bit images, one bright, one darker (still above 8 bits): the same value decodes the same."""
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    Image.fromarray(np.full((4, 4), 4095, np.uint16)).save(bright)
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(dark)
    assert decode(bright, 1).max() == 255
    assert decode(dark, 1).max() == round(1000 / 4095 * 255)


def test_8_bit_images_are_unchanged(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray((_ramp() * 255).astype(np.uint8)).save(path)
    assert len(_levels(path)) == 256
