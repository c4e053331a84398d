"""Training: splits, augmentation, the two stages, estimators and resumable cross-validation."""
