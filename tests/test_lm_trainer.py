"""The LM RL trainer: sampling loop vs teacher forcing, every estimator, PPO's value head,
q_exact / q_sampled, exact resume, outcome sharing, invalid answers, a learning test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bioreason.lm.answer_protocol import parse_first_integer, single_token_answer_ids
from bioreason.rl import BernoulliOutcomes, LMRLConfig, LMTrainer
from bioreason.rl.lm.rollout import left_pad, sample_group_completions, teacher_forced
from bioreason.rl.lm.values import CRITICS

N_PERT, N_GENE = 6, 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "<answer>", "</answer>"]
    words += [str(n) for n in range(1, 100)]
    words += ["perturb", "readout", "probability", "?"]
    words += [f"PERT{i}" for i in range(N_PERT)] + [f"GENE{j}" for j in range(N_GENE)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def make_model(tokenizer, seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def make_task(p_star=None, ragged: bool = True) -> pd.DataFrame:
    rows = []
    for i in range(N_PERT):
        for j in range(N_GENE):
            tail = " ?" * (i % 3) if ragged else ""
            rows.append(
                {
                    "question_id": f"q{i}_{j}",
                    "prompt": f"perturb PERT{i} readout GENE{j} probability ?{tail}",
                    "p_star": 0.3 if p_star is None else p_star,
                    "p_true": 0.35,
                    "outcome": float((i + j) % 2),
                    "split": "train" if i < 4 else "val",
                }
            )
    return pd.DataFrame(rows)


# a bare-number answer at the first completion token: informative rewards from random init
NUMBER = {"answer_format": "first_integer", "answer_prefix": "", "max_new_tokens": 2}


def small_config(**options) -> LMRLConfig:
    values = {
        "method": "rloo",
        "steps": 4,
        "group_size": 4,
        "questions_per_step": 4,
        "lr": 1e-3,
        "checkpoint_every": 2,
        "log_every": 1,
        "eval_split": "val",  # the task's held-out split (make_task has no "test")
        **NUMBER,
    }
    values.update(options)
    return LMRLConfig(**values)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ----- the sampling loop -------------------------------------------------------------


def _prompts(tokenizer, texts):
    ids = tokenizer(texts)["input_ids"]
    return ids, left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))


def test_sampling_log_probs_equal_teacher_forcing(tokenizer):
    model = make_model(tokenizer)
    texts = ["perturb PERT0 readout GENE1 probability ?", "perturb PERT3 ?", "? ? ? PERT1 GENE2"]
    ids, prompts = _prompts(tokenizer, texts)
    assert prompts.attention_mask is not None  # ragged: left padding is exercised
    group = 3
    generator = torch.Generator().manual_seed(0)
    sample = sample_group_completions(
        model,
        prompts,
        group,
        max_new_tokens=6,
        temperature=0.7,
        stop_ids=[tokenizer.eos_token_id],
        pad_id=0,
        generator=generator,
        hidden=True,
    )
    assert sample.tokens.shape[0] == len(texts) * group
    for shared in (True, False):
        forced = teacher_forced(
            model,
            prompts,
            sample.tokens,
            sample.mask,
            temperature=0.7,
            shared_prefix=shared,
            hidden=True,
        )
        torch.testing.assert_close(forced.log_probs, sample.log_probs, atol=1e-5, rtol=0)
        torch.testing.assert_close(forced.entropy, sample.entropy, atol=1e-5, rtol=0)
        valid = sample.mask
        torch.testing.assert_close(forced.hidden[valid], sample.hidden[valid], atol=1e-5, rtol=0)
    # against each question alone, unpadded, in one plain forward
    for row in range(len(texts) * group):
        question = row // group
        n = int(sample.mask[row].sum())
        sequence = torch.tensor([ids[question] + sample.tokens[row, :n].tolist()])
        with torch.no_grad():
            logits = model(sequence).logits[0, len(ids[question]) - 1 : -1]
        expected = torch.log_softmax(logits / 0.7, -1).gather(1, sequence[0, -n:, None])[:, 0]
        torch.testing.assert_close(sample.log_probs[row, :n], expected, atol=1e-5, rtol=0)


def test_sampling_with_grad_gives_same_samples_and_stops(tokenizer):
    model = make_model(tokenizer)
    _, prompts = _prompts(tokenizer, ["perturb PERT0 readout", "perturb PERT1 readout GENE0 ?"])
    runs = []
    for with_grad in (False, True):
        sample = sample_group_completions(
            model,
            prompts,
            4,
            max_new_tokens=8,
            stop_ids=list(range(6, 60)),  # many stop tokens: completions end early
            pad_id=0,
            generator=torch.Generator().manual_seed(3),
            with_grad=with_grad,
        )
        runs.append(sample)
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[1].log_probs.requires_grad and not runs[0].log_probs.requires_grad
    lengths = runs[0].mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert runs[0].mask[row, :n].all() and not runs[0].mask[row, n:].any()
        assert (runs[0].tokens[row, n:] == 0).all()
        if n < runs[0].tokens.shape[1]:
            assert 6 <= int(runs[0].tokens[row, n - 1]) < 60  # stopped at a stop token


def test_top_p_samples_from_the_nucleus(tokenizer):
    model = make_model(tokenizer)
    _, prompts = _prompts(tokenizer, ["perturb PERT0 readout"])
    sample = sample_group_completions(
        model, prompts, 64, max_new_tokens=1, top_p=0.05, generator=torch.Generator()
    )
    with torch.no_grad():
        logits = model(prompts.input_ids).logits[0, -1]
    probs = torch.softmax(logits, -1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    allowed = set(order[before < 0.05].tolist())
    assert set(sample.tokens[:, 0].tolist()) <= allowed


# ----- one step: fused vs teacher-forced, accumulation, checkpointing --------------------


def _one_step(tokenizer, **options):
    model = make_model(tokenizer)
    trainer = LMTrainer(model, tokenizer, make_task(), small_config(**options))
    trainer.train_step()
    return trainer


class _GradientRecorder:
    """Stands in for the optimizer: keeps the gradient of the step (an Adam step would
    turn rounding noise of near-zero gradients into differences of size lr)."""

    def __init__(self, parameters):
        self.parameters = list(parameters)
        self.gradient = None

    def step(self):
        self.gradient = torch.cat([p.grad.reshape(-1) for p in self.parameters])

    def zero_grad(self, set_to_none=True):
        for p in self.parameters:
            p.grad = None


def _gradient(tokenizer, **options) -> torch.Tensor:
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config(**options))
    trainer.optimizer = _GradientRecorder(trainer.model.parameters())
    trainer.train_step()
    return trainer.optimizer.gradient


def test_fused_step_equals_teacher_forced_step(tokenizer):
    assert _one_step(tokenizer).fused
    fused = _gradient(tokenizer)
    separate = _gradient(tokenizer, fused_rollout=False)
    torch.testing.assert_close(fused, separate, atol=1e-6, rtol=1e-4)
    accumulated = _gradient(tokenizer, fused_rollout=False, grad_accumulation=2)
    torch.testing.assert_close(accumulated, separate, atol=1e-6, rtol=1e-4)
    assert not _one_step(tokenizer, gradient_checkpointing=True).fused
    checkpointed = _gradient(tokenizer, gradient_checkpointing=True)
    torch.testing.assert_close(checkpointed, separate, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "sequence_sum"])
def test_accumulation_is_exact_for_every_aggregation(tokenizer, aggregation):
    options = {"fused_rollout": False, "aggregation": aggregation, "max_new_tokens": 3}
    one = _gradient(tokenizer, **options)
    three = _gradient(tokenizer, grad_accumulation=3, **options)
    torch.testing.assert_close(one, three, atol=1e-6, rtol=1e-4)


METHODS = [
    "grpo",
    "grpo_no_std",
    "grpo_batch_std",
    "rloo",
    "reinforce",
    "ppo",
    "h_target:log",
    "seed_grpo",
    "seed_grpo:base=grpo",
]


@pytest.mark.parametrize("method", METHODS)
def test_every_estimator_steps_and_changes_weights(tokenizer, method):
    model = make_model(tokenizer)
    before = flat(model).clone()
    trainer = LMTrainer(model, tokenizer, make_task(), small_config(method=method))
    trainer.train_step()
    assert not torch.equal(flat(model), before)
    row = trainer.diagnostics()
    assert row["step"] == 1
    for key in ("reward_mean", "reward_std", "entropy", "grad_norm", "step_time"):
        assert math.isfinite(row[key]), key
    assert math.isfinite(row["value_loss"]) == (method == "ppo")


def test_several_updates_per_rollout_kl_and_entropy(tokenizer):
    trainer = _one_step(
        tokenizer, updates_per_rollout=2, kl_coef=0.1, entropy_coef=0.01, clip_eps=0.01
    )
    assert not trainer.fused
    trainer.train_step()  # the second update reuses the rollout under the ratio
    row = trainer.diagnostics()
    assert row["kl"] > 0 and row["kl_behaviour"] > 0
    assert 0 < row["clip_fraction"] <= 1


def test_rejection_sampling_needs_a_01_reward(tokenizer):
    with pytest.raises(ValueError, match="0/1"):
        _one_step(tokenizer, method="rejection_sampling")


# ----- PPO -------------------------------------------------------------------------------


def _ppo_config(**options) -> LMRLConfig:
    # a random model rarely writes <answer>N</answer>: rewards ~ the constant invalid_reward,
    # which the critic (zero at the start) must learn
    values = {
        "method": "ppo",
        "value_lr": 0.05,
        "lr": 1e-4,
        "answer_format": "tagged",
        "answer_prefix": "<answer>",
        "max_new_tokens": 3,
    }
    return small_config(**{**values, **options})


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_critic_trains_and_gives_gae_advantages(tokenizer, critic):
    model = make_model(tokenizer)
    trainer = LMTrainer(model, tokenizer, make_task(), _ppo_config(critic=critic))
    assert type(trainer.critic) is CRITICS[critic]
    losses = []
    for _ in range(15):
        trainer.train_step()
        losses.append(trainer.diagnostics()["value_loss"])
    assert losses[-1] < 0.2 * losses[0]
    # the registered ppo estimator, given GAE's baselines, returns GAE's advantages
    from bioreason.rl import gae

    rollout = trainer._new_rollout()
    with torch.no_grad():
        sample = teacher_forced(model, rollout.prompts, rollout.tokens, rollout.mask, hidden=True)
        values = trainer._values(rollout.prompts, sample)
    if critic == "shared":
        torch.testing.assert_close(values, trainer.critic.head(sample.hidden))
    last = rollout.mask.sum(1) - 1
    token_rewards = torch.zeros(values.shape, dtype=torch.float64)
    token_rewards[torch.arange(len(last)), last] = rollout.rewards.reshape(-1)
    expected, returns = gae(token_rewards, values.double(), rollout.mask)
    torch.testing.assert_close(rollout.advantages, expected.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.returns, returns.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "teacher_forced"])
def test_separate_critic_value_loss_never_changes_the_policy(tokenizer, fused):
    """Zero policy advantages, no KL or entropy: the value loss alone leaves the policy's
    weights as they were with a separate critic, and moves them with a shared one."""
    moved = {}
    for critic in ("separate", "shared"):
        model = make_model(tokenizer)
        config = _ppo_config(critic=critic, weight_decay=0.0, fused_rollout=fused)
        trainer = LMTrainer(model, tokenizer, make_task(), config)
        assert trainer.fused == fused
        # a zero head passes no gradient to the states it reads: start from a nonzero one
        with torch.no_grad():
            trainer.critic.head.linear.weight.normal_(0.0, 0.5, generator=torch.Generator())
        policy_before = flat(model).clone()
        critic_before = flat(trainer.critic).clone()
        rollout = trainer._new_rollout()
        rollout.advantages = torch.zeros_like(rollout.advantages)
        stats = trainer._update(rollout, first_update=True)
        assert stats["value_loss"] > 0
        assert not torch.equal(flat(trainer.critic), critic_before)  # the critic learns
        moved[critic] = (flat(model) - policy_before).abs().max().item()
    assert moved["separate"] == 0.0
    assert moved["shared"] > 1e-6


def test_separate_critic_is_its_own_network_with_its_own_learning_rate(tokenizer):
    model = make_model(tokenizer)
    trainer = LMTrainer(model, tokenizer, make_task(), _ppo_config(value_lr=3e-3, lr=1e-4))
    critic = trainer.critic
    policy_ids = {id(p) for p in model.parameters()}
    assert not policy_ids & {id(p) for p in critic.parameters()}
    # a copy of the initial trunk: same decoder weights, no vocabulary head
    torch.testing.assert_close(
        critic.trunk.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
    )
    assert critic.trunk.get_output_embeddings().weight.shape == (1, model.config.hidden_size)
    assert not critic.trunk.get_output_embeddings().weight.requires_grad
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-4, 3e-3]
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for p in critic.parameters() if p.requires_grad
    }
    # the shared critic: a value head on the policy's states, no second trunk
    shared = LMTrainer(make_model(tokenizer), tokenizer, make_task(), _ppo_config(critic="shared"))
    assert sum(p.numel() for p in shared.critic.parameters()) == model.config.hidden_size + 1
    # estimators without values have no critic
    assert LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config()).critic is None


def test_fused_ppo_step_equals_teacher_forced_step(tokenizer):
    """The fused step reuses the critic's values with gradients from the rollout."""
    gradients = []
    for fused in (True, False):
        trainer = LMTrainer(
            make_model(tokenizer), tokenizer, make_task(), _ppo_config(fused_rollout=fused)
        )
        parameters = [*trainer.model.parameters(), *trainer._critic_parameters]
        trainer.optimizer = _GradientRecorder(parameters)
        trainer.train_step()
        gradients.append(trainer.optimizer.gradient)
    torch.testing.assert_close(gradients[0], gradients[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_moves_q_exact_toward_p(tokenizer, critic):
    """PPO learns the questions' probabilities with either critic (the RLOO test's task)."""
    p = [0.2, 0.2, 0.8, 0.8]
    task = pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(4)],
            "prompt": [f"readout GENE{i} probability ? perturb PERT{i}" for i in range(4)],
            "p_star": p,
            "split": "train",
        }
    )
    config = small_config(
        method="ppo",
        critic=critic,
        steps=120,
        outcomes="live",
        outcome_sharing="completion",
        group_size=16,
        max_new_tokens=1,
        lr=5e-4,
        value_lr=1e-3,
        eval_split=None,
        checkpoint_every=1000,
    )
    model = make_model(tokenizer, hidden=128)
    source = BernoulliOutcomes(torch.tensor(p))
    trainer = LMTrainer(model, tokenizer, task, config, outcome_source=source)
    before = trainer.predict(np.arange(4))["q_exact"].to_numpy()
    trainer.train(progress=False)
    after = trainer.predict(np.arange(4))["q_exact"].to_numpy()
    assert (np.abs(after - p) < np.abs(before - p)).all(), (before, after)
    assert after[2:].mean() - after[:2].mean() > 0.03


