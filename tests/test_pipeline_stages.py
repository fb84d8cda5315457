import dataclasses
import json

import numpy as np
import pytest

from bioreason.pipelines.stages import Stage, run_stages
from bioreason.stage import (
    completed_stage,
    config_defaults,
    config_differences,
    finished_differences,
    manifest_matches,
    run_stage,
)


class Counter:
    """A compute function that writes ``table.csv`` and counts its calls."""

    def __init__(self, value: str = "a,b\n1,2\n"):
        self.calls = 0
        self.value = value

    def __call__(self, stage_dir):
        self.calls += 1
        (stage_dir / "table.csv").write_text(self.value)
        return {"rows": 1, "mean": np.float64(0.5), "calls": self.calls}


def test_computes_once_then_skips(tmp_path):
    compute = Counter()
    messages = []
    first = run_stage(tmp_path / "s", {"k": 1}, None, compute, seed=3, log=messages.append)
    assert not first.skipped and compute.calls == 1
    assert first.result == {"rows": 1, "mean": 0.5, "calls": 1}
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"] == {"k": 1} and manifest["seed"] == 3
    assert set(manifest["outputs"]) == {"table.csv", "result.json"}
    assert all(manifest["outputs"].values()) and "numpy" in manifest["versions"]
    second = run_stage(tmp_path / "s", {"k": 1}, None, compute, seed=3, log=messages.append)
    assert second.skipped and compute.calls == 1
    assert second.result == first.result
    assert messages == [f"[s] up to date: {tmp_path / 's'}"]
    # another seed recomputes
    assert not run_stage(tmp_path / "s", {"k": 1}, None, compute, seed=4, log=None).skipped


@dataclasses.dataclass
class _Inner:
    rate: float = 0.5
    added: bool = False  # a setting "added to bioreason" after the first run


@dataclasses.dataclass
class _Outer:
    steps: int = 10
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    tags: dict = dataclasses.field(default_factory=lambda: {"a": 1})


def test_config_defaults_name_every_dataclass_default_by_its_dotted_place():
    config = {"vae": _Outer(steps=3, inner=_Inner(rate=0.1)), "seed": 0}
    defaults = config_defaults(config)
    assert defaults == {
        "vae.steps": 10,
        "vae.inner.rate": 0.5,
        "vae.inner.added": False,
        "vae.tags.a": 1,
    }
    saved = {"vae": {"steps": 3, "inner": {"rate": 0.1}, "tags": {"a": 1}}, "seed": 0}
    current = json.loads(json.dumps({"vae": dataclasses.asdict(config["vae"]), "seed": 0}))
    # without the defaults the setting the record lacks is a difference
    assert config_differences(saved, current) == ["vae.inner.added: (absent) -> False"]
    assert config_differences(saved, current, defaults) == []
    current["vae"]["inner"]["added"] = True  # not its default: still a difference
    assert config_differences(saved, current, defaults) == ["vae.inner.added: (absent) -> True"]
    # a setting the record holds is compared as ever, default or not
    saved["vae"]["inner"]["added"] = True
    current["vae"]["inner"]["added"] = False
    assert config_differences(saved, current, defaults) == ["vae.inner.added: True -> False"]


def test_a_record_from_before_a_setting_existed_matches_it_at_its_default(tmp_path):
    """A stage finished before a config field was added is up to date when the field is
    at its default, and recomputed when it is not (it used to refit every older run)."""
    compute = Counter()
    stage = tmp_path / "s"
    run_stage(stage, {"vae": _Outer()}, None, compute, seed=0, log=None)
    manifest_path = stage / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["vae"]["inner"] == {"rate": 0.5, "added": False}
    del manifest["config"]["vae"]["inner"]["added"]  # as an older bioreason wrote it
    manifest_path.write_text(json.dumps(manifest))
    assert manifest_matches(stage, config={"vae": _Outer()}, seed=0)
    assert completed_stage(stage, {"vae": _Outer()}, seed=0) is not None
    again = run_stage(stage, {"vae": _Outer()}, None, compute, seed=0, log=None)
    assert again.skipped and compute.calls == 1
    assert finished_differences(stage, {"vae": _Outer()}, seed=0) == []
    changed = {"vae": _Outer(inner=_Inner(added=True))}
    assert not manifest_matches(stage, config=changed, seed=0)
    assert finished_differences(stage, changed, seed=0) == ["vae.inner.added: (absent) -> True"]
    assert not run_stage(stage, changed, None, compute, seed=0, log=None).skipped
    assert compute.calls == 2


