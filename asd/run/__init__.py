"""run_all's steps, stamps and running; benchmark and GPU-check helpers."""