# ----- predictions -----------------------------------------------------------------------


def test_q_exact_is_the_mean_of_the_answer_distribution(tokenizer):
    model = make_model(tokenizer, seed=1)
    config = small_config(max_new_tokens=1, eval_samples=4000, predict_batch_questions=4)
    trainer = LMTrainer(model, tokenizer, make_task(), config)
    rows = np.arange(4)
    frame = trainer.predict(rows, seed=0)
    assert list(frame.columns[:9]) == [
        "question_id",
        "method",
        "seed",
        "step",
        "q_sampled",
        "q_exact",
        "p_star",
        "p_true",
        "outcome",
    ]
    answer_ids = single_token_answer_ids(tokenizer, config.grid)
    grid = config.grid.probabilities()
    for row in rows:
        ids = tokenizer(make_task()["prompt"].iloc[row])["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        answer = probs[answer_ids] / probs[answer_ids].sum()
        assert frame["q_exact"].iloc[row] == pytest.approx(float(answer @ grid), abs=1e-6)
        # q_sampled: mean of 4000 valid-or-not draws; its MC standard error
        valid = int(frame["n_valid"].iloc[row])
        sd = float(((grid - answer @ grid) ** 2 @ answer).sqrt())
        assert abs(frame["q_sampled"].iloc[row] - frame["q_exact"].iloc[row]) < 4 * sd / valid**0.5


def test_q_exact_agrees_with_bioreason_lm():
    lm = pytest.importorskip("bioreason.lm")
    task = make_task()
    tokenizer = lm.build_tokenizer(task["prompt"])
    model = make_model(tokenizer, seed=2)
    config = small_config(answer_format="tagged", answer_prefix="<answer>", max_new_tokens=3)
    trainer = LMTrainer(model, tokenizer, task, config)
    frame = trainer.predict(np.arange(5))
    expected = lm.expected_answer(model, tokenizer, list(task["prompt"].iloc[:5]))
    np.testing.assert_allclose(frame["q_exact"].to_numpy(), expected.numpy(), atol=1e-6)


def test_train_writes_logs_evaluations_and_predictions(tokenizer, tmp_path):
    model = make_model(tokenizer)
    config = small_config(steps=4, eval_every=2, eval_samples=4, eval_split="val")
    trainer = LMTrainer(model, tokenizer, make_task(), config)
    trainer.train(
        log_path=tmp_path / "log.csv",
        eval_log_path=tmp_path / "eval.csv",
        predictions_path=tmp_path / "predictions.parquet",
        progress=False,
    )
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["step"]) == [0, 1, 2, 3, 4]
    for key in ("reward_mean", "zero_std_fraction", "kl", "clip_fraction", "entropy"):
        assert key in log
    evaluations = pd.read_csv(tmp_path / "eval.csv")
    assert list(evaluations["step"]) == [2, 4]
    assert (evaluations["q_source"] == "exact").all()
    for key in ("ece", "brier", "mae_to_reference", "mae_to_reference_p_true"):
        assert evaluations[key].notna().all(), key
    assert evaluations["grpo_predicted_outward"].notna().all()
    assert (evaluations["method_predicted_outward"] == 0).all()  # rloo: unbiased
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(predictions) == 2 * 8 and set(predictions["split"]) == {"val"}


