"""The susceptibility template and the centroid start of QSM-only registration (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.preprocess.quality import thresholds
from bids_qnet.preprocess.susceptibility import (
    NUCLEI_PPM,
    TISSUE_PPM,
    susceptibility_template,
    tissue_thresholds,
)


def test_tissue_thresholds_split_three_intensity_classes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(m, 5.0, 3000) for m in (30.0, 80.0, 130.0)])
    low, high = tissue_thresholds(values)
    assert 40 < low < 70 and 90 < high < 120


def test_template_gives_each_tissue_and_nucleus_its_susceptibility():
    t1w = np.zeros((24, 24, 24), np.float32)
    t1w[2:22, 2:22, 2:22] = 130.0  # white matter
    t1w[2:22, 2:22, 2:8] = 80.0  # grey matter
    t1w[2:22, 2:22, 18:22] = 30.0  # fluid
    atlas = np.zeros(t1w.shape, np.int16)
    atlas[8:14, 8:14, 10:16] = 7  # a pallidum inside the white matter
    chi = susceptibility_template(t1w, atlas, {"Left_Pallidum": 7}, (1.0, 1.0, 1.0))
    assert chi.dtype == np.float32 and chi.shape == t1w.shape
    ppm = dict(TISSUE_PPM)
    assert chi[12, 12, 4] == pytest.approx(ppm["GM"], abs=2e-3)
    assert chi[12, 12, 20] == pytest.approx(ppm["CSF"], abs=2e-3)
    assert chi[18, 18, 12] == pytest.approx(ppm["WM"], abs=2e-3)
    assert chi[11, 11, 13] == pytest.approx(NUCLEI_PPM["Pallidum"], abs=0.02)
    assert chi[0, 0, 0] == pytest.approx(0.0, abs=1e-3)  # outside the brain (after smoothing)
    empty = susceptibility_template(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {}, (1, 1, 1))
    assert not empty.any()


def test_quality_thresholds_of_the_susceptibility_template():
    quality = {
        "min_abs_brain_correlation": 0.4,
        "susceptibility": {"min_abs_brain_correlation": 0.25},
    }
    assert thresholds(quality, "T1w") == {"min_abs_brain_correlation": 0.4}
    assert thresholds(quality, "susceptibility") == {"min_abs_brain_correlation": 0.25}
    with pytest.raises(UsageError, match="must be an object"):
        thresholds({"susceptibility": 0.2}, "susceptibility")


def test_centroid_start_maps_the_template_centroid_onto_the_map(tmp_path):
    import ants

    from bids_qnet.preprocess.registration import centroid_transform

    mask = np.zeros((20, 20, 20), np.float32)
    mask[5:11, 5:11, 5:11] = 1.0  # centroid at voxel 7.5
    fixed = ants.from_numpy(mask, origin=(0.0, 0.0, 0.0), spacing=(2.0, 2.0, 2.0))
    qsm = np.zeros((20, 20, 20), np.float32)
    qsm[10:16, 8:14, 4:10] = np.where(np.arange(6) % 2, 0.1, -0.1)  # signed, sums to zero
    moving = ants.from_numpy(qsm, origin=(-5.0, 3.0, 1.0), spacing=(1.0, 1.0, 1.0))
    path = centroid_transform(moving, fixed, str(tmp_path / "start.mat"))
    transform = ants.read_transform(path)
    fixed_centre = np.array([7.5, 7.5, 7.5]) * 2.0
    moving_centre = np.array([-5.0, 3.0, 1.0]) + np.array([12.5, 10.5, 6.5])
    assert np.allclose(transform.apply_to_point(tuple(fixed_centre)), moving_centre, atol=1e-4)
    with pytest.raises(InputDataError, match="moving image is empty"):
        centroid_transform(moving.new_image_like(qsm * 0), fixed, str(tmp_path / "x.mat"))
