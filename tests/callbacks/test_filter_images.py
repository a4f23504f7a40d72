"""FilterImages: first-layer weights as an image grid, and their smoothness score."""

import math

import numpy as np
import pytest

from trainwatch import Trainer, nn
from trainwatch.callbacks.filter_images import (
    FilterImages,
    conv_filters,
    dense_filters,
    filter_grid,
    normalise_filters,
    smoothness,
)
from trainwatch.data import load_digits
from trainwatch.outputs.memory import MemoryOutput


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x[:256], y[:256]


def train(model, callbacks, x, y, *, epochs=2, batch_size=64, logdir=None):
    mem = MemoryOutput()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=0.1), callbacks=callbacks,
                      progress=False, outputs=[mem], logdir=logdir, raise_errors=True)
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size)
    return trainer, mem


def tile(grid, row, col, size):
    """The (row, col) tile of a grid of size x size tiles with 1-pixel separators."""
    top, left = row * (size + 1), col * (size + 1)
    return grid[..., top:top + size, left:left + size]


# -- the helpers ------------------------------------------------------------------------------


def test_conv_grid_shape_for_16_filters_of_3x3():
    w = np.random.default_rng(0).standard_normal((16, 1, 3, 3))
    grid = filter_grid(conv_filters(w), min_size=24)
    # 4 x 4 tiles of 3 px enlarged 8 times = 24 px, with 3 separators each way
    assert grid.shape == (4 * 24 + 3, 4 * 24 + 3) and grid.dtype == np.uint8
    # separators are white; each tile spans 0..255 (its own min and max)
    assert (grid[24, :] == 255).all() and (grid[:, 24] == 255).all()
    for r in range(4):
        for c in range(4):
            t = tile(grid, r, c, 24)
            assert t.min() == 0 and t.max() == 255


