"""ResNet18 (He et al., 2016), laid out as torchvision lays it out, without importing torchvision.

Importing torchvision costs about 1.5 s per process (its ``ops`` package pulls in
``torch._dynamo``), which the participant level would pay in every worker to build one network.
This module builds the same network from ``torch.nn`` alone:

- the module names and state-dict keys are torchvision's (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer2.0.downsample.0``, ..., ``fc``), so torchvision's ImageNet file
  and every checkpoint bids_qnet wrote before load unchanged;
- the modules are created and initialised in torchvision's order (Kaiming-normal convolutions,
  fan-out; batch norms at 1 and 0; the head at ``nn.Linear``'s default), so the same seed gives
  the same random weights, and the outputs are the same.

``tests/test_backbone.py`` checks both against ``torchvision.models.resnet18``.
"""

from __future__ import annotations

import torch
from torch import nn

#: Output channels of the four stages; each stage has two basic blocks.
STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input or to its 1x1 projection.

    Parameters
    ----------
    in_planes, planes : int
        Input and output channels.
    stride : int
        Stride of the first convolution (2 halves the feature map).
    downsample : torch.nn.Module or None
        Projection of the input when its shape changes (``None``: identity).
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(residual + shortcut)


class ResNet18(nn.Module):
    """ResNet18 for ImageNet-sized input: 7x7 stem, four stages of two basic blocks, a head.

    Parameters
    ----------
    num_classes : int
        Outputs of the linear head ``fc`` (1000, as for ImageNet, keeps the random
        initialisation equal to torchvision's; bids_qnet replaces the head afterwards).

    Notes
    -----
    ``forward`` returns ``fc(flatten(avgpool(layer4(...))))``; with ``fc`` set to
    ``nn.Identity()`` that is the 512-d global-average-pooled embedding.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = STAGE_WIDTHS[0]
        for index, planes in enumerate(STAGE_WIDTHS, start=1):
            self.add_module(f"layer{index}", _stage(in_planes, planes, 1 if index == 1 else 2))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` (or the embedding, see Notes)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """Two basic blocks; the first projects the input when its shape changes."""
    downsample = None
    if stride != 1 or in_planes != planes:  # created before the block, as torchvision does
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    blocks = [BasicBlock(in_planes, planes, stride, downsample)]
    blocks += [BasicBlock(planes, planes) for _ in range(BLOCKS_PER_STAGE - 1)]
    return nn.Sequential(*blocks)
