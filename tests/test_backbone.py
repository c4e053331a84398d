"""bids_qnet's ResNet18 is torchvision's: same keys, same random weights per seed, same outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from bids_qnet.models.backbone import ResNet18


@pytest.mark.parametrize("seed", [0, 7])
def test_same_random_weights_as_torchvision(seed):
    torch.manual_seed(seed)
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    torch.manual_seed(seed)
    ours = ResNet18().state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_same_outputs_and_gradients_as_torchvision():
    torch.manual_seed(3)
    theirs = torchvision.models.resnet18(weights=None)
    ours = ResNet18()
    ours.load_state_dict(theirs.state_dict())  # torchvision's files load as they are
    x = torch.rand(2, 3, 64, 80)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    ours.train(), theirs.train()
    for model in (ours, theirs):
        model.zero_grad()
        model(x).square().mean().backward()
    torch.testing.assert_close(ours.conv1.weight.grad, theirs.conv1.weight.grad)
    torch.testing.assert_close(
        ours.layer3[0].downsample[0].weight.grad, theirs.layer3[0].downsample[0].weight.grad
    )
    # training updated the batch-norm statistics the same way
    torch.testing.assert_close(ours.layer4[1].bn2.running_var, theirs.layer4[1].bn2.running_var)


def test_participant_level_embedding_does_not_import_torchvision():
    code = (
        "import sys\n"
        "from bids_qnet.models.embedding import load_backbone\n"
        "load_backbone('random', 3, seed=0)\n"
        "assert 'torchvision' not in sys.modules, sorted(m for m in sys.modules if 'vision' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
