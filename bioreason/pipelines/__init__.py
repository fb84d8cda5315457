"""End-to-end pipelines behind the ``bioreason`` command and ``pipelines/`` scripts.

Each pipeline writes a run folder with a manifest per stage; completed stages are
skipped on re-run and interrupted ones resume.
"""
