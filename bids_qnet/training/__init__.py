"""Training and inference loops of the Q-Net stages."""
