"""Monitor layer: reports and plots of what a run measured."""

from retain.monitor.report import comparison_table, versions_table, write_report, write_results

__all__ = ["comparison_table", "versions_table", "write_report", "write_results"]
