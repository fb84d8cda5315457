"""Names the CLI needs without importing the pipelines (and torch): the stage names."""

#: the stage names, in order (a task from a file has only the last four)
STAGES = ("data", "vae", "task", "warm_start", "finetune", "calibration", "tabular")