def test_result_json_round_trip(tmp_path):
    def compute(stage_dir):
        return {"a": np.arange(3), "b": {"c": np.int64(2)}, "path": stage_dir / "x", "n": None}

    done = run_stage(tmp_path / "s", {}, None, compute, log=None)
    saved = json.loads((tmp_path / "s" / "result.json").read_text())
    assert done.result == saved == {"a": [0, 1, 2], "b": {"c": 2}, "path": saved["path"], "n": None}
    assert completed_stage(tmp_path / "s", {}).result == saved


def test_result_must_be_a_json_dict(tmp_path):
    with pytest.raises(TypeError, match="must return a dict"):
        run_stage(tmp_path / "s", {}, None, lambda d: [1], log=None)
    with pytest.raises(TypeError, match="JSON"):
        run_stage(tmp_path / "t", {}, None, lambda d: {"x": object()}, log=None)


def test_config_change_recomputes_and_drops_stale_outputs(tmp_path):
    def compute_a(stage_dir):
        (stage_dir / "old.txt").write_text("old")
        return {}

    run_stage(tmp_path / "s", {"k": 1}, None, compute_a, log=None)
    compute = Counter()
    run_stage(tmp_path / "s", {"k": 2}, None, compute, log=None)
    assert compute.calls == 1
    assert not (tmp_path / "s" / "old.txt").exists()
    assert run_stage(tmp_path / "s", {"k": 2}, None, compute, log=None).skipped


def test_input_change_recomputes(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("1")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\0")
    inputs = {"table": source, "model": folder}
    compute = Counter()
    run_stage(tmp_path / "s", {}, inputs, compute, log=None)
    assert run_stage(tmp_path / "s", {}, inputs, compute, log=None).skipped
    source.write_text("2")
    assert not run_stage(tmp_path / "s", {}, inputs, compute, log=None).skipped
    (folder / "w.bin").write_bytes(b"\1")
    assert not run_stage(tmp_path / "s", {}, inputs, compute, log=None).skipped
    assert compute.calls == 3
    with pytest.raises(FileNotFoundError, match="'gone'"):
        run_stage(tmp_path / "s", {}, {"gone": tmp_path / "nope"}, compute, log=None)


def test_foreign_file_is_refused_without_force_and_replaced_with_it(tmp_path):
    stage = tmp_path / "s"
    stage.mkdir()
    (stage / "table.csv").write_text("the user's table")
    compute = Counter()
    with pytest.raises(FileExistsError, match=r"table\.csv.*--force"):
        run_stage(stage, {}, None, compute, log=None)
    assert compute.calls == 0 and (stage / "table.csv").read_text() == "the user's table"
    assert not (stage / "manifest.json").exists()
    done = run_stage(stage, {}, None, compute, force=True, log=None)
    assert not done.skipped and (stage / "table.csv").read_text() == compute.value


def test_an_output_changed_since_is_not_replaced_without_force(tmp_path):
    compute = Counter()
    run_stage(tmp_path / "s", {"k": 1}, None, compute, outputs=["table.csv"], log=None)
    (tmp_path / "s" / "table.csv").write_text("edited")
    # neither the same config (outputs changed) nor another one replaces the edit
    for config in ({"k": 1}, {"k": 2}):
        with pytest.raises(FileExistsError, match=r"table\.csv has changed"):
            run_stage(tmp_path / "s", config, None, compute, log=None)
    # a file dropped into a complete stage folder blocks a recompute
    (tmp_path / "s" / "table.csv").write_text(compute.value)
    (tmp_path / "s" / "notes.txt").write_text("mine")
    assert run_stage(tmp_path / "s", {"k": 1}, None, compute, log=None).skipped
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_stage(tmp_path / "s", {"k": 2}, None, compute, log=None)
    run_stage(tmp_path / "s", {"k": 2}, None, compute, force=True, log=None)
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"  # force never deletes it


def test_declared_outputs_must_be_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="model"):
        run_stage(tmp_path / "s", {}, None, Counter(), outputs=["model"], log=None)


