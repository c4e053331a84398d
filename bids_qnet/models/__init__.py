"""Neural network architectures of Q-Net."""
