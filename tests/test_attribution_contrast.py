"""Class-reference Integrated Gradients: the references and the attribution through the stretch."""

import numpy as np
import pytest
import torch

from bids_qnet.attribution.contrast import class_references, reference_attribution
from bids_qnet.attribution.network import StoredToScan

from .attribution_models import smooth_model


class _Stack:
    def __init__(self, scan_id, array):
        self.scan_id, self.array = scan_id, array

    def load_slices(self):
        return self.array


def test_each_class_is_referred_to_the_mean_of_the_others():
    rng = np.random.default_rng(0)
    arrays = {
        k: [rng.random((2, 1, 3, 3)).astype(np.float32) for _ in range(k + 2)] for k in (0, 1, 2)
    }
    scans = {k: [_Stack(f"sub-{k}{i}", a) for i, a in enumerate(v)] for k, v in arrays.items()}
    refs = class_references(scans)
    np.testing.assert_allclose(refs.slices[0], np.mean(arrays[1] + arrays[2], axis=0), rtol=1e-6)
    np.testing.assert_allclose(refs.slices[2], np.mean(arrays[0] + arrays[1], axis=0), rtol=1e-6)
    assert refs.members[1] == ["sub-00", "sub-01", "sub-20", "sub-21", "sub-22", "sub-23"]
    assert len(set(refs.digests.values())) == 3
    assert class_references({0: scans[0], 1: []}) is None


def test_reference_attribution_is_complete_through_the_stretch():
    model = smooth_model(0, 32).eval()
    rng = np.random.default_rng(1)
    reference = rng.random((4, 3, 14, 18), dtype=np.float32)
    x = torch.from_numpy(reference.copy())[None]
    x[0, :, 0, 4:8, 5:9] += 0.8  # one region differs from the reference, in one channel
    result = reference_attribution(model, x, reference, 1, (64, 16))
    with torch.no_grad():
        logits = StoredToScan(model)(torch.cat([x, torch.from_numpy(reference)[None]]))
    centred = (logits - logits.mean(dim=1, keepdim=True))[:, 1]
    gap = float(centred[0] - centred[1])
    assert abs(gap) > 1e-3
    assert float(result.attribution.sum()) == pytest.approx(gap + result.delta, abs=1e-4)
    assert abs(result.delta) < 0.05 * abs(gap)
    # attribution sits where the input differs from the reference, and nowhere else
    inside = np.abs(result.attribution[:, 0, 4:8, 5:9]).sum()
    assert inside / np.abs(result.attribution).sum() > 0.99
