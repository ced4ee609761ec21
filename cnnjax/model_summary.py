"""Alias of :mod:`cnnjax.analysis.summary` (the per-layer summary moved there)."""

from cnnjax.analysis.summary import LayerSummary, SummaryResult, print_summary, summary

__all__ = ["LayerSummary", "SummaryResult", "print_summary", "summary"]
