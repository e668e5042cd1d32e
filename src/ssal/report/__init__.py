"""``ssal report``: self-contained HTML pages for evaluated runs (``run_page``; the runs
are evaluated by ``ssal.evaluate.evaluate_runs``) and studies (``study_page``), drawn by
``figures`` and laid out by ``pages``."""

from ssal.report.run_page import build_report, save_report
from ssal.report.study_page import build_study_report, find_study, read_study, write_study_report

__all__ = [
    "build_report",
    "build_study_report",
    "find_study",
    "read_study",
    "save_report",
    "write_study_report",
]
