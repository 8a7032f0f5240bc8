"""Reports a person reads: one HTML page (and its markdown twin) comparing distillation runs."""

from detkd.report.page import ReportResult, build_report
from detkd.report.runs import RunFolder, read_run, read_runs

__all__ = ["ReportResult", "RunFolder", "build_report", "read_run", "read_runs"]
