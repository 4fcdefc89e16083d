"""Tests of the procedural textures."""

import numpy as np
import pytest

from vosjax.data.synthetic import textures


@pytest.mark.parametrize("kind", textures.KINDS)
def test_every_kind_is_a_deterministic_colour_image(kind):
    a = textures.make_texture(np.random.default_rng(5), kind, 31, 45, scale=12.0, contrast=0.8)
    b = textures.make_texture(np.random.default_rng(5), kind, 31, 45, scale=12.0, contrast=0.8)
    assert a.shape == (31, 45, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    if kind == "flat":
        assert np.ptp(a, axis=(0, 1)).max() == 0
        np.testing.assert_array_equal(a, np.round(a))  # integer colour: renders exactly
    else:
        assert a.std(axis=(0, 1)).max() > 15  # a visible pattern


@pytest.mark.parametrize("kind", ["noise", "stripes", "checker", "gradient"])
def test_zero_contrast_is_a_flat_colour(kind):
    texture = textures.make_texture(np.random.default_rng(0), kind, 20, 20, scale=8.0, contrast=0)
    assert np.ptp(texture, axis=(0, 1)).max() == 0


def test_contrast_scales_the_colour_spread():
    spreads = [
        textures.make_texture(np.random.default_rng(1), "stripes", 64, 64, scale=20, contrast=c)
        .std(axis=(0, 1))
        .sum()
        for c in (0.2, 0.8)
    ]
    assert spreads[1] > 2.5 * spreads[0]


def test_fractal_noise_spans_zero_to_one():
    noise = textures.fractal_noise(np.random.default_rng(3), 40, 50, cell=10.0)
    assert noise.shape == (40, 50)
    assert noise.min() == pytest.approx(0.0) and noise.max() == pytest.approx(1.0)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="plaid"):
        textures.make_texture(np.random.default_rng(0), "plaid", 8, 8, scale=4, contrast=1)
