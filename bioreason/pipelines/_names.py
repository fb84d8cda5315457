"""Names and limits the CLI and the report need without importing the pipelines (and
torch): the stage names and the invalid-answer limit of the verdict."""

#: the stage names, in order (a task from a file has only the last four)
STAGES = ("data", "vae", "task", "warm_start", "finetune", "calibration", "tabular")
#: held-out invalid-answer rate above which a method counts as not answering: its
#: metrics then score the answer distribution after a forced ``<answer>`` (q_exact), not
#: anything the policy writes, and the verdict and the report say so
INVALID_RATE_LIMIT = 0.5
