"""End-to-end pipelines behind the ``bioreason`` command and ``pipelines/`` scripts.

Each pipeline writes a run folder with a manifest per stage, through the one stage
helper :func:`bioreason.pipelines.stages.run_stage`; completed stages are skipped on
re-run and interrupted ones resume.
"""
