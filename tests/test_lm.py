"""bioreason.lm: tokenizer, default model, loading (folders, BPE, chat templates, hub
errors, LoRA), the exact answer distribution and the warm start."""

from __future__ import annotations

import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import bioreason.lm as lm
from bioreason.lm.answer_protocol import AnswerGrid, parse_answers

PROMPTS = [f"perturb PERT{i} readout GENE{j} probability ?" for i in range(40) for j in range(10)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return lm.build_tokenizer(PROMPTS)


@pytest.fixture
def predictor(tokenizer):
    return lm.load_predictor("tiny", tokenizer=tokenizer, device="cpu")


def _logits(model, tokenizer, texts):
    input_ids, mask = lm.encode_prompts(tokenizer, texts)
    with torch.no_grad():
        return model(
            input_ids=input_ids, attention_mask=mask, position_ids=lm.position_ids(mask)
        ).logits


# --- tokenizer ---------------------------------------------------------------------------


def test_tokenizer_ids_answers_and_round_trip(tokenizer, tmp_path):
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token] == [
        "<pad>",
        "<bos>",
        "<eos>",
    ]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3 and tokenizer.padding_side == "left"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("GENE3 <answer>42</answer>.")["input_ids"])
    assert tokens == ["<bos>", "GENE3", "<answer>", "42", "</answer>", "<unk>"]
    ids = lm.answer_token_ids(tokenizer)
    assert ids is not None and len(ids) == 99 == len(set(ids))
    assert [tokenizer.decode([i]) for i in ids[:3]] == ["1", "2", "3"]
    # 2 .. 98 inside a text are single tokens too, whatever the prompts held
    assert len(tokenizer.encode("<answer>57</answer>", add_special_tokens=False)) == 3

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "perturb PERT7 readout GENE9 probability ? <answer>13</answer> novelword"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 2, "left")
    assert lm.answer_token_ids(loaded) == ids
    parsed = parse_answers(
        [loaded.decode(loaded.encode("<answer>13</answer>"), skip_special_tokens=True)]
    )
    assert parsed.probabilities.tolist() == [0.13]


