"""Seconds per RL step of the LM trainer on issue 11's fixed workload, and a plain
``generate`` baseline in the same run.

The workload: a word-level tokenizer of 159 tokens (``<pad> <bos> <eos> <unk>``,
``perturb readout probability ?``, ``PERT0..PERT39``, ``GENE0..GENE9``, ``<answer>``,
``</answer>``, ``1..99``); a randomly initialised float32 ``LlamaForCausalLM`` (hidden 128,
intermediate 512, 4 layers, 4 heads, seed 0); the 400 prompts
``perturb PERTi readout GENEj probability ?`` with hidden ``p = sigmoid(a_i + b_j)``,
``a, b ~ N(0, 1)``; up to 4 new tokens at temperature 1; reward the log score of
``y ~ Bernoulli(p)`` (one outcome per question, shared by its group) for the first
integer token, ``log(0.01)`` when there is none; 8 questions x 8 completions per step,
GRPO, lr 1e-4, beta 0, one update per rollout; ``torch.set_num_threads(2)``; the mean
step time over steps 5..50.

The baseline is what a plain loop does: ``model.generate`` on the 64 prompt copies (no
gradients), then one training forward over the full sequences and the same loss and
AdamW step. The two loops take turns step by step (each on its own model), so that
both see the same machine load. Prints one ``name: value unit`` line per figure;
``peak_memory`` is the process's peak resident memory (libraries included; with
``--no-baseline`` the trainer's alone; on CUDA the peak allocated GPU memory).
``--ablation`` also runs the trainer with transformers' forward (``fast_forward=False``)
in the same turns and prints what :class:`bioreason.rl.lm.fast.FastLlama` saves.

``--compile`` also times the trainer with ``torch_compile=True`` (its decoder
compiled by ``torch.compile``; the compilation happens in its first step, which the mean
leaves out, and is printed as ``compiled_first_step``).

``--critics`` also times PPO on the workload with each critic
(:data:`bioreason.rl.lm.values.CRITICS`: ``shared``, a value head on the policy's
hidden state; ``separate``, a copy of the trunk with its own forward and backward), in
the same turns, with ``--ppo-updates`` updates per rollout (1: the fused step; more:
teacher-forced updates), and prints the separate critic's extra time.

    python benchmarks/rl_step.py [--steps 50] [--threads 2] [--no-baseline] [--ablation]
        [--compile] [--critics [--ppo-updates 1]]
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bioreason.lm.answer_protocol import AnswerGrid, parse_first_integer
from bioreason.rl import BernoulliOutcomes, LMRLConfig, LMTrainer, get_advantage, policy_loss
from bioreason.rl.rewards import score_answers

N_PERT, N_GENE = 40, 10
QUESTIONS, GROUP, NEW_TOKENS, LR = 8, 8, 4, 1e-4
FLOOR = math.log(0.01)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The workload's 159-token word-level tokenizer (prepends ``<bos>``)."""
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "perturb", "readout", "probability", "?"]
    words += [f"PERT{i}" for i in range(N_PERT)] + [f"GENE{j}" for j in range(N_GENE)]
    words += ["<answer>", "</answer>"] + [str(n) for n in range(1, 100)]
    assert len(words) == 159
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


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """The workload's model: random init with seed 0, float32, eval mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def build_task() -> tuple[pd.DataFrame, torch.Tensor]:
    """The 400 questions and their hidden probabilities ``sigmoid(a_i + b_j)``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(N_PERT, generator=generator, dtype=torch.float64)
    b = torch.randn(N_GENE, generator=generator, dtype=torch.float64)
    p = torch.sigmoid(a[:, None] + b[None, :]).reshape(-1)
    prompts = [
        f"perturb PERT{i} readout GENE{j} probability ?"
        for i in range(N_PERT)
        for j in range(N_GENE)
    ]
    task = pd.DataFrame(
        {
            "question_id": [f"q{k}" for k in range(len(prompts))],
            "prompt": prompts,
            "p_star": p.numpy(),
            "split": "train",
        }
    )
    return task, p


