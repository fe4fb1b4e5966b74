"""The evaluation report: HTML (self-contained, offline) and Markdown with tables, charts and image grids."""
from pipeline.report.build import ReportInputs, build_document, load_inputs, write_report

__all__ = ["ReportInputs", "build_document", "load_inputs", "write_report"]
