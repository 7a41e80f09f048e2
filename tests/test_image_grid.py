"""prologue_hf.image_grid: tiles land where they should, the three input kinds agree, labels and scale behave."""

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.image_grid import image_grid


def _images(count=5, height=4, width=6, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 200, (count, height, width, channels), dtype=np.uint8)


def test_tiles_gaps_and_padding_cells():
    images = _images()
    grid = np.asarray(image_grid(images, rows=2, gap=1))
    assert grid.shape == (2 * 4 + 1, 3 * 6 + 2, 3)  # cols = ceil(5 / 2) = 3
    for index, image in enumerate(images):
        r, c = divmod(index, 3)
        np.testing.assert_array_equal(grid[r * 5 : r * 5 + 4, c * 7 : c * 7 + 6], image)
    assert (grid[4] == 255).all() and (grid[:, 6] == 255).all() and (grid[:, 13] == 255).all()  # gaps
    assert (grid[5:, 14:] == 255).all()  # the sixth cell is empty


def test_numpy_torch_and_pil_inputs_agree():
    images = _images()
    from_numpy = np.asarray(image_grid(images, rows=3))
    from_torch = np.asarray(image_grid(torch.from_numpy(images).permute(0, 3, 1, 2), rows=3))
    from_pil = np.asarray(image_grid([PIL.Image.fromarray(image) for image in images], rows=3))
    np.testing.assert_array_equal(from_numpy, from_torch)
    np.testing.assert_array_equal(from_numpy, from_pil)


def test_one_channel_images_give_a_grayscale_grid():
    images = _images(channels=1)
    grid = image_grid(torch.from_numpy(images).permute(0, 3, 1, 2), rows=1, gap=0)
    assert grid.mode == "L"
    np.testing.assert_array_equal(np.asarray(grid), np.concatenate(list(images[..., 0]), axis=1))


def test_scale_is_nearest_neighbour_of_the_unscaled_grid():
    images = _images()
    small = np.asarray(image_grid(images, rows=2))
    large = np.asarray(image_grid(images, rows=2, scale=3))
    np.testing.assert_array_equal(large, small.repeat(3, axis=0).repeat(3, axis=1))


def test_labels_add_a_left_margin_and_leave_the_tiles_untouched():
    images = _images(count=4, height=16, width=16)
    plain = np.asarray(image_grid(images, rows=2, scale=2))
    labelled = np.asarray(image_grid(images, rows=2, labels=["Ankle boot", "Bag"], scale=2))
    margin = labelled.shape[1] - plain.shape[1]
    assert margin > 8 and labelled.shape[0] == plain.shape[0]
    np.testing.assert_array_equal(labelled[:, margin:], plain)
    row_height = 16 * 2
    for r in range(2):  # dark text pixels in each row's band of the margin
        band = labelled[r * (16 + 2) * 2 : r * (16 + 2) * 2 + row_height, :margin]
        assert (band < 128).any(), r
    longer = np.asarray(image_grid(images, rows=2, labels=["Ankle boot, fixed prologue", "Bag"], scale=2))
    assert longer.shape[1] > labelled.shape[1]


def test_bad_input_is_refused_with_the_argument_named():
    images = _images()
    with pytest.raises(ValueError, match="rows must be between 1 and the number of images"):
        image_grid(images, rows=6)
    with pytest.raises(ValueError, match="labels has 1 entries for 2 rows"):
        image_grid(images, rows=2, labels=["one"])
    with pytest.raises(ValueError, match="uint8"):
        image_grid(images.astype(np.float32), rows=1)
    with pytest.raises(ValueError, match=r"uint8 \[N, C, H, W\]"):
        image_grid(torch.rand(2, 3, 4, 4), rows=1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        image_grid(_images(channels=4), rows=1)
    with pytest.raises(ValueError, match="share one size"):
        image_grid([PIL.Image.new("RGB", (4, 4)), PIL.Image.new("RGB", (5, 4))], rows=1)
    with pytest.raises(ValueError, match="gap must be >= 0 and scale >= 1"):
        image_grid(images, rows=1, scale=0)