# ----- resume, outcomes, invalid answers ---------------------------------------------------


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "method": "ppo",
            "updates_per_rollout": 2,
            "kl_coef": 0.05,
            "eval_every": 2,
            "eval_split": "val",
        },
        {"method": "ppo", "critic": "shared"},
    ],
    ids=["on_policy", "ppo_offline_kl", "ppo_shared"],
)
def test_interrupted_and_resumed_run_matches_uninterrupted(tokenizer, tmp_path, options):
    task = make_task()
    config = small_config(steps=4, outcomes="live", **options)
    source = BernoulliOutcomes(torch.full((len(task),), 0.4))

    def trainer():
        return LMTrainer(make_model(tokenizer), tokenizer, task, config, outcome_source=source)

    whole = trainer()
    whole.train(progress=False)

    def interrupt(t):
        if t.step == 3:
            raise _Interrupt
        return {}

    first = trainer()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(_Interrupt):
        first.train(checkpoint_path=path, extra_log=interrupt, progress=False)
    resumed = trainer()
    resumed.train(checkpoint_path=path, progress=False, resume=True)
    assert resumed.step == 4
    assert torch.equal(flat(resumed.model), flat(whole.model))
    if whole.critic is not None:
        assert torch.equal(flat(resumed.critic), flat(whole.critic))
    pd.testing.assert_frame_equal(
        pd.DataFrame(resumed.eval_rows_log), pd.DataFrame(whole.eval_rows_log)
    )
    other = small_config(steps=4, outcomes="live", lr=2e-3, **options)
    with pytest.raises(ValueError, match="different config"):
        LMTrainer(make_model(tokenizer), tokenizer, task, other, outcome_source=source).train(
            checkpoint_path=path, progress=False, resume=True
        )


