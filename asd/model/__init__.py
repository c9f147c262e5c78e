"""The EAT encoder, its heads, pretrained checkpoints and tuned-model files."""
