"""Reports that compare communication budgets across runs (``fedcomp report``)."""

from fedcomp.reports.headline import Headline
from fedcomp.reports.render import Report, make_report
from fedcomp.reports.runs import ReportError, RunRecord, load_run

__all__ = ["Headline", "Report", "ReportError", "RunRecord", "load_run", "make_report"]
