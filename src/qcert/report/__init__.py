"""Reports: tables and plots of verification, smoothing and training results."""

from __future__ import annotations

from qcert.report.build import build_report
from qcert.report.results import read_result

__all__ = ["build_report", "read_result"]
