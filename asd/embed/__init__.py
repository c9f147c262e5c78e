"""Embedding clips with a tuned encoder and the embedding files (the encoder-scorer contract)."""
