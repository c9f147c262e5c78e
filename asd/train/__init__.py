"""Training: the loaders and one epoch, the epoch loop, resuming, history, augmentations."""
