"""Networks of the Q-Net framework (stage-1 ResNet18 classifier, stage-2 scan-level model)."""
