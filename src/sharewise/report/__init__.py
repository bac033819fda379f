"""Reports from a run directory: ``report.md`` with the per-task table, costs and selection."""

from .compare import write_comparison
from .markdown import write_report

__all__ = ["write_comparison", "write_report"]
