"""Metrics, evaluation rules, tables, results folders, plots, the report page, comparisons."""