def test_group_shares_its_outcome_and_completion_option(tokenizer):
    task = make_task()
    source = BernoulliOutcomes(torch.full((len(task),), 0.5))
    config = small_config(outcomes="live", group_size=8, questions_per_step=8)
    trainer = LMTrainer(make_model(tokenizer), tokenizer, task, config, outcome_source=source)
    outcomes = trainer._new_rollout().outcomes
    assert (outcomes == outcomes[:, :1]).all()
    config = small_config(
        outcomes="live", outcome_sharing="completion", group_size=8, questions_per_step=8
    )
    trainer = LMTrainer(make_model(tokenizer), tokenizer, task, config, outcome_source=source)
    outcomes = trainer._new_rollout().outcomes
    assert not (outcomes == outcomes[:, :1]).all()
    # the table's outcome is the group's
    trainer = LMTrainer(make_model(tokenizer), tokenizer, task, small_config())
    rollout = trainer._new_rollout()
    expected = torch.as_tensor(task["outcome"].to_numpy())[rollout.questions]
    assert torch.equal(rollout.outcomes, expected[:, None].expand_as(rollout.outcomes))
    with pytest.raises(ValueError, match="further_outcomes"):
        LMTrainer(
            make_model(tokenizer), tokenizer, task, small_config(outcome_sharing="completion")
        )


