"""Networks (ResNet18, the stage-1 classifier, Q-Net), slice embedding and the device."""