def test_unseen_words_are_unknown_and_min_frequency():
    tokenizer = lm.build_tokenizer(["alpha beta beta", "beta gamma"], min_frequency=2)
    ids = tokenizer("alpha beta gamma delta", add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids[0] == unk and ids[1] != unk and ids[2:] == [unk, unk]
    assert len(tokenizer) == 4 + 2 + 99 + 1  # specials, tags, answers, "beta"
    small = lm.build_tokenizer(["a b c"], AnswerGrid(low=1, high=9, scale=10))
    assert lm.answer_token_ids(small, AnswerGrid(low=1, high=9, scale=10)) is not None
    assert len(small) == 4 + 2 + 9 + 3


def test_build_tokenizer_rejects_bad_input():
    with pytest.raises(TypeError, match="single string"):
        lm.build_tokenizer("perturb A")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        lm.build_tokenizer(["a", 3])
    with pytest.raises(ValueError, match="min_frequency"):
        lm.build_tokenizer(["a"], min_frequency=0)
    with pytest.raises(ValueError, match="max_vocab_size"):
        lm.build_tokenizer(["a"], max_vocab_size=10)


# --- the default model -------------------------------------------------------------------


def test_tiny_model_size_ids_and_seed(tokenizer):
    model = lm.tiny_model(tokenizer)
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_parameters <= 5_000_000
    config = model.config
    assert config.vocab_size == len(tokenizer) and config.tie_word_embeddings
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    state = torch.random.get_rng_state()
    again = lm.tiny_model(tokenizer, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    other = lm.tiny_model(tokenizer, seed=1)
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)
    small = lm.tiny_model(tokenizer, {**lm.load_preset("tiny"), "num_hidden_layers": 1})
    assert small.config.num_hidden_layers == 1


def test_presets_are_checked(tokenizer, tmp_path):
    assert "tiny" in lm.available_presets()
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*tiny"):
        lm.load_preset("huge")
    with pytest.raises(ValueError, match="hidden_sise"):
        lm.load_preset({"hidden_sise": 64})
    with pytest.raises(ValueError, match="come from the tokenizer"):
        lm.load_preset({"vocab_size": 64})
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        lm.load_preset({"hidden_size": 30, "num_attention_heads": 4})
    path = tmp_path / "mine.yaml"
    path.write_text(
        "hidden_size: 32\nintermediate_size: 64\nnum_hidden_layers: 1\nnum_attention_heads: 2\n"
    )
    assert lm.tiny_model(tokenizer, path).config.hidden_size == 32


def test_tiny_needs_a_tokenizer():
    with pytest.raises(ValueError, match="texts="):
        lm.load_predictor("tiny")
    predictor = lm.load_predictor("tiny", texts=PROMPTS[:5], device="cpu")
    assert predictor.answer_token_ids is not None and not predictor.is_lora


# --- saving and loading ------------------------------------------------------------------


def test_save_and_load_predictor_round_trip(tokenizer, tmp_path):
    grid = AnswerGrid(low=1, high=9, scale=10)
    predictor = lm.load_predictor("tiny", tokenizer=tokenizer, grid=grid, device="cpu", seed=3)
    folder = predictor.save(tmp_path / "model")
    loaded = lm.load_predictor(folder, device="cpu")
    assert loaded.grid == grid and loaded.answer_token_ids == predictor.answer_token_ids
    texts = PROMPTS[:3] + ["perturb PERT1 probability ?"]
    assert torch.equal(
        _logits(predictor.model, predictor.tokenizer, texts),
        _logits(loaded.model, loaded.tokenizer, texts),
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        predictor.save(folder)
    predictor.save(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_left_padding_gives_each_prompts_own_distribution(predictor):
    texts = ["perturb PERT1 probability ?", PROMPTS[5], "GENE2 ?"]
    batch = predictor.answer_distribution(texts)
    alone = torch.cat([predictor.answer_distribution([text]) for text in texts])
    assert batch.shape == (3, 99)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-7)
    assert bool((batch.sum(-1) < 1).all())
    normalized = predictor.answer_distribution(texts, normalize=True)
    torch.testing.assert_close(normalized.sum(-1), torch.ones(3, dtype=torch.float64))
    expected = normalized @ predictor.grid.probabilities()
    torch.testing.assert_close(predictor.expected_answer(texts), expected)


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(PROMPTS + ["<answer>5</answer>"] * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def test_bpe_tokenizer_model_loads_and_answers_are_several_tokens(tmp_path):
    tokenizer = _bpe_tokenizer()
    model = lm.tiny_model(tokenizer, {**lm.load_preset("tiny"), "num_hidden_layers": 1})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    predictor = lm.load_predictor(tmp_path, device="cpu")
    assert predictor.answer_token_ids is None
    assert len(predictor.tokenizer.encode("<answer>42", add_special_tokens=False)) > 2
    with pytest.raises(ValueError, match="not single tokens"):
        predictor.answer_distribution(PROMPTS[:2])
    history = lm.warm_start(predictor, None, PROMPTS, steps=3, batch_size=4)
    assert len(history) == 3 and all(row["loss"] > 0 for row in history)
    completions = predictor.sample(PROMPTS[:2], num_samples=2, max_new_tokens=4, seed=0)
    assert [len(row) for row in completions] == [2, 2]


def test_chat_template_formats_prompts(tokenizer, tmp_path):
    chat = lm.build_tokenizer(PROMPTS)
    chat.chat_template = CHAT_TEMPLATE
    question = PROMPTS[0]
    formatted = lm.format_prompt(chat, question)
    assert formatted == f"<user> {question} <assistant> "
    assert lm.format_prompt(chat, formatted) == formatted  # idempotent
    opened = lm.format_prompt(chat, question, open_answer=True)
    assert opened == formatted + "<answer>" == lm.format_prompt(chat, opened, open_answer=True)
    # chat prompts carry their own markup: no <bos> added
    assert lm.encode_prompts(chat, [formatted])[0][0, 0] != chat.bos_token_id
    # plain prompts: the question itself, " <answer>" when opened, <bos> first
    assert lm.format_prompt(tokenizer, question) == question
    assert lm.format_prompt(tokenizer, question, open_answer=True) == question + " <answer>"
    assert lm.encode_prompts(tokenizer, [question])[0][0, 0] == tokenizer.bos_token_id

    predictor = lm.load_predictor("tiny", tokenizer=chat, device="cpu")
    predictor.save(tmp_path / "chat")
    loaded = lm.load_predictor(tmp_path / "chat", device="cpu")
    assert lm.has_chat_template(loaded.tokenizer)
    assert loaded.format_prompt(question) == formatted
    # the answer position follows the template: same distribution for question and prompt
    torch.testing.assert_close(
        loaded.answer_distribution([question]), loaded.answer_distribution([opened])
    )


def test_missing_models_raise_errors_that_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as caught:
        lm.load_predictor("some-org/not-here", device="cpu")
    message = str(caught.value)
    assert "some-org/not-here" in message and "HF_HUB_OFFLINE" in message
    assert "save_pretrained" in message and "HF_HOME" in message and "local copy" in message
    with pytest.raises(FileNotFoundError, match="no folder"):
        lm.load_predictor(str(tmp_path / "a" / "b"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        lm.load_predictor(tmp_path / "empty", device="cpu")


def test_lora_without_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match=r"bioreason\[lora\]"):
        lm.load_predictor("tiny", texts=PROMPTS[:3], lora={})


def test_lora_adapters_train_save_and_load(tokenizer, tmp_path):
    pytest.importorskip("peft")
    lm.load_predictor("tiny", tokenizer=tokenizer, device="cpu").save(tmp_path / "base")
    predictor = lm.load_predictor(tmp_path / "base", device="cpu", lora={"r": 4})
    assert predictor.is_lora
    frozen = {n: p.clone() for n, p in predictor.model.named_parameters() if not p.requires_grad}
    lm.warm_start(predictor, None, PROMPTS, steps=3, batch_size=4)
    after = dict(predictor.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen.items())
    reference = _logits(predictor.model, predictor.tokenizer, PROMPTS[:2])

    merged = lm.load_predictor(predictor.save(tmp_path / "merged"), device="cpu")
    assert not merged.is_lora
    torch.testing.assert_close(_logits(merged.model, merged.tokenizer, PROMPTS[:2]), reference)
    adapter = lm.load_predictor(predictor.save(tmp_path / "adapter", merge_lora=False))
    assert adapter.is_lora
    torch.testing.assert_close(_logits(adapter.model, adapter.tokenizer, PROMPTS[:2]), reference)


# --- warm start --------------------------------------------------------------------------


def test_warm_start_teaches_a_valid_uniform_answer(predictor):
    before = parse_answers(
        [c for row in predictor.sample(PROMPTS[:50], num_samples=2, seed=1) for c in row]
    )
    history = lm.warm_start(predictor, None, PROMPTS, steps=60, batch_size=16, seed=0)
    assert [row["step"] for row in history] == list(range(1, 61))
    assert history[-1]["loss"] < history[0]["loss"]
    completions = predictor.sample(PROMPTS[::4], num_samples=4, seed=0)
    parsed = parse_answers([c for row in completions for c in row])
    assert parsed.valid.float().mean() >= 0.95 > before.valid.float().mean()
    distribution = predictor.answer_distribution(PROMPTS[::4], normalize=True)
    total_variation = 0.5 * (distribution - 1 / 99).abs().sum(-1)
    assert total_variation.max() < 0.3
    assert predictor.answer_distribution(PROMPTS[::4]).sum(-1).min() > 0.9
    assert not predictor.model.training


def test_warm_start_teaches_the_short_answer_after_an_open_tag(tokenizer):
    model = lm.tiny_model(tokenizer, {**lm.load_preset("tiny"), "num_hidden_layers": 1})
    opened = [lm.format_prompt(tokenizer, p, open_answer=True) for p in PROMPTS]
    lm.warm_start(model, tokenizer, opened, steps=40, batch_size=16)
    completions = lm.sample_completions(model, tokenizer, opened[:20], num_samples=2, seed=0)
    parsed = parse_answers(["<answer>" + c for row in completions for c in row])
    assert parsed.valid.float().mean() >= 0.9


def test_warm_start_rejects_bad_arguments(predictor):
    with pytest.raises(TypeError, match="tokenizer"):
        lm.warm_start(predictor.model, None, PROMPTS)
    with pytest.raises(ValueError, match="steps"):
        lm.warm_start(predictor, None, PROMPTS, steps=0)
    with pytest.raises(ValueError, match="no prompts"):
        lm.warm_start(predictor, None, [])
