"""Audio and clips: reading, channels, fbank, statistics, the clip policy, DCASE names and datasets, labels, ground truth, the demo set."""