def trainer_step(
    fast_forward: bool = True,
    torch_compile: bool = False,
    method: str = "grpo",
    critic: str = "separate",
    updates_per_rollout: int = 1,
) -> Callable[[], tuple[float, float]]:
    """The LM trainer on the workload: a function that runs one step and returns its
    (seconds, mean reward). ``fast_forward=False``: transformers' own forward instead of
    :class:`bioreason.rl.lm.fast.FastLlama`; ``torch_compile``: its layers compiled;
    ``method``, ``critic`` and ``updates_per_rollout`` as in ``LMRLConfig`` (the
    critic only for ``ppo``)."""
    tokenizer = build_tokenizer()
    task, p = build_task()
    config = LMRLConfig(
        method=method,
        critic=critic,
        group_size=GROUP,
        questions_per_step=QUESTIONS,
        max_new_tokens=NEW_TOKENS,
        temperature=1.0,
        answer_format="first_integer",
        answer_prefix="",
        reward="log",
        invalid_reward=FLOOR,
        lr=LR,
        kl_coef=0.0,
        updates_per_rollout=updates_per_rollout,
        outcomes="live",
        eval_split=None,
        steps=10**9,
        device="cpu",
        fast_forward=fast_forward,
        torch_compile=torch_compile,
        tensorboard=False,
    )
    trainer = LMTrainer(
        build_model(tokenizer), tokenizer, task, config, outcome_source=BernoulliOutcomes(p)
    )

    def step() -> tuple[float, float]:
        trainer.train_step()
        row = trainer.diagnostics()
        return row["step_time"], row["reward_mean"]

    return step


