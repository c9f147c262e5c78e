"""The lowest layer: settings and options, safe files, locks, errors, runtime, the DCASE years table; no project import from above."""
