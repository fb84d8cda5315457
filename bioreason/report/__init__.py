"""The run report: ``report.html`` (self-contained) and ``report.md`` of a pipeline run.

:func:`write_report` reads a run folder written by ``bioreason run`` and writes two files
into it with the same content:

- ``report.html``: one page, every figure an embedded base64 PNG (matplotlib, Agg),
  inline CSS, a Content-Security-Policy that forbids any fetch, and no network
  reference at all, so it opens offline and can be mailed as one file. A small inline
  script records, on load, how many figures decoded (``<body data-images-loaded="n/n">``;
  the browser test reads it).
- ``report.md``: the same blocks as Markdown, its figures as PNG files in
  ``report_files/`` referenced by relative path.

Files are written atomically. A ``report.html`` / ``report.md`` that write_report did not
write (it marks its own with ``<meta name="generator" content="bioreason write_report">``
and a first-line comment in the Markdown), and a ``report_files/figure-*.png`` that it did
not write or that changed since (``report_files/manifest.json`` records the hash of each
figure it wrote), is only replaced with ``force=True`` (``bioreason report RUN_DIR
--force``); :func:`check_report_writable` checks them all before anything is written
(``bioreason run`` calls it before its first stage). A file of the run folder that exists
but cannot be read, or lacks the columns its stage writes, is listed in the report and in
:attr:`ReportFiles.problems` (``bioreason report`` then exits with status 1). A folder of
``bioreason synthetic-calibration`` (or a ``kind: tabular`` run) gets a report of its own
kind: its ``metrics.csv`` table and figures.

Run folder
----------
::

    runs/<name>/
      pipeline.json                 name, config, commands, versions, stages (status,
                                    seconds), started, finished
      data/result.json              n_cells, n_genes, n_conditions, ..., heldout_conditions
      vae/result.json               IWELBO, ATE correlations, mask AUROC, ppc, loss_curve
      task/task.parquet             one row per question (p_star, p_star_spread, p_true,
                                    outcome, split, ...); task/result.json
      warm_start/result.json        (or warm/)
      finetune/<method>_seed<S>/    log.csv (per step), eval.csv (per evaluation)
      calibration/                  predictions.parquet, summary.csv, result.json
                                    (headline rows, finding {shown, text})

Only ``pipeline.json`` is required; every stage folder may be missing (a run that
stopped early), and the report then says "stage X: not run" in that section. Files
that exist but cannot be read are listed in a section of their own.

Sections, in order
------------------
1. Title, run name, start / finish dates.
2. The finding of ``calibration/result.json`` ("GRPO overconfident, the others
   calibrated", judged question by question): a green box when the run shows it, an
   amber warning box with the reason when it does not; then the headline rows in two
   tables, each with the sampled invalid-answer rate: ECE, ``|q - p*|`` and the
   overconfidence vs p* per question with their intervals, then the question-level
   figures (corr and Spearman of q with p*, sd of q, AUROC against outcomes and against
   p* > 1/2); the captions say what the intervals cover.
3. Stages: status and seconds of each stage from ``pipeline.json``.
4. Data: the data summary (cells, genes, conditions, held-out conditions, source).
5. Perturbation model: IWELBO (held-out, train), ATE correlations, mask recovery,
   the posterior predictive checks, and the training-loss curve.
6. Simulator check: the task summary; p* against p_true (synthetic data), the
   epistemic spread of p* over posterior draws, p* over questions.
7. Warm start.
8. Fine-tuning: each method x seed at its last step and evaluation; training curves
   (reward mean, zero-std group fraction, entropy against step) and evaluation curves
   (ECE, error against p*, invalid answers), one line per run coloured by method.
9. Calibration: one table over methods against the outcomes (invalid-answer rate, ECE,
   adaptive ECE, Brier, log loss, AUROC), one against p* / p_true (error, overconfidence
   per question and average-level), one question by question (corr and Spearman of q
   with p*, sd of q, AUROC against p* > 1/2), each cell ``0.197 [0.107, 0.297]``
   (95 % bootstrap over seeds and conditions, as the summary's ``interval`` says); the
   between-seed standard deviations; the theory's fixed point against the measured end
   state (and, below it, the one-step drift at the final policy); figures, one panel per
   method: the reliability diagram question by question (q against p*, in bins of p*),
   the fixed point against q (one point per question), reliability diagrams against
   outcomes, predicted-vs-p* scatter and answer histograms.
10. Commands, versions and the configuration from ``pipeline.json``.

Example
-------
>>> from bioreason.report import write_report
>>> files = write_report("runs/demo")  # doctest: +SKIP
>>> files.html, files.n_figures  # doctest: +SKIP
"""

from bioreason.report.build import ReportFiles, build_blocks, check_report_writable, write_report
from bioreason.report.load import RunFolder, load_run

__all__ = [
    "ReportFiles",
    "RunFolder",
    "build_blocks",
    "check_report_writable",
    "load_run",
    "write_report",
]
