"""Shared code of the EAT-LoRA ASD scripts: one module per job; the scripts at the root import these,
these never import a script."""
