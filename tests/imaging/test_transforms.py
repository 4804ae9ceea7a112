"""Windowing presets and the DICOM linear window; resampling to a target spacing."""

from __future__ import annotations

import numpy as np
import pytest

from imaging import WINDOW_PRESETS, apply_window, load_series, resample
from tests.imaging.dicom_series import chest_radiograph, ct_series


def test_presets_have_the_documented_width_and_level() -> None:
    assert {name: (p.width, p.level) for name, p in WINDOW_PRESETS.items()} == {
        "brain": (80, 40),
        "subdural": (200, 80),
        "stroke": (40, 40),
        "bone": (2800, 600),
        "lung": (1500, -600),
    }


def test_linear_window_follows_ps3_3_c_11_2_1_2_1() -> None:
    brain = WINDOW_PRESETS["brain"]
    hu = np.array([-1000.0, 0.0, 0.5, 39.5, 40.0, 79.0, 79.5, 80.0, 3000.0])
    windowed = brain.apply(hu)
    assert windowed.dtype == np.float32
    # x <= c - 0.5 - (w-1)/2 = 0 -> 0;  x > c - 0.5 + (w-1)/2 = 79 -> 1
    assert windowed[:2].tolist() == [0.0, 0.0]
    assert windowed[2] == pytest.approx((0.5 - 39.5) / 79 + 0.5)
    assert windowed[3] == pytest.approx(0.5)
    assert windowed[4] == pytest.approx((40 - 39.5) / 79 + 0.5)
    assert windowed[5] == pytest.approx(1.0)
    assert windowed[6:].tolist() == [1.0, 1.0, 1.0]


def test_window_is_monotonic_and_within_unit_range() -> None:
    hu = np.linspace(-2000, 4000, 1001)
    for preset in WINDOW_PRESETS.values():
        windowed = apply_window(hu, preset.width, preset.level)
        assert windowed.min() == 0.0
        assert windowed.max() == 1.0
        assert np.all(np.diff(windowed) >= 0)


def test_window_width_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"window width 0\.5"):
        apply_window(np.zeros(3), 0.5, 40)


def test_resampling_keeps_origin_direction_and_extent() -> None:
    volume = load_series(ct_series(slices=12, rows=32, columns=24))
    resampled = resample(volume, (1.0, 1.0, 1.0))
    old_extent = np.array(volume.shape) * np.array(volume.spacing)
    new_extent = np.array(resampled.shape) * np.array(resampled.spacing)
    assert np.all(np.abs(new_extent - old_extent) <= np.array(resampled.spacing) / 2)
    assert resampled.origin == volume.origin
    assert np.array_equal(resampled.direction, volume.direction)
    assert resampled.spacing == (1.0, 1.0, 1.0)
    # voxels keep their physical meaning: the phantom is linear in (k, j, i), which
    # trilinear interpolation reproduces exactly inside the source grid
    for index in ([10, 7, 9], [0, 0, 0], [25, 20, 17]):
        point = resampled.affine_lps() @ [*index, 1]
        k, j, i = np.linalg.solve(volume.affine_lps(), point)[:3]
        expected = 1000 + 40 * k + 3 * j + i - 1024
        assert resampled.array[tuple(index)] == pytest.approx(expected, abs=1e-3)
    assert resampled.sop_instance_uids == ()  # slices no longer match the source instances


def test_label_maps_resample_by_nearest_neighbour() -> None:
    volume = load_series(ct_series(slices=12, rows=32, columns=24))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2:6, 8:20, 4:12] = 1
    labels[8:10, 2:5, 2:5] = 2
    resampled = resample(volume.with_array(labels), (1.25, 0.35, 0.4), label_map=True)
    assert resampled.array.dtype == np.uint8
    assert set(np.unique(resampled.array)) == {0, 1, 2}
    ratio = np.prod(volume.spacing) / np.prod(resampled.spacing)
    assert (resampled.array == 1).sum() == pytest.approx((labels == 1).sum() * ratio, rel=0.05)


def test_2d_images_keep_their_single_slice() -> None:
    radiograph = load_series([chest_radiograph(rows=40, columns=30)])
    resampled = resample(radiograph, (3.0, 0.286, 0.278))
    assert resampled.shape == (1, 20, 15)
    assert resampled.is_2d