def test_interrupted_compute_leaves_no_complete_manifest_and_resumes(tmp_path):
    seen = []

    def crashing(stage_dir):
        (stage_dir / "checkpoint.pt").write_text("step 5")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "s", {"k": 1}, None, crashing, log=None)
    assert not manifest_matches(tmp_path / "s", config={"k": 1}, seed=None)
    assert completed_stage(tmp_path / "s", {"k": 1}) is None

    def resuming(stage_dir):
        seen.append((stage_dir / "checkpoint.pt").read_text())
        return {"done": True}

    done = run_stage(tmp_path / "s", {"k": 1}, None, resuming, log=None)
    assert not done.skipped and seen == ["step 5"] and done.result == {"done": True}
    assert run_stage(tmp_path / "s", {"k": 1}, None, resuming, log=None).skipped


def test_stage_folder_that_is_a_file(tmp_path):
    (tmp_path / "s").write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file"):
        run_stage(tmp_path / "s", {}, None, Counter(), log=None)


def _pipeline(calls):
    def first(stage_dir, upstream):
        calls.append("a")
        (stage_dir / "data.txt").write_text(str(stages[0].config["size"]))
        return {"n": 1}

    def second(stage_dir, upstream):
        calls.append("b")
        return {"n": upstream["a"].result["n"] + 1}

    def third(stage_dir, upstream):
        calls.append("c")
        return {"n": upstream["b"].result["n"] + 1}

    stages = [
        Stage("a", first, {"size": 1}),
        Stage("b", second, inputs=lambda up: {"data": up["a"].path / "data.txt"}),
        Stage("c", third, inputs=lambda up: {"b": up["b"].path / "result.json"}),
    ]
    return stages


def test_run_stages_only_and_from(tmp_path):
    calls = []
    stages = _pipeline(calls)
    with pytest.raises(ValueError, match="earlier stage 'a'"):
        run_stages(stages, tmp_path, from_="b", log=None)
    results = run_stages(stages, tmp_path, log=None)
    assert calls == ["a", "b", "c"] and results["c"].result == {"n": 3}
    calls.clear()
    assert all(r.skipped for r in run_stages(stages, tmp_path, log=None).values())
    assert calls == []
    # --only reruns one stage if its own inputs changed; later stages are not run
    (tmp_path / "a" / "data.txt").write_text("1")  # unchanged content: nothing to do
    results = run_stages(stages, tmp_path, only="b", log=None)
    assert list(results) == ["a", "b"] and calls == []
    stages[0].config = {"size": 2}
    with pytest.raises(ValueError, match="earlier stage 'a'"):
        run_stages(stages, tmp_path, only="b", log=None)
    results = run_stages(stages, tmp_path, only="a", log=None)
    assert calls == ["a"] and list(results) == ["a"]
    results = run_stages(stages, tmp_path, from_="b", log=None)
    # a's output changed, so b recomputes; b's result is the same, so c is up to date
    assert calls == ["a", "b"] and results["a"].skipped and results["c"].skipped


def test_run_stages_names_the_stages_in_errors(tmp_path):
    stages = _pipeline([])
    for kwargs in ({"only": "x"}, {"from_": "x"}):
        with pytest.raises(ValueError, match="choose one of: a, b, c"):
            run_stages(stages, tmp_path, log=None, **kwargs)
    with pytest.raises(ValueError, match="not both"):
        run_stages(stages, tmp_path, only="a", from_="b", log=None)
    with pytest.raises(ValueError, match="repeated: a"):
        run_stages([*stages, stages[0]], tmp_path, log=None)


def test_run_stages_checks_every_folder_before_running(tmp_path):
    calls = []
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_stages(_pipeline(calls), tmp_path, log=None)
    assert calls == [] and not (tmp_path / "a").exists()