def test_tiles_are_the_filters_in_order_enlarged_by_nearest_neighbour():
    w = np.arange(5 * 2 * 2, dtype=float).reshape(5, 1, 2, 2) ** 2  # distinct filters
    w[3] = -w[3]  # a flipped one
    grid = filter_grid(w, min_size=4)  # 2 x 2 px -> 4 x 4, 3 columns, 2 rows
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 2)
    norm = normalise_filters(w)
    for i in range(5):
        expected = np.rint(norm[i, 0] * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
        assert np.array_equal(tile(grid, i // 3, i % 3, 4), expected), i
    assert (tile(grid, 1, 2, 4) == 255).all()  # the empty sixth slot


def test_normalisation_is_per_filter_into_0_1():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((6, 3, 5, 5)) * np.arange(1, 7)[:, None, None, None] + 4.0
    f[5] = 7.0  # constant
    n = normalise_filters(f)
    assert n.min() >= 0 and n.max() <= 1
    for i in range(5):
        assert n[i].min() == 0 and n[i].max() == 1
    assert (n[5] == 0.5).all()


def test_rgb_first_layer_gives_a_chw_colour_grid_and_other_channels_are_averaged():
    rng = np.random.default_rng(2)
    rgb = rng.standard_normal((4, 3, 5, 5))
    grid = filter_grid(conv_filters(rgb), min_size=10)
    assert grid.shape == (3, 2 * 10 + 1, 2 * 10 + 1)
    # the three channels of one filter are normalised together (colours kept)
    first = grid[:, :10, :10]
    assert first.min() == 0 and first.max() == 255
    four = rng.standard_normal((4, 4, 5, 5))
    np.testing.assert_allclose(conv_filters(four), four.mean(axis=1, keepdims=True))
    assert conv_filters(rng.standard_normal((4, 2, 7))).shape == (4, 1, 1, 7)  # conv1d


def test_dense_units_become_input_images():
    w = np.random.default_rng(3).standard_normal((64, 32))  # numpy layout (in, out)
    images = dense_filters(w, (8, 8))
    assert images.shape == (32, 1, 8, 8)
    assert np.array_equal(images[5, 0], w[:, 5].reshape(8, 8))
    torch_layout = dense_filters(w.T.copy(), (1, 8, 8), out_first=True)
    assert np.array_equal(torch_layout, images)
    grid = filter_grid(images, min_size=24)
    assert grid.shape == (6 * 24 + 5, 6 * 24 + 5)  # 32 tiles -> 6 x 6, 8 px x 3
    with pytest.raises(ValueError, match="image_shape"):
        dense_filters(w, (7, 7))


def test_smoothness_is_lower_for_smooth_filters_than_for_noise():
    rng = np.random.default_rng(4)
    noise = rng.standard_normal((32, 1, 16, 16))
    yy, xx = np.mgrid[-1:1:16j, -1:1:16j]
    blobs = np.stack([np.exp(-((xx - c) ** 2 + yy**2) * 4) for c in np.linspace(-.5, .5, 32)])
    smooth = blobs[:, None]
    s_noise, s_smooth = smoothness(noise), smoothness(smooth)
    assert s_noise == pytest.approx(2 / math.sqrt(math.pi), rel=0.05)  # white noise
    assert s_smooth < 0.3 * s_noise
    assert smoothness(np.full((2, 1, 3, 3), 5.0)) == 0.0
    assert math.isnan(smoothness(np.ones((4, 1, 1, 1))))
    # invariant to scale and offset
    assert smoothness(3 * noise + 2) == pytest.approx(s_noise)


# -- the callback in training ---------------------------------------------------------------------


def test_default_schedule_is_start_every_10_epochs_and_end(digits):
    x, y = digits
    model = nn.Sequential([nn.Dense(64, 16, rng=0), nn.ReLU(), nn.Dense(16, 10, rng=1)])
    _, mem = train(model, [FilterImages()], x, y, epochs=12)
    # initial weights, after epoch 10 (4 steps each), and the final ones after epoch 12
    assert [s for s, _ in mem.images["filters/fc1.weight"]] == [0, 40, 48]


def test_conv_first_layer_is_written_at_start_and_each_epoch(digits):
    x, y = digits
    model = nn.Sequential([nn.Conv2D(1, 16, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2D(2),
                           nn.Flatten(), nn.Dense(256, 10, rng=1)])
    trainer, mem = train(model, [FilterImages(every_epochs=1)], x.reshape(-1, 1, 8, 8), y,
                         epochs=2)
    steps = [s for s, _ in mem.images["filters/conv1.weight"]]
    assert steps == [0, 4, 8]  # initial weights, then after each epoch of 4 steps
    assert mem.steps("filters/conv1.weight/smoothness") == steps
    img = mem.images["filters/conv1.weight"][-1][1]
    assert img.shape == (4 * 24 + 3, 4 * 24 + 3, 1)
    # the last image shows the final weights
    expected = filter_grid(conv_filters(trainer.backend.parameters()["conv1.weight"]))
    assert np.array_equal(img[..., 0], expected)
    assert mem.last("filters/conv1.weight/smoothness") == pytest.approx(
        smoothness(conv_filters(trainer.backend.parameters()["conv1.weight"])))


def test_dense_first_layer_on_flattened_images_and_step_schedule(digits):
    x, y = digits
    model = nn.Sequential([nn.Flatten(), nn.Dense(64, 32, rng=0), nn.ReLU(),
                           nn.Dense(32, 10, rng=1)])
    cb = FilterImages(every=3, every_epochs=None, at_end=False)
    _, mem = train(model, [cb], x.reshape(-1, 1, 8, 8), y, epochs=2)
    assert cb.tensor == "fc1.weight"
    assert [s for s, _ in mem.images["filters/fc1.weight"]] == [0, 3, 6]
    assert mem.images["filters/fc1.weight"][0][1].shape == (149, 149, 1)


def test_no_duplicate_when_step_and_epoch_schedules_meet(digits):
    x, y = digits
    model = nn.Sequential([nn.Dense(64, 16, rng=0), nn.ReLU(), nn.Dense(16, 10, rng=1)])
    _, mem = train(model, [FilterImages(every=2, at_start=False)], x, y, epochs=2)
    assert [s for s, _ in mem.images["filters/fc1.weight"]] == [2, 4, 6, 8]


def test_layer_and_image_shape_arguments(digits):
    x, y = digits
    model = nn.Sequential([nn.Dense(64, 16, rng=0), nn.ReLU(), nn.Dense(16, 10, rng=1)])
    _, mem = train(model, [FilterImages(layer="fc2", image_shape=(4, 4), min_size=4)], x, y,
                   epochs=1)
    assert set(mem.images) == {"filters/fc2.weight"}
    # 10 units of 4 x 4 (min_size 4: no enlargement): 4 columns, 3 rows
    assert mem.images["filters/fc2.weight"][0][1].shape == (3 * 4 + 2, 4 * 4 + 3, 1)


def test_a_first_layer_that_is_not_an_image_is_skipped_with_one_info_alert():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 10)), rng.integers(0, 3, 64)
    model = nn.Sequential([nn.Dense(10, 8, rng=0), nn.ReLU(), nn.Dense(8, 3, rng=1)])
    trainer, mem = train(model, [FilterImages()], x, y, epochs=2)
    assert not mem.images
    skipped = [a for a in trainer.monitor.alerts.history if a.code == "filters.skipped"]
    assert len(skipped) == 1 and "image_shape" in skipped[0].message
    assert "its 10 inputs make no square image" in skipped[0].message
    assert skipped[0].severity.value == "info"


def test_watching_does_not_change_training(digits):
    x, y = digits

    def run(callbacks):
        model = nn.Sequential([nn.Dense(64, 16, rng=0), nn.ReLU(), nn.Dropout(0.2),
                               nn.Dense(16, 10, rng=1)], seed=2)
        trainer, _ = train(model, callbacks, x, y, epochs=2)
        return trainer.backend.state_dict()["model"]

    a, b = run([]), run([FilterImages(every=1)])
    for k, v in a["params"].items():
        assert np.array_equal(v, b["params"][k])
    assert a["rng_state"] == b["rng_state"]


def test_images_read_back_from_tensorboard(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = digits
    model = nn.Sequential([nn.Conv2D(1, 8, 3, rng=0), nn.ReLU(), nn.Flatten(),
                           nn.Dense(288, 10, rng=1)])
    train(model, [FilterImages()], x.reshape(-1, 1, 8, 8), y, epochs=1, logdir=tmp_path)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0,
                                                         "images": 0, "tensors": 0})
    acc.Reload()
    images = acc.Images("filters/conv1.weight")
    assert [e.step for e in images] == [0, 4]
    assert (images[0].height, images[0].width) == (3 * 24 + 2, 3 * 24 + 2)
    assert [e.step for e in acc.Scalars("filters/conv1.weight/smoothness")] == [0, 4]


@pytest.mark.parametrize("kwargs, name", [
    ({"every": 0}, "every"),
    ({"every_epochs": -1}, "every_epochs"),
    ({"every_epochs": None, "at_start": False, "at_end": False}, "every_epochs"),
    ({"layer": ""}, "layer"),
    ({"image_shape": (8,)}, "image_shape"),
    ({"image_shape": (1, 0, 8)}, "image_shape"),
    ({"min_size": 0}, "min_size"),
    ({"max_filters": 0}, "max_filters"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FilterImages(**kwargs)
