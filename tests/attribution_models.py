"""Small differentiable models for attribution tests."""

import torch
from torch import nn

from bids_qnet.attribution.network import SliceToScan, stage1_geometry
from bids_qnet.training.stage2 import Stage2Config, build_qnet


def smooth_model(seed: int = 0, size: int = 32) -> SliceToScan:
    """Q-Net behind a small smooth (tanh) backbone: Integrated Gradients converge quickly."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 512),
        nn.Tanh(),
    )
    qnet = build_qnet(2, Stage2Config(hidden=8))
    with torch.no_grad():
        for parameter in qnet.parameters():
            parameter.mul_(4.0)
    geometry, normalise = stage1_geometry(size, 3)
    return SliceToScan(backbone, qnet, geometry, normalise, stretch=True)
