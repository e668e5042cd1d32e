"""``ssal report``: self-contained HTML pages for runs (``run_page``) and studies
(``study_page``), drawn by ``figures`` and laid out by ``pages``."""

from ssal.report.run_page import (
    build_report,
    evaluate_run,
    evaluate_runs,
    save_report,
    write_report,
)
from ssal.report.study_page import build_study_report, find_study, read_study, write_study_report

__all__ = [
    "build_report",
    "build_study_report",
    "evaluate_run",
    "evaluate_runs",
    "find_study",
    "read_study",
    "save_report",
    "write_report",
    "write_study_report",
]