def test_invalid_answers_are_counted_and_floored(tokenizer):
    config = small_config(
        answer_format="tagged", answer_prefix="<answer>", max_new_tokens=3, invalid_reward=-7.0
    )
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    trainer.train_step()
    rollout = trainer._rollout
    invalid = torch.isnan(rollout.answers)
    assert invalid.any()
    assert trainer.diagnostics()["invalid_rate"] == pytest.approx(float(invalid.double().mean()))
    assert (rollout.rewards[invalid] == -7.0).all()
    assert (rollout.rewards[~invalid] > -7.0).all()


def test_first_integer_parser():
    parsed = parse_first_integer(["<answer> 42 </answer>", "x 7 9", "100 3", "no", "</answer>"])
    assert parsed.probabilities[:2].tolist() == [0.42, 0.07]
    assert parsed.n_invalid == 3


def test_config_errors_name_the_field(tokenizer):
    with pytest.raises(ValueError, match="answer_format"):
        LMRLConfig(answer_format="json")
    with pytest.raises(ValueError, match=r"critic must be one of \['separate', 'shared'\]"):
        LMRLConfig(method="ppo", critic="twin")
    with pytest.raises(ValueError, match=r"kl_estimator='k1'.*cannot be a loss term.*'k2'"):
        LMRLConfig(kl_estimator="k1", kl_coef=0.1)
    with pytest.raises(ValueError, match=r"kl_estimator='k5'.*unknown KL estimator"):
        LMRLConfig(kl_estimator="k5")
    with pytest.raises(ValueError, match="kl_coef must be a finite number >= 0"):
        LMRLConfig(kl_coef=-0.1)
    assert LMRLConfig().kl_estimator == "k2" and LMRLConfig().critic == "separate"
    with pytest.raises(ValueError, match="outcome_sharing"):
        LMRLConfig(outcome_sharing="each")
    with pytest.raises(ValueError, match="grad_accumulation"):
        LMRLConfig(grad_accumulation=9, questions_per_step=8)
    no_p_star = make_task().drop(columns="p_star")
    with pytest.raises(ValueError, match="outcome_source"):
        LMTrainer(make_model(tokenizer), tokenizer, no_p_star, small_config(outcomes="live"))
    missing = make_task().assign(p_star=np.nan)
    with pytest.raises(ValueError, match="no probability in"):
        LMTrainer(make_model(tokenizer), tokenizer, missing, small_config(outcomes="live"))
    with pytest.raises(ValueError, match="train_split"):
        LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config(train_split="x"))


