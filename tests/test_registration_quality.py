"""Registration quality metrics and the profile's gate, on the built-in template at 2 mm."""

import ants
import numpy as np
import pytest

from bids_qnet.data import registration_profile
from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.inputs.reference import brain_mask
from bids_qnet.preprocess import quality as rq


@pytest.fixture(scope="module")
def mask(template):
    return brain_mask(template)


@pytest.fixture(scope="module")
def fast():
    return registration_profile("fast")


def test_quality_check_rejects_wrong_images(template, mask, fast, tmp_path):
    shift = ants.create_ants_transform(transform_type="Euler3DTransform")
    shift.set_parameters(np.array([0.0, 0.0, 0.0, 0.0, 80.0, 0.0]))
    shifted = shift.apply_to_image(template, reference=template)
    metrics = rq.quality(shifted, template, mask)
    assert metrics["abs_brain_correlation"] < 0.4
    with pytest.raises(RegistrationError) as excinfo:
        rq.check_quality(metrics, fast["quality"], "sub-02 T1w -> MNI")
    message = str(excinfo.value)
    assert "sub-02 T1w -> MNI" in message and "abs_brain_correlation" in message
    assert "0.400" in message and f"{metrics['abs_brain_correlation']:.3f}" in message
    assert "\n" not in message
    noise = template.new_image_like(
        np.random.default_rng(0).uniform(0, 100, template.shape).astype(np.float32)
    )
    with pytest.raises(RegistrationError):
        rq.check_quality(rq.quality(noise, template, mask), fast["quality"], "noise")
    constant = template * 0 + 1
    assert np.isnan(rq.quality(constant, template, mask)["brain_correlation"])
    with pytest.raises(RegistrationError):
        rq.check_quality(rq.quality(constant, template, mask), fast["quality"], "constant")


def test_quality_perfect_and_checks(template, mask):
    metrics = rq.quality(template, template, mask)
    assert metrics["brain_correlation"] == pytest.approx(1.0)
    assert metrics["mask_overlap"] > 0.95 and metrics["coverage"] == 1.0
    rq.check_quality(metrics, {"min_brain_correlation": 0.9, "min_coverage": 0.9}, "same")
    with pytest.raises(RegistrationError, match="coverage"):
        rq.check_quality({**metrics, "coverage": 0.5}, {"min_coverage": 0.9}, "cut")
    with pytest.raises(UsageError, match="min_sharpness"):
        rq.check_quality(metrics, {"min_sharpness": 0.9}, "x")
    coarse = ants.resample_image(template, (4.0, 4.0, 4.0), use_voxels=False, interp_type=0)
    with pytest.raises(InputDataError):
        rq.quality(coarse, template, mask)


def test_inverted_contrast_passes_the_quality_gate(template, mask, fast):
    inverted = template.new_image_like((template.max() - template.numpy()) * (mask.numpy() > 0))
    metrics = rq.quality(inverted, template, mask)
    assert metrics["brain_correlation"] < -0.5  # QSM-like: dark where the T1w is bright
    rq.check_quality(metrics, fast["quality"], "inverted")
