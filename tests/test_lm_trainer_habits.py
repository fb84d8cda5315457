"""TRL habits of the LM trainer: callbacks (several, in order; one stops training cleanly
and a later call continues), the in-memory log history, ``save_model`` / ``save_pretrained``
as a folder ``load_predictor`` reads, ``output_dir``, TensorBoard and the progress bar, and
TRL's argument names refused with the bioreason name."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from test_lm_trainer import flat, make_model, make_task, make_tokenizer, small_config

from bioreason.lm import load_predictor
from bioreason.rl import LMRLConfig, LMTrainer
from bioreason.rl.lm import FinetuneConfig, StopAfterSteps, TrainerCallback


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


class Recorder(TrainerCallback):
    """Records every event (name, step) into a shared list."""

    def __init__(self, name: str, events: list) -> None:
        self.name, self.events = name, events

    def on_train_begin(self, trainer):
        self.events.append((self.name, "begin", trainer.step))

    def on_step(self, trainer, logs):
        assert logs["step"] == trainer.step and "reward_mean" in logs
        self.events.append((self.name, "step", trainer.step))

    def on_log(self, trainer, logs):
        assert trainer.log_history.iloc[-1]["step"] == logs["step"]
        self.events.append((self.name, "log", logs["step"]))

    def on_evaluate(self, trainer, metrics):
        assert trainer.eval_rows_log[-1] is metrics and math.isfinite(metrics["ece"])
        self.events.append((self.name, "evaluate", metrics["step"]))

    def on_save(self, trainer, path):
        assert path.exists()
        self.events.append((self.name, "save", trainer.step))

    def on_train_end(self, trainer):
        self.events.append((self.name, "end", trainer.step))


class OnlySteps:
    """A callback that is not a TrainerCallback and has one method: the others are skipped."""

    def __init__(self) -> None:
        self.steps = []

    def on_step(self, trainer, logs):
        self.steps.append(trainer.step)


def test_callbacks_are_called_in_order_at_every_event(tokenizer, tmp_path):
    events: list = []
    plain = OnlySteps()
    config = small_config(steps=4, log_every=2, checkpoint_every=2, eval_every=2)
    trainer = LMTrainer(
        make_model(tokenizer),
        tokenizer,
        make_task(),
        config,
        callbacks=[Recorder("a", events), plain],
    )
    trainer.add_callback(Recorder("b", events))
    trainer.train(checkpoint_path=tmp_path / "checkpoint.pt", progress=False)
    assert plain.steps == [1, 2, 3, 4]
    ours = [(event, step) for name, event, step in events if name == "a"]
    assert ours == [
        ("begin", 0),
        ("log", 0),
        ("step", 1),
        ("evaluate", 2),  # evaluate() runs inside the step
        ("step", 2),
        ("log", 2),
        ("save", 2),  # a checkpoint every 2 steps (the last is the caller's to write)
        ("step", 3),
        ("evaluate", 4),
        ("step", 4),
        ("log", 4),
        ("end", 4),
    ]
    # several callbacks: each event reaches them in the order given
    assert [name for name, event, _ in events if event == "step"] == ["a", "b"] * 4
    # an evaluation the user asks for reaches them too
    trainer.evaluate()
    assert events[-1] == ("b", "evaluate", 4) and events[-2] == ("a", "evaluate", 4)
    with pytest.raises(TypeError, match=r"pass an instance \(Recorder\(\)\)"):
        trainer.add_callback(Recorder)
    with pytest.raises(TypeError, match="none of the callback methods"):
        trainer.add_callback(object())


def test_a_callback_stops_training_cleanly_and_a_later_call_continues(tokenizer, tmp_path):
    task = make_task()
    config = small_config(steps=4, checkpoint_every=4, log_every=3)

    def trainer(**options):
        return LMTrainer(make_model(tokenizer), tokenizer, task, config, **options)

    whole = trainer()
    whole.train(progress=False)
    path = tmp_path / "checkpoint.pt"
    stopped = trainer(callbacks=StopAfterSteps(2))
    result = stopped.train(checkpoint_path=path, log_path=tmp_path / "log.csv", progress=False)
    assert result["stopped_early"] and result["steps_run"] == 2 and stopped.step == 2
    # the step it stopped at is logged (log_every=3 would not log it) and checkpointed
    assert list(pd.read_csv(tmp_path / "log.csv")["step"]) == [0, 2]
    assert torch.load(path, weights_only=True)["trainer"]["step"] == 2
    continued = trainer()
    result = continued.train(checkpoint_path=path, progress=False)
    assert not result["stopped_early"] and continued.step == 4 and result["steps_run"] == 2
    assert torch.equal(flat(continued.model), flat(whole.model))
    # the history of the continued run starts with the stopped run's rows
    assert list(continued.log_history["step"]) == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        StopAfterSteps(0)


def test_log_history_has_one_row_per_logged_step_and_per_evaluation(tokenizer):
    config = small_config(steps=4, log_every=2, eval_every=2, eval_samples=2)
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    assert list(trainer.log_history.columns) == ["step", "kind"] and trainer.log_history.empty
    trainer.train(progress=False)
    history = trainer.log_history
    assert list(zip(history["step"], history["kind"])) == [
        (0, "train"),
        (2, "train"),
        (2, "eval"),
        (4, "train"),
        (4, "eval"),
    ]
    train, evaluation = history[history["kind"] == "train"], history[history["kind"] == "eval"]
    assert train["eval_ece"].isna().all() and evaluation["reward_mean"].isna().all()
    assert list(evaluation["eval_ece"]) == [row["ece"] for row in trainer.eval_rows_log]
    assert train["reward_mean"].iloc[-1] == trainer.diagnostics()["reward_mean"]
    assert "eval_invalid_rate" in history and "invalid_rate" in history  # kept apart


def test_save_model_writes_a_folder_load_predictor_reads(tokenizer, tmp_path):
    config = small_config(
        steps=2, answer_format="tagged", answer_prefix="<answer>", max_new_tokens=3
    )
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    trainer.train(progress=False)
    with pytest.raises(ValueError, match=r"pass save_model\(path\), or give the trainer an"):
        trainer.save_model()
    folder = trainer.save_model(tmp_path / "policy")
    predictor = load_predictor(folder, device="cpu")
    assert torch.equal(flat(predictor.model), flat(trainer.model))
    assert predictor.grid == trainer.grid
    assert predictor.answer_token_ids == trainer.answer_token_ids.tolist()
    # and transformers reads it on its own: the same weights, the same tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(flat(model), flat(trainer.model))
    text = "perturb PERT1 readout GENE0 probability ?"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == tokenizer(text)["input_ids"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trainer.save_pretrained(tmp_path / "policy")
    trainer.save_pretrained(tmp_path / "policy", overwrite=True)  # the HF name, same method


def test_output_dir_collects_logs_checkpoints_tensorboard_and_the_model(tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = small_config(steps=4, eval_every=2, checkpoint_every=2)
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config, output_dir=out)
    trainer.train(progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "log.csv", "eval.csv", "predictions.parquet", "tb"} <= names
    assert list(pd.read_csv(out / "eval.csv")["step"]) == [2, 4]
    events = EventAccumulator(str(out / "tb"))
    events.Reload()  # TensorBoard works for the LM trainer: its log rows as scalars
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3, 4]
    assert trainer.save_model().resolve() == (out / "model").resolve()
    assert load_predictor(out / "model", device="cpu") is not None
    # train(output_dir=...) on a trainer built without one; a file there is refused
    other = LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config(steps=1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        other.train(output_dir=tmp_path / "file", progress=False)
    other.train(output_dir=tmp_path / "second", progress=False)
    assert (tmp_path / "second" / "log.csv").exists()


def test_progress_bar_shows_the_reward(tokenizer, capsys):
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config(steps=2))
    trainer.train(progress=True, description="rl-test")
    shown = capsys.readouterr().err
    assert "rl-test" in shown and "2/2" in shown and "reward_mean=" in shown


@pytest.mark.parametrize(
    ("trl", "ours"),
    [
        ("learning_rate", "lr"),
        ("num_generations", "group_size"),
        ("max_completion_length", "max_new_tokens"),
        ("beta", "kl_coef"),
        ("max_steps", "steps"),
        ("num_train_epochs", "steps"),
        ("per_device_train_batch_size", "questions_per_step"),
        ("logging_steps", "log_every"),
        ("save_steps", "checkpoint_every"),
    ],
)
def test_trl_names_are_refused_with_the_bioreason_name(trl, ours):
    message = rf"use {ours} \(TRL's {trl}\)"
    with pytest.raises(TypeError, match=message):
        LMRLConfig(**{trl: 1})
    with pytest.raises(ValueError, match=message):
        LMRLConfig.from_dict({trl: 1})
    with pytest.raises(ValueError, match=rf"FinetuneConfig.rl: .*{message}"):
        FinetuneConfig.from_dict({"rl": {trl: 1}})
    with pytest.raises(ValueError, match=rf"use rl.{ours} \(TRL's {trl}\)"):
        FinetuneConfig.from_dict({trl: 1})  # the flat form
    assert getattr(LMRLConfig(**{ours: getattr(LMRLConfig(), ours)}), ours) is not None


def test_output_dir_as_a_config_setting_points_to_the_trainer_and_out():
    with pytest.raises(TypeError, match=r"output_dir=\.\.\.\) .*--out for bioreason finetune"):
        LMRLConfig(output_dir="runs/x")


def test_trl_flags_of_bioreason_finetune_name_the_bioreason_flag(capsys):
    from bioreason.cli import build_parser
    from bioreason.rl.lm import TRL_NAMES

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    finetune = sub.choices["finetune"]
    finetune.format_help()  # populate the generated options
    flags = {o for action in finetune._actions for o in action.option_strings}
    base = ["finetune", "--task", "t.parquet", "--out", "o", "--model", "tiny"]
    for trl, (ours, _) in TRL_NAMES.items():
        ours_flag = "--" + ours.replace("_", "-")
        assert ours_flag in flags, ours_flag  # the flag the message names exists
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args([*base, "--" + trl.replace("_", "-"), "1"])
        assert stopped.value.code == 2
        assert f"is TRL's name: use {ours_flag} (rl.{ours})" in capsys.readouterr().err
    assert "learning-rate" not in finetune.format_help()  # hidden from --help
