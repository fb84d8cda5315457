"""Imports point one way: the answer protocol is bioreason.lm's and lm never imports rl;
the RL package (its tabular side included) does not import transformers."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_rl_does_not_import_transformers():
    code = (
        "import sys\n"
        "from bioreason.rl import AnswerGrid, LMTrainer, TabularTrainer, run_finetune\n"
        "print('transformers' in sys.modules)\n"
    )
    assert _run(code) == ["False"]


def test_lm_never_imports_rl_and_names_load_on_use():
    code = (
        "import sys\n"
        "import bioreason.lm as lm\n"
        "print('transformers' in sys.modules)\n"
        "import bioreason.lm.supervised, bioreason.lm.predictor, bioreason.lm.answers\n"
        "import bioreason.lm.tokenizer, bioreason.lm.prompts, bioreason.lm.model\n"
        "print(any(name.startswith('bioreason.rl') for name in sys.modules))\n"
        "print(callable(lm.warm_start), lm.AnswerGrid is lm.answer_protocol.AnswerGrid)\n"
        "from bioreason.rl import AnswerGrid, parse_answers\n"
        "print(AnswerGrid is lm.AnswerGrid and parse_answers is lm.parse_answers)\n"
    )
    assert _run(code) == ["False", "False", "True", "True", "True"]


def test_an_unknown_name_of_bioreason_lm_is_an_attribute_error():
    import bioreason.lm

    try:
        bioreason.lm.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:  # pragma: no cover
        raise AssertionError("bioreason.lm.not_a_name did not raise")
    assert "warm_start" in dir(bioreason.lm)