def baseline_step() -> Callable[[], tuple[float, float]]:
    """A plain loop: ``generate`` without gradients, then one training forward over the
    full sequences, the same loss and an AdamW step; returns the step function."""
    tokenizer = build_tokenizer()
    task, p = build_task()
    model = build_model(tokenizer)
    grid = AnswerGrid()
    source = BernoulliOutcomes(p)
    estimator = get_advantage("grpo")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    prompt_ids = torch.tensor(tokenizer(list(task["prompt"]))["input_ids"])
    width = prompt_ids.shape[1]
    order = torch.randperm(len(task), generator=torch.Generator().manual_seed(0))
    eos = tokenizer.eos_token_id
    count = [0]

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        offset = (count[0] * QUESTIONS) % len(task)
        questions = order[offset : offset + QUESTIONS]
        inputs = prompt_ids[questions].repeat_interleave(GROUP, 0)
        with torch.no_grad():
            sequences = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=[eos],
                pad_token_id=tokenizer.pad_token_id,
            )
        completion = sequences[:, width:]
        # valid tokens: up to and including the first EOS
        is_eos = (completion == eos).long()
        mask = (is_eos.cumsum(1) - is_eos) == 0
        texts = tokenizer.batch_decode(
            [row[: int(n)].tolist() for row, n in zip(completion, mask.sum(1))]
        )
        answers = parse_first_integer(texts, grid).probabilities
        outcomes = source.sample(questions, 1, count[0]).expand(QUESTIONS, GROUP).reshape(-1)
        rewards, _ = score_answers(answers, outcomes, "log", FLOOR)
        advantages = estimator(rewards.view(QUESTIONS, GROUP)).reshape(-1, 1).float()
        attention = torch.cat([torch.ones_like(inputs), mask.long()], 1)[:, :-1]
        logits = model(input_ids=sequences[:, :-1], attention_mask=attention).logits
        log_probs = torch.log_softmax(logits[:, width - 1 :].float(), -1)
        log_probs = log_probs.gather(2, completion[..., None])[..., 0].masked_fill(~mask, 0.0)
        loss, _ = policy_loss(log_probs, log_probs.detach(), advantages, mask=mask, clip_eps=0.2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count[0] += 1
        return time.perf_counter() - start, float(rewards.mean())

    return step


def _peak_memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per run (default 50)")
    parser.add_argument("--first", type=int, default=5, help="first timed step (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the generate loop")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time the trainer with transformers' forward (fast_forward=False)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the trainer with torch_compile=True (compiles in its first step)",
    )
    parser.add_argument(
        "--critics",
        action="store_true",
        help="also time PPO with a shared and with a separate critic",
    )
    parser.add_argument(
        "--ppo-updates", type=int, default=1, help="PPO's updates per rollout (default 1)"
    )
    args = parser.parse_args(argv)
    if args.ppo_updates < 1:
        parser.error("--ppo-updates must be >= 1")
    if not 1 <= args.first <= args.steps:
        parser.error("--first must lie in [1, --steps]")
    torch.set_num_threads(args.threads)
    runs = {"trainer": trainer_step()}
    if not args.no_baseline:
        runs["baseline"] = baseline_step()
    if args.ablation:
        runs["model_forward"] = trainer_step(fast_forward=False)
    if args.compile:
        runs["compiled"] = trainer_step(torch_compile=True)
    if args.critics:
        for critic in ("shared", "separate"):
            runs[f"ppo_{critic}"] = trainer_step(
                method="ppo", critic=critic, updates_per_rollout=args.ppo_updates
            )
    times: dict[str, list[float]] = {name: [] for name in runs}
    rewards: dict[str, list[float]] = {name: [] for name in runs}
    # the two loops take turns step by step, so that both see the same machine load
    for _ in range(args.steps):
        for name, step in runs.items():
            seconds, reward = step()
            times[name].append(seconds)
            rewards[name].append(reward)
    step_time = statistics.mean(times["trainer"][args.first - 1 :])
    print(f"step_time: {step_time:.4f} s/step")
    print(f"throughput: {QUESTIONS * GROUP / step_time:.0f} completions/s")
    print(f"peak_memory: {_peak_memory_mb():.0f} MB")
    print(f"reward_mean_first10: {statistics.mean(rewards['trainer'][:10]):.3f}")
    print(f"reward_mean_last10: {statistics.mean(rewards['trainer'][-10:]):.3f}")
    if not args.no_baseline:
        base_time = statistics.mean(times["baseline"][args.first - 1 :])
        print(f"baseline_step_time: {base_time:.4f} s/step")
        print(f"baseline_throughput: {QUESTIONS * GROUP / base_time:.0f} completions/s")
        print(f"baseline_reward_mean_last10: {statistics.mean(rewards['baseline'][-10:]):.3f}")
        print(f"speedup: {base_time / step_time:.2f} x")
    if args.ablation:
        model_time = statistics.mean(times["model_forward"][args.first - 1 :])
        print(f"model_forward_step_time: {model_time:.4f} s/step")
        print(f"fast_forward_saving: {100 * (1 - step_time / model_time):.1f} %")
    if args.compile:
        compiled_time = statistics.mean(times["compiled"][args.first - 1 :])
        print(f"compiled_step_time: {compiled_time:.4f} s/step")
        print(f"compiled_throughput: {QUESTIONS * GROUP / compiled_time:.0f} completions/s")
        print(f"compiled_first_step: {times['compiled'][0]:.1f} s")
        print(f"compiled_reward_mean_last10: {statistics.mean(rewards['compiled'][-10:]):.3f}")
        if not args.no_baseline:
            print(f"compiled_speedup: {base_time / compiled_time:.2f} x")
    if args.critics:
        critic_times = {
            critic: statistics.mean(times[f"ppo_{critic}"][args.first - 1 :])
            for critic in ("shared", "separate")
        }
        for critic, seconds in critic_times.items():
            print(f"ppo_{critic}_step_time: {seconds:.4f} s/step")
            last10 = statistics.mean(rewards[f"ppo_{critic}"][-10:])
            print(f"ppo_{critic}_reward_mean_last10: {last10:.3f}")
        extra = 100 * (critic_times["separate"] / critic_times["shared"] - 1)
        print(f"separate_critic_cost: {extra:+.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
