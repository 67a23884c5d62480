"""Results reports of pipeline runs: ``write_report(collect_rows([run_dir]), out_dir)``.

records: the metric specs, run.json (RunInfo), the published numbers and the row records; collect: work
dirs -> rows; tabulate: rows -> cells and deltas; render: report.md, results.csv / .json and plots.
Pure Python (matplotlib for the plots); no OpenMMLab module is imported.
"""

from adpe.report.collect import collect_rows
from adpe.report.records import METRICS, STAGES, Metric, Row, RunInfo, load_published
from adpe.report.render import write_report
from adpe.report.tabulate import CSV_COLUMNS, resolve_baseline, table_rows

__all__ = ["CSV_COLUMNS", "METRICS", "STAGES", "Metric", "Row", "RunInfo", "collect_rows", "load_published",
           "resolve_baseline", "table_rows", "write_report"]
