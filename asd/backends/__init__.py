"""The scoring back ends (asd/backends/registry.py names them)."""