def test_live_outcomes_default_to_bernoulli_draws_from_the_tasks_p_star(tokenizer):
    task = make_task()
    p_star = np.where(np.arange(len(task)) % 2 == 0, 0.2, 0.9)
    task = task.assign(p_star=p_star)
    trainer = LMTrainer(make_model(tokenizer), tokenizer, task, small_config(outcomes="live"))
    rows = torch.as_tensor(trainer.train_rows)
    n = 400
    drawn = torch.stack([trainer._outcomes(rows)[:, 0] for _ in range(n)]).numpy()
    # each training question's outcome rate is p*, within 4 binomial standard errors
    rate = drawn.mean(0)
    expected = p_star[trainer.train_rows]
    assert (np.abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / n)).all()
    # a new draw each time: not the table's one recorded outcome
    assert drawn.std(0).min() > 0


# ----- learning ------------------------------------------------------------------------------


def test_rloo_moves_q_exact_toward_p(tokenizer):
    # hidden 128: at hidden 32 the shared pathway collapses every question onto q = 0.5
    # (entropy -> 0) before the questions separate; lr 5e-4 keeps the entropy up
    p = [0.2, 0.2, 0.8, 0.8]
    task = pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(4)],
            "prompt": [f"readout GENE{i} probability ? perturb PERT{i}" for i in range(4)],
            "p_star": p,
            "split": "train",
        }
    )
    config = small_config(
        steps=120,
        outcomes="live",
        outcome_sharing="completion",
        group_size=16,
        max_new_tokens=1,
        lr=5e-4,
        eval_split=None,
        checkpoint_every=1000,
    )
    model = make_model(tokenizer, hidden=128)
    source = BernoulliOutcomes(torch.tensor(p))
    trainer = LMTrainer(model, tokenizer, task, config, outcome_source=source)
    before = trainer.predict(np.arange(4))["q_exact"].to_numpy()
    trainer.train(progress=False)
    after = trainer.predict(np.arange(4))["q_exact"].to_numpy()
    assert (np.abs(after - p) < np.abs(before - p)).all(), (before, after)
    assert after[2:].mean() - after[:2].mean() > 0.03