def test_the_result_file_can_have_another_name(tmp_path):
    """A fine-tuning job's result is its metrics.json (result=), not result.json."""
    compute = Counter()
    done = run_stage(tmp_path / "job", {"k": 1}, None, compute, result="metrics.json", log=None)
    assert json.loads((tmp_path / "job" / "metrics.json").read_text()) == done.result
    assert not (tmp_path / "job" / "result.json").exists()
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"table.csv", "metrics.json"}
    again = run_stage(tmp_path / "job", {"k": 1}, None, compute, result="metrics.json", log=None)
    assert again.skipped and compute.calls == 1
    assert completed_stage(tmp_path / "job", {"k": 1}, result="metrics.json").result == done.result
    assert completed_stage(tmp_path / "job", {"k": 1}) is None  # result.json is not its result


class Checkpointing:
    """Writes ``table.csv``; first leaves a ``checkpoint/`` and fails when ``fail``."""

    def __init__(self):
        self.fail = False
        self.found = []

    def __call__(self, stage_dir):
        self.found.append((stage_dir / "checkpoint").is_dir())
        (stage_dir / "checkpoint").mkdir(exist_ok=True)
        (stage_dir / "checkpoint" / "state").write_text("half way")
        if self.fail:
            raise KeyboardInterrupt
        (stage_dir / "table.csv").write_text("a\n1\n")
        return {"ok": True}


def test_scratch_is_kept_for_a_resume_and_removed_otherwise(tmp_path):
    stage = tmp_path / "s"
    compute = Checkpointing()
    compute.fail = True
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, {"k": 1}, None, compute, outputs=["table.csv"], scratch=["checkpoint"])
    assert (stage / "checkpoint").is_dir()
    compute.fail = False
    # the same settings resume: the checkpoint is there for compute, then removed
    run_stage(stage, {"k": 1}, None, compute, outputs=["table.csv"], scratch=["checkpoint"])
    assert compute.found == [False, True]
    assert not (stage / "checkpoint").exists()
    manifest = json.loads((stage / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"table.csv", "result.json"}
    # an interrupted run of other settings leaves a checkpoint that a new run must not use
    compute.fail = True
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, {"k": 2}, None, compute, outputs=["table.csv"], scratch=["checkpoint"])
    compute.fail = False
    run_stage(stage, {"k": 3}, None, compute, outputs=["table.csv"], scratch=["checkpoint"])
    assert compute.found[-1] is False  # started afresh


def test_keep_finished_refuses_to_replace_a_finished_run_unless_forced(tmp_path):
    stage = tmp_path / "out"
    run_stage(stage, {"k": 1}, None, Counter(), log=None, keep_finished=True)
    with pytest.raises(FileExistsError, match="holds a finished run with other settings"):
        run_stage(stage, {"k": 2}, None, Counter(), log=None, keep_finished=True)
    assert json.loads((stage / "manifest.json").read_text())["config"] == {"k": 1}
    # the same settings are still up to date, and force replaces
    assert run_stage(stage, {"k": 1}, None, Counter(), log=None, keep_finished=True).skipped
    replaced = run_stage(stage, {"k": 2}, None, Counter(), log=None, keep_finished=True, force=True)
    assert not replaced.skipped
    # a pipeline stage (keep_finished=False) recomputes with new settings
    assert not run_stage(stage, {"k": 3}, None, Counter(), log=None).skipped


def test_ctrl_c_stops_every_job_of_a_parallel_batch_within_seconds(tmp_path):
    """issue 20: Ctrl-C during the finetune stage with --workers 2 let every queued job
    start and run to its end; now the queued jobs are cancelled and the running ones
    stopped, and KeyboardInterrupt reaches the caller within seconds."""
    import os
    import signal
    import threading
    import time

    from _interrupt_jobs import slow_job

    from bioreason.pipelines.lm_runs import run_jobs

    jobs = [{"folder": str(tmp_path), "index": i, "seconds": 60.0} for i in range(6)]

    def interrupt_when_two_started():
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends the main process

    threading.Thread(target=interrupt_when_two_started, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, workers=2, function=slow_job)
    elapsed = time.monotonic() - start
    time.sleep(1.0)  # a queued job that still started would have left its mark by now
    started = sorted(p.name for p in tmp_path.glob("started-*"))
    assert len(started) == 2, started  # no queued job started after the interrupt
    assert not list(tmp_path.glob("finished-*"))  # the running ones were stopped
    assert elapsed < 20, elapsed  # (60 s jobs) within seconds, not after the jobs
    for path in tmp_path.glob("started-*"):  # their processes are gone
        pid = int(path.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
