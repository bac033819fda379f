"""Reports from a run directory: ``report.md`` with the per-task table, costs and selection."""

from .markdown import write_report

__all__ = ["write_report"]