# ----- with bioreason.lm and with a BPE tokenizer ------------------------------------------


def test_trains_a_warm_started_bioreason_lm_predictor():
    lm = pytest.importorskip("bioreason.lm")
    task = make_task()
    predictor = lm.load_predictor("tiny", texts=task["prompt"], device="cpu")
    lm.warm_start(predictor, None, list(task["prompt"]), steps=40, batch_size=16, lr=3e-3)
    config = small_config(
        method="grpo", answer_format="tagged", answer_prefix="<answer>", max_new_tokens=4
    )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    trainer.train_step()
    row = trainer.diagnostics()
    assert row["invalid_rate"] < 0.5  # the warm start taught the format
    assert row["completion_length"] <= 4
    frame = trainer.predict(np.arange(6))
    expected = predictor.expected_answer(list(task["prompt"].iloc[:6]))
    np.testing.assert_allclose(frame["q_exact"].to_numpy(), expected.numpy(), atol=1e-6)


def _bpe_tokenizer(texts) -> PreTrainedTokenizerFast:
    from tokenizers import decoders, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def test_multi_token_answers_use_sampled_predictions():
    task = make_task()
    texts = list(task["prompt"]) + [f"<answer>{n}</answer>" for n in range(1, 100, 7)]
    tokenizer = _bpe_tokenizer(texts)
    assert len(tokenizer.encode("</answer>", add_special_tokens=False)) > 1
    model = make_model(tokenizer)
    config = small_config(answer_format="tagged", answer_prefix="<answer>", max_new_tokens=6)
    trainer = LMTrainer(model, tokenizer, task, config)
    assert trainer.answer_token_ids is None and trainer._stop_sequences
    trainer.train_step()
    frame = trainer.predict(np.arange(3))
    assert frame["q_exact"].isna().all()
    row = trainer.evaluate()
    assert row["q_source"] == "sampled"


def test_config_from_dict_and_bf16_autocast_on_cpu(tokenizer):
    config = LMRLConfig.from_dict(
        {"method": "grpo_no_std", "answer_grid": [1, 99, 100], "stop_strings": ["</answer>"]}
    )
    assert config.answer_grid == (1, 99, 100)
    assert LMRLConfig.from_dict(config.to_dict()) == config
    trainer = _one_step(tokenizer, mixed_precision="bf16", method="grpo_no_std")
    assert math.isfinite(trainer.diagnostics()["reward_mean"])


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_fast_forward_trains_the_same_weights_as_the_model_forward(tokenizer, method):
    """LMRLConfig.fast_forward changes the speed of a step, not its result (ragged
    prompts: padding masks; ppo: hidden states for the value head; two updates per
    rollout: the teacher-forced path)."""
    weights = []
    for fast in (True, False):
        config = small_config(
            method=method, steps=3, updates_per_rollout=2, fast_forward=fast, eval_split=None
        )
        trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
        for _ in range(3):
            trainer.train_step()
        critic = [] if trainer.critic is None else [flat(trainer.critic)]
        weights.append(torch.cat([flat(trainer.model), *critic]))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("updates", [1, 2])
def test_compiled_layers_train_the_same_weights_as_the_eager_ones(tokenizer, updates):
    """LMRLConfig.torch_compile (inductor-compiled decoder) changes the speed of a step,
    not its result: the same weights after steps with ragged prompts (padding masks),
    through the sampling pass (one update) or the teacher-forced path (two updates)."""
    weights = []
    for compiled in (True, False):
        config = small_config(
            method="grpo",
            steps=3,
            updates_per_rollout=updates,
            torch_compile=compiled,
            eval_split=None,
        )
        trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
        torch._dynamo.reset()  # compile anew (another test may have compiled these shapes)
        torch._dynamo.utils.counters.clear()
        for _ in range(3):
            trainer.train_step()
        compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (compiled_graphs > 0) == compiled, compiled_graphs  # compiled only when asked
        weights.append(flat(trainer.model))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)
