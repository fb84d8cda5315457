"""Issue 9 before/after evidence: run every listed bad input and classify the outcome.

Run with the code under test first on sys.path (PYTHONPATH=<a git worktree of the old commit> for the old
code; nothing for the main checkout). One line per case:

    case | outcome class | first line of the message (or what was returned)

Classes: clear error / unclear error / silent wrong result / data loss / ok.
A raised error is *clear* when its message names what the case says it must name
(the file, option, argument, column, question...), its innermost frame is in
bioreason (not torch/h5py/json/numpy), and it does not suggest weights_only=False;
otherwise *unclear*. A CLI case is *clear* when the exit code is the wanted one
(1 failure, 2 usage, 130 Ctrl-C), stderr is one line without a traceback, and the
line names the file or option.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import anndata as ad  # noqa: E402
import pandas as pd  # noqa: E402

import bioreason  # noqa: E402

ROOT = Path(bioreason.__file__).resolve().parents[1]
print(f"# bioreason loaded from {bioreason.__file__}", flush=True)

TMP = Path(tempfile.mkdtemp(prefix="issue9_"))
ONLY = set(sys.argv[1:])
ROWS: list[tuple[str, str, str]] = []


def _clean(text: str, n: int = 220) -> str:
    text = str(text).strip()
    line = text.splitlines()[0] if text else ""
    line = line.replace("|", "/")
    return line[:n] + ("..." if len(line) > n else "")


def emit(name: str, klass: str, message: str) -> None:
    ROWS.append((name, klass, message))
    print(f"{name} | {klass} | {_clean(message)}", flush=True)


def _innermost_in_bioreason(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    filename = frames[-1].filename
    return "/bioreason/" in filename and "site-packages" not in filename


def classify_error(err: BaseException, names=(), forbid=("weights_only=False",)) -> str:
    message = f"{type(err).__name__}: {err}"
    low = message.lower()
    named = all(any(alt.lower() in low for alt in group) for group in names)
    forbidden = any(word.lower() in low for word in forbid)
    if named and not forbidden and _innermost_in_bioreason(err):
        return "clear error"
    return "unclear error"


def case(name, fn, *, names=(), judge=None, forbid=("weights_only=False",)):
    """Run fn(); an error is classified by ``names``; a return value by ``judge``
    (a function returning (class, detail)); no judge: any return is a silent wrong result."""
    if ONLY and not any(name.startswith(prefix) for prefix in ONLY):
        return
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = fn()
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, KeyboardInterrupt):
            raise
        emit(name, classify_error(err, names, forbid), f"{type(err).__name__}: {err}")
        return
    if judge is None:
        emit(name, "silent wrong result", f"returned {_clean(repr(value), 120)}")
        return
    try:
        klass, detail = judge(value, caught)
    except Exception as err:  # noqa: BLE001
        klass, detail = "silent wrong result", f"judge failed: {type(err).__name__}: {err}"
    emit(name, klass, detail)


# ======================================================================== fixtures
def toy(labels, counts=None, **obs):
    n = len(labels)
    if counts is None:
        counts = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (n, 1))
    frame = pd.DataFrame({"perturbation": labels, **obs}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=np.asarray(counts, np.float32), obs=frame)


def simulate(**settings):
    from bioreason.data import simulate_screen

    return simulate_screen(**settings)


def tiny_screen(seed=0):
    return simulate(
        n_cells_per_condition=30,
        n_genes=40,
        n_latent=3,
        n_perturbations=5,
        n_combinations=3,
        library_log_mean=6.0,
        seed=seed,
    )


def normalized_copy(screen, target_sum=1e4):
    import scanpy as sc

    adata = screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata


COMMON = dict(batch_size=64, progress=False, device="cpu", seed=3)


def make(adata, n_hidden=16):
    from bioreason.models import SAMSVAE

    SAMSVAE.setup_anndata(adata)
    return SAMSVAE(adata, n_latent=3, n_hidden=n_hidden)


def quiet(fn):
    """Call fn with stdout silenced (progress lines)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


# ======================================================================== data loss
def demo_replaces_users_screen():
    import bioreason.cli as cli
    import bioreason.pipelines.demo as demo

    out = TMP / "demo_D"
    screen = out / "screen" / "screen.h5ad"
    screen.parent.mkdir(parents=True)
    screen.write_bytes(b"the user's own screen")

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached("the demo went on to its vae stage")

    old_stage, old_screen = demo._vae_stage, dict(demo.DEMO_SCREEN)
    demo._vae_stage = stop
    demo.DEMO_SCREEN.update(n_cells_per_condition=5, n_genes=20)
    import contextlib
    import io

    err_buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(["demo", "--out", str(out)])
            except Reached:
                rc = "reached vae stage"
    finally:
        demo._vae_stage = old_stage
        demo.DEMO_SCREEN.clear()
        demo.DEMO_SCREEN.update(old_screen)
    kept = screen.read_bytes() == b"the user's own screen"
    line = err_buf.getvalue().strip().splitlines()
    line = line[0] if line else ""
    if not kept:
        return "data loss", f"rc {rc}; the user's screen.h5ad was replaced by a simulated one"
    ok = rc == 1 and str(screen) in line and "--force" in line
    return ("clear error" if ok else "unclear error"), f"rc {rc}; kept; stderr: {line}"


def demo_replaces_users_model_folder():
    import bioreason.pipelines.demo as demo
    from bioreason.data import PerturbationData, split_heldout_combinations
    from bioreason.models import SAMSVAE

    out = TMP / "demo_M"
    mine = out / "vae" / "model" / "model.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own model")

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached("evaluation reached")

    adata = tiny_screen()
    screen_path = TMP / "demo_M_screen.h5ad"
    adata.write_h5ad(screen_path)
    split = split_heldout_combinations(PerturbationData.from_anndata(adata), fraction=0.34, seed=0)
    old_train, old_iwelbo = SAMSVAE.train, SAMSVAE.iwelbo
    SAMSVAE.train = lambda self, *a, **k: None
    SAMSVAE.iwelbo = stop
    try:
        try:
            quiet(lambda: demo._vae_stage(out, adata, screen_path, split, seed=0))
            outcome = "returned"
        except Reached:
            outcome = "went on to evaluation"
        except Exception as err:  # noqa: BLE001
            kept = mine.read_bytes() == b"the user's own model"
            klass = classify_error(err, [[str(mine.parent)]]) if kept else "data loss"
            return klass, f"{type(err).__name__}: {err}"
    finally:
        SAMSVAE.train, SAMSVAE.iwelbo = old_train, old_iwelbo
    if mine.read_bytes() != b"the user's own model":
        return "data loss", f"{outcome}; the user's vae/model/model.pt was replaced"
    return "ok", outcome


def run_pair(name, fn):
    if ONLY and not any(name.startswith(prefix) for prefix in ONLY):
        return
    try:
        klass, detail = fn()
    except BaseException as err:  # noqa: BLE001
        klass, detail = "unclear error", f"{type(err).__name__}: {err}"
    emit(name, klass, detail)


run_pair(
    "D1 demo --out D replaces D/screen/screen.h5ad it did not write", demo_replaces_users_screen
)
run_pair(
    "D2 demo vae stage replaces D/vae/model it did not write", demo_replaces_users_model_folder
)


# ======================================================================== silent wrong results
SMALL = simulate(n_cells_per_condition=20, n_genes=60, n_perturbations=6, seed=3)


def recover_judge(truth):
    def judge(value, caught):
        recovered, report = value
        got = recovered.layers["counts"]
        got = got.toarray() if hasattr(got, "toarray") else np.asarray(got)
        want = truth.toarray() if hasattr(truth, "toarray") else np.asarray(truth)
        nan_cells = int(np.isnan(got).any(1).sum())
        wrong = int((~np.isclose(got, want)).any(1).sum())
        warned = [str(w.message) for w in caught]
        return (
            "silent wrong result",
            f"returned: {nan_cells} cells NaN, {wrong} of {got.shape[0]} cells differ from the "
            f"true counts; n_cells_over_tolerance={getattr(report, 'n_cells_over_tolerance', '?')}"
            f", n_cells_rescaled={getattr(report, 'n_cells_rescaled', '?')}; warnings={len(warned)}",
        )

    return judge


def s1():
    from bioreason.data import recover_counts

    adata = normalized_copy(SMALL)
    library = adata.obs["ncounts"].to_numpy().copy()
    library[[3, 10, 20, 30, 40]] = np.nan
    adata.obs["ncounts"] = library
    return recover_counts(adata)


case(
    "S1 recover_counts: NaN obs['ncounts'] for 5 cells",
    s1,
    names=[["ncounts"]],
    judge=recover_judge(SMALL.layers["counts"]),
)


def s2():
    from bioreason.data import recover_counts

    adata = normalized_copy(SMALL)
    library = adata.obs["ncounts"].to_numpy().copy()
    library[[1, 2]] *= 3
    library[5] *= 1.37
    library[7] /= 3
    adata.obs["ncounts"] = library
    return recover_counts(adata)


case(
    "S2 recover_counts: wrong library sizes for 4 cells",
    s2,
    names=[["ncounts"]],
    judge=recover_judge(SMALL.layers["counts"]),
)


def dosage_judge(value, caught):
    dense = value.dosage.toarray()
    return "silent wrong result", (
        f"parsed: perturbations {value.perturbation_names}, dosage rows {dense.tolist()}"
    )


def s3():
    from bioreason.data import PerturbationData

    return PerturbationData.from_anndata(toy(["control", "A", "A+A"]), layer=None)


case("S3 label 'A+A' (repeated perturbation)", s3, names=[["'c2'", "A+A"]], judge=dosage_judge)


def s3b():
    from bioreason.data import parse_perturbation_labels

    return parse_perturbation_labels(["control", "A", "A+A"])


def parsed_judge(value, caught):
    dense = value.dosage.toarray() if hasattr(value.dosage, "toarray") else value.dosage
    return (
        "silent wrong result",
        f"parsed: names {value.perturbation_names}, dosage {np.asarray(dense).tolist()}",
    )


case(
    "S3b parse_perturbation_labels(['control','A','A+A'])", s3b, names=[["A+A"]], judge=parsed_judge
)


def s4():
    from bioreason.data import PerturbationData

    adata = toy(["control", "A+B"], dose=["1", -2.0])
    return PerturbationData.from_anndata(adata, layer=None, dosage_key="dose")


case("S4 negative dose -2 in obs['dose']", s4, names=[["dose"], ["c1"]], judge=dosage_judge)


def s4b():
    from bioreason.data import PerturbationData

    adata = toy(["control", "A+B"], dose=["1", "1+-1"])
    return PerturbationData.from_anndata(adata, layer=None, dosage_key="dose")


case("S4b dose '1+-1' (negative part)", s4b, names=[["dose"], ["c1"]], judge=dosage_judge)


def number_judge(value, caught):
    return "silent wrong result", f"returned {value!r}"


from bioreason.calibration import METRICS, REFERENCE_METRICS  # noqa: E402

for metric in sorted(METRICS):
    case(
        f"S5 {metric}: probs (5, 2) against 10 outcomes",
        lambda metric=metric: METRICS[metric](np.array([0, 1] * 5, float), np.full((5, 2), 0.3)),
        names=[["probs"], ["(5, 2)", "1-d", "shape"]],
        judge=number_judge,
    )

from bioreason.calibration import sharpness  # noqa: E402

REF_CASES = {
    "NaN": ([0.2, np.nan], [0.3, 0.4]),
    "empty": ([], []),
    "out of range (1.5)": ([0.2, 1.5], [0.3, 0.4]),
}
for metric in sorted(REFERENCE_METRICS):
    for label, (probs, ref) in REF_CASES.items():
        case(
            f"S6 {metric}: {label}",
            lambda metric=metric, probs=probs, ref=ref: REFERENCE_METRICS[metric](
                np.asarray(probs, float), np.asarray(ref, float)
            ),
            names=[[metric, REFERENCE_METRICS[metric].__name__], ["probs", "p_star", "reference"]],
            judge=number_judge,
        )
for label, probs in {"NaN": [0.2, np.nan], "empty": [], "out of range (1.2)": [1.2, 0.3]}.items():
    case(
        f"S6 sharpness: {label}",
        lambda probs=probs: sharpness(np.asarray(probs, float)),
        names=[["sharpness"], ["probs"]],
        judge=number_judge,
    )

from bioreason.rl.advantages import ADVANTAGES, get_advantage, ppo, rejection_sampling  # noqa: E402


def _inputs(name, rewards):
    meta = ADVANTAGES.metadata(name)
    n = rewards.shape[0]
    kwargs = {}
    if meta.get("requires_values"):
        kwargs["values"] = torch.zeros(n, 1, dtype=torch.float64)
    if meta.get("requires_answers"):
        kwargs["answers"] = torch.full(rewards.shape, 0.5, dtype=torch.float64)
    if meta.get("requires_log_probs"):
        kwargs["log_probs"] = torch.full(rewards.shape, -1.0, dtype=torch.float64)
    return kwargs


def _binary(n_questions=4, group_size=5):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n_questions, group_size, generator=g) < 0.5).to(torch.float64)


def advantage_judge(value, caught):
    value = torch.as_tensor(value)
    bad = int((~torch.isfinite(value)).sum())
    rows = sorted({int(i) for i in torch.nonzero(~torch.isfinite(value))[:, 0]}) if bad else []
    if bad:
        return "silent wrong result", (
            f"returned {bad} of {value.numel()} advantages non-finite (questions {rows})"
        )
    return "silent wrong result", "returned finite advantages; the bad reward passed unnoticed"


def _names_before():
    return sorted(ADVANTAGES)


for est in _names_before():

    def run(est=est):
        rewards = _binary()
        rewards[2, 3] = float("nan")
        return get_advantage(est)(rewards, **_inputs(est, rewards))

    case(
        f"S7 advantage '{est}': one NaN reward (question 2)",
        run,
        names=[["question 2"]],
        judge=advantage_judge,
    )


def s7_inf():
    rewards = _binary()
    rewards[2, 3] = float("inf")
    return get_advantage("grpo")(rewards)


case(
    "S7b advantage 'grpo': one inf reward (question 2)",
    s7_inf,
    names=[["question 2"]],
    judge=advantage_judge,
)


def s8():
    values = torch.zeros(4, 1, dtype=torch.float64)
    values[3, 0] = float("nan")
    return ppo(_binary(), values=values)


case(
    "S8 ppo: NaN value for question 3",
    s8,
    names=[["values"], ["question 3"]],
    judge=advantage_judge,
)


def s9():
    rewards = _binary()
    rewards[1, 2] = 0.5
    return rejection_sampling(rewards)


def rs_judge(value, caught):
    return (
        "silent wrong result",
        f"returned advantages {torch.as_tensor(value)[1].tolist()} for the 0.5 reward's question",
    )


case(
    "S9 rejection_sampling: reward 0.5 (not 0/1)",
    s9,
    names=[["0/1", "binary", "0 or 1"]],
    judge=rs_judge,
)


# ---------------------------------------------------------------- checkpoints (VAE)
SCREEN = tiny_screen()


def history_judge(value, caught, what=""):
    steps = len(value) if value is not None else "?"
    return "silent wrong result", f"trained ({steps} history rows){what}"


def s10():
    model = make(SCREEN.copy())
    folder = TMP / "ckpt_missing" / "chekpoints"
    return quiet(lambda: model.train(max_steps=2, checkpoint_dir=folder, resume=True, **COMMON))


case(
    "S10 train(resume=True) with a misspelled checkpoint folder",
    s10,
    names=[["chekpoints"]],
    judge=lambda v, c: history_judge(v, c, ", started from scratch"),
)


def s11():
    model = make(SCREEN.copy())
    folder = TMP / "ckpt_alone"
    quiet(lambda: model.train(max_steps=3, checkpoint_dir=folder, **COMMON))
    return folder


def s11_judge(folder, caught):
    if (folder / "checkpoint.pt").exists():
        return "ok", "checkpoint.pt written"
    return "silent wrong result", f"returned; nothing written in {folder.name}/"


case(
    "S11 train(checkpoint_dir=...) without checkpoint_every",
    s11,
    names=[["checkpoint_every"]],
    judge=s11_judge,
)


def _first_run(folder):
    first = make(SCREEN.copy())
    quiet(lambda: first.train(max_steps=2, checkpoint_dir=folder, checkpoint_every=1, **COMMON))


def resume_case(tag, *, adata=None, n_hidden=16, **change):
    folder = TMP / f"ckpt_{tag}"
    _first_run(folder)
    second = make((adata if adata is not None else SCREEN).copy(), n_hidden=n_hidden)
    settings = {**COMMON, **change}
    return quiet(lambda: second.train(max_steps=4, checkpoint_dir=folder, resume=True, **settings))


resumed = lambda v, c: history_judge(v, c, ", resumed from the other run's checkpoint")  # noqa: E731
case(
    "S12 resume a checkpoint of other data",
    lambda: resume_case("data", adata=tiny_screen(seed=1)),
    names=[["checkpoint.pt"], ["data"]],
    judge=resumed,
)
case(
    "S13 resume a checkpoint of another batch size (32 vs 64)",
    lambda: resume_case("batch", batch_size=32),
    names=[["checkpoint.pt"], ["batch_size"]],
    judge=resumed,
)
case(
    "S14 resume a checkpoint of another architecture (n_hidden 8 vs 16)",
    lambda: resume_case("arch", n_hidden=8),
    names=[["checkpoint.pt"], ["n_hidden"]],
    judge=resumed,
)


def s15_rl():
    from bioreason.rl.tabular import TabularPolicy, TabularRLConfig, TabularTrainer

    grid = torch.arange(1, 100, dtype=torch.float64) / 100

    def trainer(outcome_seed):
        settings = dict(method="grpo", group_size=2, steps=5, checkpoint_every=2, log_every=2)
        categories = torch.arange(12) % 3
        g = torch.Generator().manual_seed(outcome_seed)
        outcomes = (torch.rand(12, generator=g) < 0.5).long()
        return TabularTrainer(
            TabularPolicy(3, grid), categories, outcomes, TabularRLConfig(**settings)
        )

    path = TMP / "rl_ckpt" / "checkpoint.pt"
    trainer(0).train(checkpoint_path=path, progress=False)
    second = trainer(5)
    return second.train(checkpoint_path=path, progress=False)


case(
    "S15 RL trainer: checkpoint of other outcomes (neighbour)",
    s15_rl,
    names=[["checkpoint.pt"], ["outcomes"]],
    judge=lambda v, c: ("silent wrong result", f"resumed: {v}"),
)


# ======================================================================== unclear errors
def empty_cells_screen():
    adata = tiny_screen()
    counts = (
        adata.layers["counts"].toarray()
        if hasattr(adata.layers["counts"], "toarray")
        else np.asarray(adata.layers["counts"])
    )
    counts = counts.copy()
    counts[::20] = 0
    adata.layers["counts"] = counts.astype(np.float32)
    adata.X = counts.astype(np.float32)
    return adata, int((counts.sum(1) == 0).sum())


def u1():
    adata, n_empty = empty_cells_screen()
    model = make(adata)
    return quiet(lambda: model.train(max_steps=3, **COMMON))


def trained_judge(value, caught):
    loss = value.iloc[:, :].select_dtypes("number")
    finite = bool(np.isfinite(loss.to_numpy()).all())
    return ("silent wrong result" if not finite else "ok"), f"trained; history finite={finite}"


EMPTY = [["have no counts", "cells without counts", "cells with no counts"]]
case("U1 cells with zero total counts (every 20th cell)", u1, names=EMPTY, judge=trained_judge)


def u2():
    from bioreason.models import SAMSVAE

    counts = np.array([[0], [3], [0], [0], [1], [0]] * 5, np.float32)
    adata = toy(["control", "control", "A", "A", "A", "control"] * 5, counts)
    adata.layers["counts"] = adata.X.copy()
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=2, n_hidden=8)
    return quiet(lambda: model.train(max_steps=3, **{**COMMON, "batch_size": 8}))


case("U2 one-gene AnnData, 20 of 30 cells empty", u2, names=EMPTY, judge=trained_judge)


def u3():
    from bioreason.data import PerturbationData

    return PerturbationData.from_anndata(toy(["control", "A"])[:, []].copy(), layer=None)


case(
    "U3 zero genes",
    u3,
    names=[["no genes", "0 genes", "zero genes"]],
    judge=lambda v, c: ("silent wrong result", f"parsed {v.n_cells} cells x {v.n_genes} genes"),
)


def u4():
    from bioreason.data import PerturbationData

    return PerturbationData.from_anndata(
        toy(["control", "control", "ctrl"]), layer=None, control=["control", "ctrl"]
    )


case(
    "U4 only control cells",
    u4,
    names=[["no perturbed", "only control", "every label"]],
    judge=lambda v, c: ("silent wrong result", f"parsed; dosage shape {v.dosage.shape}"),
)


def u5():
    from bioreason.data import PerturbationData

    return PerturbationData.from_anndata(toy([0, 0, 1, 2, 1]), layer=None, control=0)


def u5_judge(value, caught):
    names = list(value.perturbation_names)
    control = np.asarray(value.is_control).tolist()
    ok = names == ["1", "2"] and control == [True, True, False, False, False]
    return (
        "ok" if ok else "silent wrong result"
    ), f"parsed: perturbations {names}, is_control {control}"


case("U5 integer labels with control=0", u5, names=[["control"]], judge=u5_judge)


def u5b():
    from bioreason.data import PerturbationData

    return PerturbationData.from_anndata(toy([0, 0, 1, 2, 1]), layer=None, control="0")


case("U5b integer labels with control='0'", u5b, names=[["control"]], judge=u5_judge)

MODEL = make(SCREEN.copy())


def gen_judge(value, caught):
    return "silent wrong result", f"returned {getattr(value, 'n_obs', '?')} cells"


case(
    "U6 model.sample([])",
    lambda: MODEL.sample([]),
    names=[["no conditions", "empty", "at least one"]],
    judge=gen_judge,
)
case(
    "U7 model.sample(['P0'], n_cells=2.5)",
    lambda: MODEL.sample(["P0"], n_cells=2.5),
    names=[["n_cells"]],
    judge=gen_judge,
)
case(
    "U8 model.sample(['P0'], n_cells=5, library_size of length 3)",
    lambda: MODEL.sample(["P0"], n_cells=5, library_size=np.full(3, 1e3)),
    names=[["library_size"]],
    judge=gen_judge,
)

from bioreason.calibration import bootstrap_ci, brier_loss  # noqa: E402

case(
    "U9 bootstrap_ci(n_boot=0)",
    lambda: bootstrap_ci(brier_loss, [0.0, 1.0], [0.2, 0.7], n_boot=0),
    names=[["n_boot"]],
    judge=number_judge,
)
case(
    "U10 ppo: values of shape (3, 1) for 4 questions",
    lambda: ppo(_binary(4, 5), values=torch.zeros(3, 1, dtype=torch.float64)),
    names=[["values"], ["shape", "(4, 1)"]],
    judge=advantage_judge,
)


def ppo_broadcast_judge(value, caught):
    return (
        "silent wrong result",
        f"returned shape {tuple(value.shape)}: (5,) broadcast along the group axis",
    )


case(
    "U10b ppo: values of shape (5,) for 4 questions x 5 rollouts",
    lambda: ppo(_binary(4, 5), values=torch.zeros(5, dtype=torch.float64)),
    names=[["values"], ["shape", "(4, 1)"]],
    judge=ppo_broadcast_judge,
)

# ---------------------------------------------------------------- damaged files
SAVED = TMP / "saved_model"
MODEL.save(SAVED)


def damaged(name, content):
    from bioreason.models import SAMSVAE

    folder = TMP / f"damaged_{name}_{abs(hash(str(content))) % 10000}"
    shutil.copytree(SAVED, folder)
    path = folder / name
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    return lambda: SAMSVAE.load(folder), path


def load_judge(value, caught):
    return "silent wrong result", "loaded"


for label, name, content in [
    ("model.pt garbage", "model.pt", b"garbage"),
    ("model.pt truncated", "model.pt", "truncated"),
    ("attributes.json not JSON", "attributes.json", b"{not json"),
    ("config.yaml syntax error", "config.yaml", b"n_hidden: [1,\n"),
]:
    fn, path = damaged(name, content)
    case(f"U11 load: {label}", fn, names=[[str(path)]], judge=load_judge)


def damaged_checkpoint(kind):
    folder = TMP / f"ckpt_damaged_{kind}"
    _first_run(folder)
    path = folder / "checkpoint.pt"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        path.write_bytes(path.read_bytes()[:300])
    model = make(SCREEN.copy())
    return lambda: quiet(
        lambda: model.train(max_steps=4, checkpoint_dir=folder, resume=True, **COMMON)
    ), path


for kind in ("garbage", "truncated"):
    fn, path = damaged_checkpoint(kind)
    case(
        f"U11 resume: checkpoint.pt {kind}",
        fn,
        names=[[str(path)]],
        judge=lambda v, c: ("silent wrong result", "trained"),
    )

# ---------------------------------------------------------------- loaded without AnnData
from bioreason.models import SAMSVAE  # noqa: E402

LOADED = SAMSVAE.load(SAVED)
for label, call, fix in [
    ("training_conditions()", lambda m: m.training_conditions(), ["load(", "adata="]),
    (
        "average_treatment_effect(n_cells=5)",
        lambda m: m.average_treatment_effect(n_cells=5),
        ["perturbations="],
    ),
    (
        "train(max_steps=1)",
        lambda m: quiet(lambda: m.train(max_steps=1, progress=False)),
        ["load("],
    ),
]:
    case(
        f"U12 model loaded without AnnData: {label}",
        lambda call=call: call(LOADED),
        names=[fix],
        forbid=("pass adata=",),
        judge=lambda v, c: ("ok", "returned"),
    )


# ======================================================================== CLI (subprocess)
PY = sys.executable


def cli(args, cwd=TMP, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BIOREASON_DEBUG", None)
    proc = subprocess.run(
        [PY, "-m", "bioreason.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def cli_case(name, args, *, wanted, names, prepare=None):
    if ONLY and not any(name.startswith(prefix) for prefix in ONLY):
        return
    if prepare:
        prepare()
    rc, out, err = cli(args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    tb = "Traceback" in err
    first = (
        (lines[-1] if tb else lines[0])
        if lines
        else out.strip().splitlines()[0]
        if out.strip()
        else ""
    )
    named = all(any(n.lower() in err.lower() for n in group) for group in names)
    clear = rc == wanted and not tb and len(lines) == 1 and named
    emit(
        name,
        "clear error" if clear else "unclear error",
        f"rc {rc} (want {wanted}), traceback {'yes' if tb else 'no'}, {len(lines)} stderr lines: {first}",
    )


TEXT = TMP / "notes.h5ad"
TEXT.write_text("not hdf5\n")
SCREEN.write_h5ad(TMP / "small.h5ad")
TRUNC = TMP / "truncated.h5ad"
TRUNC.write_bytes((TMP / "small.h5ad").read_bytes()[:3000])
BADYAML = TMP / "screen.yaml"
BADYAML.write_text("n_genes: 30\nseed: [1\nn_latent: 4\n")
FOLDER_OUT = TMP / "folder.h5ad"
FOLDER_OUT.mkdir()
SIM = [
    "--n-cells-per-condition",
    "5",
    "--n-genes",
    "30",
    "--n-perturbations",
    "4",
    "--n-combinations",
    "2",
]

cli_case("C1 inspect a text file", ["inspect", str(TEXT)], wanted=1, names=[[str(TEXT)]])
cli_case("C2 inspect a truncated h5ad", ["inspect", str(TRUNC)], wanted=1, names=[[str(TRUNC)]])
cli_case("C3 inspect a directory", ["inspect", str(TMP)], wanted=1, names=[[str(TMP)]])
cli_case(
    "C4 simulate --config with a YAML syntax error",
    ["simulate", "--out", str(TMP / "y.h5ad"), "--config", str(BADYAML)],
    wanted=1,
    names=[[str(BADYAML)], ["line 2"]],
)
cli_case(
    "C5 simulate --seed -1",
    ["simulate", "--out", str(TMP / "s.h5ad"), *SIM, "--seed", "-1"],
    wanted=2,
    names=[["--seed", "seed"]],
)
cli_case(
    "C6 simulate --out an existing folder named x.h5ad",
    ["simulate", "--out", str(FOLDER_OUT), *SIM],
    wanted=1,
    names=[[str(FOLDER_OUT)], ["folder", "directory"]],
)
cli_case(
    "C6b simulate --out an existing folder named x.h5ad --overwrite",
    ["simulate", "--out", str(FOLDER_OUT), *SIM, "--overwrite"],
    wanted=1,
    names=[[str(FOLDER_OUT)], ["folder", "directory"]],
)
cli_case(
    "C6c simulate --out a plain directory",
    ["simulate", "--out", str(TMP), *SIM],
    wanted=2,
    names=[["--out"]],
)


def ctrl_c():
    if ONLY and not any("C7".startswith(p) or p.startswith("C7") for p in ONLY):
        return
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [PY, "-m", "bioreason.cli", "demo", "--out", str(TMP / "demo_ctrlc")],
        cwd=TMP,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.time()
    seen = ""
    while time.time() - start < 240:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if line.startswith("[screen]"):
            time.sleep(2)
            break
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    rc = proc.returncode
    lines = [line for line in err.strip().splitlines() if line.strip()]
    tb = "Traceback" in err
    first = (lines[-1] if tb else lines[0]) if lines else ""
    clear = rc == 130 and not tb and len(lines) == 1
    emit(
        "C7 Ctrl-C during demo (SIGINT while training)",
        "clear error" if clear else "unclear error",
        f"rc {rc} (want 130), traceback {'yes' if tb else 'no'}, {len(lines)} stderr lines: {first}",
    )


ctrl_c()


def methods_twice():
    out = TMP / "cal_twice"
    rc, stdout, err = cli(
        [
            "synthetic-calibration",
            "--out",
            str(out),
            "--methods",
            "grpo",
            "grpo",
            "--steps",
            "2",
            "--n-questions",
            "20",
            "--no-progress",
        ]
    )
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if rc == 0:
        metrics = pd.read_csv(out / "metrics.csv")
        n = int((metrics["method"] == "grpo").sum())
        klass = "silent wrong result" if n > 1 else "ok"
        return klass, f"rc 0; metrics.csv has {n} rows for grpo ({len(metrics)} rows)"
    tb = "Traceback" in err
    first = (lines[-1] if tb else lines[0]) if lines else ""
    clear = rc == 2 and not tb and len(lines) == 1 and "--methods" in err and "grpo" in err
    return (
        "clear error" if clear else "unclear error"
    ), f"rc {rc} (want 2), traceback {'yes' if tb else 'no'}: {first}"


run_pair("S16 synthetic-calibration --methods grpo grpo", methods_twice)


# ======================================================================== newcomer paper cuts
_NORMAN = {}


def norman():
    from bioreason.data import load_dataset

    if "adata" not in _NORMAN:
        _NORMAN["adata"] = load_dataset("norman19")
    return _NORMAN["adata"]


def n1(n_top_genes=2000):
    from bioreason.data import prepare

    return prepare(norman(), n_top_genes=n_top_genes)


def n1_judge(value, caught):
    prepared, data = value
    warned = [_clean(str(w.message), 90) for w in caught if issubclass(w.category, UserWarning)]
    return "ok", f"{prepared.n_vars} genes, {data.n_cells} cells; warnings: {warned[:2]}"


case(
    "N1 documented prepare(adata, n_top_genes=2000) on Norman (load_dataset('norman19'))",
    n1,
    names=[["n_top_genes", "seurat"]],
    judge=n1_judge,
)
case(
    "N1b prepare(adata, n_top_genes=100) on Norman (fewer than the genes with counts)",
    lambda: n1(100),
    names=[["n_top_genes", "seurat"]],
    judge=n1_judge,
)


def n2_simulate():
    import bioreason.cli as cli_module

    old = os.umask(0o022)
    try:
        out = TMP / "umask" / "screen.h5ad"
        out.parent.mkdir()
        quiet(lambda: cli_module.main(["simulate", "--out", str(out), *SIM]))
        return oct(out.stat().st_mode & 0o777)
    finally:
        os.umask(old)


def mode_judge(mode, caught):
    readable = int(mode, 8) & 0o044 == 0o044
    return ("ok" if readable else "silent wrong result"), f"mode {mode} under umask 022"


case("N2 simulate output file mode under umask 022", n2_simulate, judge=mode_judge)


def n2_save():
    old = os.umask(0o022)
    try:
        folder = TMP / "umask_model"
        MODEL.save(folder)
        return oct((folder / "model.pt").stat().st_mode & 0o777)
    finally:
        os.umask(old)


case("N2b model.save: model.pt mode under umask 022", n2_save, judge=mode_judge)


def n3_doc():
    doc = SAMSVAE.sample.__doc__ or ""
    docs = (ROOT / "docs" / "models.md").read_text()
    in_doc = "per condition" in " ".join(doc.split())
    in_docs = any("n_cells" in p and "per condition" in p for p in docs.split("\n\n"))
    return in_doc, in_docs


case(
    "N3 sample's n_cells said to be per condition (docstring, docs/models.md)",
    n3_doc,
    judge=lambda v, c: (
        "ok" if all(v) else "silent wrong result",
        f"docstring {v[0]}, docs/models.md paragraph {v[1]}",
    ),
)


def n3_controls():
    adata = SCREEN.copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    controls = np.flatnonzero(labels == "control")
    labels[controls[::2]] = "ctrl2"
    adata.obs["perturbation"] = labels
    SAMSVAE.setup_anndata(adata, control=["control", "ctrl2"])
    model = SAMSVAE(adata, n_latent=3, n_hidden=16)
    return model.sample(["ctrl2", "control", "P0"], n_cells=3)


def n3_judge(value, caught):
    got = value.obs["perturbation"].astype(str).tolist()
    want = ["ctrl2"] * 3 + ["control"] * 3 + ["P0"] * 3
    return (
        "ok" if got == want else "silent wrong result"
    ), f"labels {sorted(set(got), key=got.index)} (asked ctrl2, control, P0)"


case(
    "N3b sample(['ctrl2','control','P0']) with two control labels",
    n3_controls,
    names=[["control"]],
    judge=n3_judge,
)


def n4():
    from bioreason.data import PerturbationData

    adata = ad.read_h5ad(ROOT.parent / "shared" / "data" / "perturbench_devel.h5ad")
    adata.layers["counts"] = np.rint(np.expm1(adata.X.toarray()))
    return PerturbationData.from_anndata(adata)


def n4_judge(value, caught):
    hits = [str(w.message) for w in caught if "dataset" in str(w.message)]
    if hits:
        return "ok", f"warned: {_clean(hits[0], 150)}"
    return "silent wrong result", f"parsed {value.n_cells} cells of both experiments, no warning"


case("N4 parse the shared devel file (norman19 + mcfaline23 mixed)", n4, judge=n4_judge)


def n5():
    test = ROOT / "tests" / "test_docs_examples.py"
    return test.exists()


case(
    "N5 README/docs code examples run as tests",
    n5,
    judge=lambda v, c: (
        "ok" if v else "silent wrong result",
        f"tests/test_docs_examples.py exists: {v}",
    ),
)


# ======================================================================== issue 20: new surfaces
# "Bad input on the new surfaces": one row per case, and at the end a table
# (case | rc | message head) to set beside the same table of the old commit:
#     PYTHONPATH=<old worktree> python tools/reliability_cases.py I20
#     python tools/reliability_cases.py I20
# rc is the command's exit status (Python calls: "raised" or "returned"); the message
# head is the first line of stderr (or what was returned / found).
I20_ROWS: list[tuple[str, str, str]] = []
I20 = TMP / "i20"
I20.mkdir()
TINY_PIPELINE = {
    "name": "tiny",
    "data": {
        "screen": {
            "n_cells_per_condition": 30,
            "n_genes": 100,
            "n_perturbations": 6,
            "n_combinations": 4,
        }
    },
    "vae": {
        "options": {"n_latent": 4, "n_hidden": 32},
        "train": {"max_steps": 30, "device": "cpu"},
        "evaluation": {"ate_cells": 100},
    },
    "task": {
        "options": {
            "n_programs": 3,
            "outcome_options": {"threshold": None, "n_cells": 50},
            "test_fraction": 0.3,
            "val_fraction": 0.0,
            "budget": {"max_draws": 200, "target_se": 0.05},
        }
    },
    "lm": {"warm_start_steps": 3},
    "finetune": {
        "methods": ["grpo", "rloo"],
        "rl": {
            "steps": 4,
            "questions_per_step": 4,
            "group_size": 4,
            "lr": 3e-4,
            "outcomes": "live",
            "eval_split": "test",
            "eval_samples": 4,
            "device": "cpu",
        },
    },
    "calibration": {"n_boot": 20},
}


def _i20_selected(name):
    return not ONLY or any(name.startswith(prefix) for prefix in ONLY)


def _head(err, out=""):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if "Traceback" in err and lines:
        return lines[-1]
    if lines:
        return lines[0]
    outs = [line for line in out.strip().splitlines() if line.strip()]
    return outs[-1] if outs else ""


def i20(name, fn):
    """fn() -> (class, rc, message head); an exception is an unclear error of the tool's
    own set-up (its type and message shown)."""
    if not _i20_selected(name):
        return
    try:
        klass, rc, head = fn()
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, KeyboardInterrupt):
            raise
        klass, rc, head = "unclear error", "raised", f"{type(err).__name__}: {err}"
    I20_ROWS.append((name, str(rc), _clean(head, 160)))
    emit(name, klass, f"rc {rc}: {head}")


def i20_cli(args, *, wanted=1, names=(), timeout=300, keep=(), cwd=I20):
    """Run a command; clear when rc is ``wanted``, stderr is one line without a traceback
    naming every group of ``names``, and every file of ``keep`` (path, bytes) is
    unchanged (else data loss)."""
    try:
        rc, out, err = cli(args, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        rc, out, err = "timeout", "", f"still running after {timeout} s (killed)"
    for path, before in keep:
        if not path.exists() or path.read_bytes() != before:
            return "data loss", rc, f"{path.name} replaced or removed; " + _head(err, out)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    named = all(any(n.lower() in err.lower() for n in group) for group in names)
    clear = rc == wanted and "Traceback" not in err and len(lines) == 1 and named
    if rc == "timeout" or (rc == 0 and wanted != 0):  # it went on as if nothing were wrong
        return "silent wrong result", rc, err if rc == "timeout" else _head(err, out)
    return ("clear error" if clear else "unclear error"), rc, _head(err, out)


def _yaml(path, values):
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


def _mine(path, content=b"mine"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return (path, content)


TINY_YAML = _yaml(I20 / "tiny.yaml", TINY_PIPELINE)
_FINISHED = {}


def finished_run():
    """A finished tiny pipeline run (made once), copied to a new folder per case."""
    if "run" not in _FINISHED:
        rc, out, err = cli(["run", str(TINY_YAML), "--out", str(I20 / "finished")], timeout=600)
        if rc != 0:
            raise RuntimeError(f"the tiny run failed: {_head(err, out)}")
        _FINISHED["run"] = I20 / "finished"
    return _FINISHED["run"]


def run_copy(label):
    target = I20 / label
    shutil.copytree(finished_run(), target)
    return target


# -- data loss: nothing a user had is replaced without --force
def _user_record(label, args, timeout=600):
    out = I20 / label
    keep = [_mine(out / "pipeline.json", b'{"my": "notes"}')]
    return i20_cli(
        [a.format(out=out, config=TINY_YAML) for a in args],
        keep=keep,
        names=[["pipeline.json"], ["--force"]],
        timeout=timeout,
    )


i20(
    "I20-D1 run CONFIG --out D with the user's D/pipeline.json",
    lambda: _user_record("d1", ["run", "{config}", "--out", "{out}"]),
)
i20(
    "I20-D2 run CONFIG --out D --only data with the user's D/pipeline.json",
    lambda: _user_record("d2", ["run", "{config}", "--out", "{out}", "--only", "data"]),
)
i20(
    "I20-D3 demo --out D with the user's D/pipeline.json",
    lambda: _user_record("d3", ["demo", "--out", "{out}"], timeout=60),
)


def _task_args(out):
    model = run_copy(f"model_{out.stem}_{len(list(I20.iterdir()))}") / "vae" / "model"
    return [
        "build-task",
        "--model",
        str(model),
        "--readouts",
        "gene00000",
        "--out",
        str(out),
        "--option",
        "threshold=0.1",
        "--max-draws",
        "20",
    ]


def _build_task_sidecar(kind):
    out = I20 / f"t_{kind}.parquet"
    keep = [_mine(I20 / f"t_{kind}.parquet.{kind}.json", b'{"mine": true}')]
    return i20_cli(_task_args(out), keep=keep, names=[[f"{kind}.json"], ["--force"]])


i20(
    "I20-D4 build-task --out t.parquet with the user's t.parquet.summary.json",
    lambda: _build_task_sidecar("summary"),
)
i20(
    "I20-D5 build-task --out t.parquet with the user's t.parquet.manifest.json",
    lambda: _build_task_sidecar("manifest"),
)


def _run_figure():
    out = run_copy("d6")
    shutil.rmtree(out / "calibration")
    keep = [_mine(out / "report_files" / "figure-01.png")]
    return i20_cli(
        ["run", str(TINY_YAML), "--out", str(out)],
        keep=keep,
        names=[["figure-01.png"], ["--force"]],
        timeout=600,
    )


def _report_figure():
    out = run_copy("d7")
    figure = out / "report_files" / "figure-01.png"
    keep = [_mine(figure, figure.read_bytes() + b"edited")]
    return i20_cli(["report", str(out)], keep=keep, names=[["figure-01.png"], ["--force"]])


i20("I20-D6 run --out D with the user's D/report_files/figure-01.png", _run_figure)
i20("I20-D7 report RUN with a figure the user edited in report_files/", _report_figure)


# -- silent wrong results
def _task_table(path, **change):
    from bioreason.data.tasks import TASK_COLUMNS

    rows = []
    for i in range(6):
        for j in range(3):
            rows.append(
                {
                    "question_id": f"P{i}:G{j}",
                    "condition": f"P{i}",
                    "readout": f"G{j}",
                    "outcome_definition": "screen_hit",
                    "prompt": f"perturb P{i} readout G{j} probability ?",
                    "p_star": 0.3,
                    "p_star_se": 0.01,
                    "p_star_spread": 0.0,
                    "p_true": 0.3,
                    "reference_probability": np.nan,
                    "outcome": float((i + j) % 2),
                    "split": "train" if i < 4 else "test",
                }
            )
    frame = pd.DataFrame(rows, columns=TASK_COLUMNS)
    for column, value in change.items():
        if callable(value):
            frame = value(frame)
        else:
            frame[column] = value
    frame.to_parquet(path)
    return path


FT = [
    "--model",
    "tiny",
    "--steps",
    "2",
    "--group-size",
    "2",
    "--questions-per-step",
    "2",
    "--no-progress",
    "--warm-start-steps",
    "0",
]


def _finetune(label, names, *extra, **change):
    task = _task_table(I20 / f"{label}.parquet", **change)
    return i20_cli(
        ["finetune", "--task", str(task), "--out", str(I20 / f"ft_{label}"), *FT, *extra],
        names=names,
    )


i20(
    "I20-S1 finetune on a task with no test rows",
    lambda: _finetune("s1", [["test"]], split="train"),
)
i20(
    "I20-S2 finetune --eval-split nope", lambda: _finetune("s2", [["nope"]], "--eval-split", "nope")
)
i20(
    "I20-S2b finetune --eval-split nope --eval-every 1",
    lambda: _finetune("s2b", [["nope"]], "--eval-split", "nope", "--eval-every", "1"),
)


def _ctrl_c_finetune():
    out = run_copy("s3")
    for name in ("finetune", "calibration"):
        shutil.rmtree(out / name)
    args = [
        PY,
        "-m",
        "bioreason.cli",
        "run",
        str(TINY_YAML),
        "--out",
        str(out),
        "--workers",
        "2",
        "--no-report",
        "--set",
        "finetune.methods=[grpo, rloo, reinforce, grpo_no_std]",
    ]
    proc = subprocess.Popen(
        args,
        cwd=I20,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    jobs = lambda: {p.parent.name for p in (out / "finetune").glob("*/manifest.json")}  # noqa: E731
    start = time.time()
    while not jobs() and proc.poll() is None and time.time() - start < 240:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    started, stop = jobs(), time.time()
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    seconds = time.time() - stop
    late = sorted(jobs() - started)
    rc = proc.returncode
    rerun, _, rerun_err = cli(
        [
            "run",
            str(TINY_YAML),
            "--out",
            str(out),
            "--no-report",
            "--set",
            "finetune.methods=[grpo, rloo, reinforce, grpo_no_std]",
        ],
        timeout=600,
    )
    ok = rc == 130 and seconds < 30 and not late and rerun == 0
    head = (
        f"stopped {seconds:.0f} s after SIGINT; jobs started after it: {late or 'none'}; "
        f"rerun rc {rerun}; {_head(err)}"
    )
    return ("clear error" if ok else "silent wrong result"), rc, head


i20("I20-S3 Ctrl-C during the finetune stage with --workers 2", _ctrl_c_finetune)


def _screen_seed():
    out = run_copy("s4")
    before = (out / "data" / "data.h5ad").read_bytes()
    klass, rc, head = i20_cli(
        ["run", str(TINY_YAML), "--out", str(out), "--no-report", "--set", "data.screen.seed=1"],
        names=[["seed"]],
        timeout=600,
    )
    if rc == 0 and (out / "data" / "data.h5ad").read_bytes() == before:
        return "silent wrong result", rc, "accepted; data.h5ad unchanged (the top-level seed won)"
    return klass, rc, head


i20("I20-S4 --set data.screen.seed=1 (the top-level seed sets it)", _screen_seed)


def _dense(matrix):
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else matrix
    return np.asarray(matrix, dtype=np.float64)


def _absurd_counts():
    adata = SCREEN.copy()
    counts = _dense(adata.layers["counts"])
    counts[0, 0] = 1e30
    adata.layers["counts"] = counts
    model = make(adata)
    history = quiet(lambda: model.train(max_steps=2, **COMMON))
    return history


def _warned_or_raised(value, caught, what):
    words = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if words:
        return "ok", "returned", f"warned: {words[0]}"
    return "silent wrong result", "returned", f"no warning: {what(value)}"


def _python(fn, judge, names=()):
    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = fn()
            except Exception as err:  # noqa: BLE001
                where = ""
                if not _innermost_in_bioreason(err):  # the library below, or this tool
                    frame = traceback.extract_tb(err.__traceback__)[-1]
                    where = f" (in {Path(frame.filename).name}:{frame.lineno})"
                message = f"{type(err).__name__}: {err}{where}"
                return classify_error(err, names), "raised", message
        return judge(value, caught)

    return run


i20(
    "I20-S5 a count of 1e30 in layers['counts']",
    _python(
        _absurd_counts,
        lambda v, c: _warned_or_raised(v, c, lambda h: f"loss {h['train_loss'].iloc[-1]:.3g}"),
        names=[["count"]],
    ),
)


def _simulator(model=None, outcome="screen_hit", **options):
    from bioreason.sim import OutcomeSimulator

    if model is None:
        model = make(SCREEN.copy())  # never trained
    readouts = [] if outcome not in ("screen_hit",) else [str(SCREEN.var_names[0])]
    simulator = OutcomeSimulator(model, outcome, readouts=readouts, **options)
    questions = [("P0", readouts[0])] if readouts else ["P0"]
    return simulator.probability(questions)


def _p_star(value):
    frame = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
    column = "p_star" if "p_star" in frame else frame.columns[-1]
    return float(frame[column].iloc[0]), frame


i20(
    "I20-S6 OutcomeSimulator on an untrained model",
    _python(
        lambda: _simulator(threshold=0.1),
        lambda v, c: _warned_or_raised(v, c, lambda x: f"p* {_p_star(x)[0]:.3f}"),
        names=[["train"]],
    ),
)


def _custom(value):
    from bioreason.sim import register_outcome

    name = f"i20_custom_{len(I20_ROWS)}"
    register_outcome(
        name, lambda perturbed, control: np.full(perturbed.shape[:-2], value), n_cells=10
    )
    return _simulator(MODEL, name)


for label, value in (("0.3", 0.3), ("NaN", np.nan)):
    i20(
        f"I20-S7 a custom outcome that returns {label}",
        _python(
            lambda value=value: _custom(value),
            lambda v, c: ("silent wrong result", "returned", f"p* {_p_star(v)[0]:.3f}"),
            names=[["bool", "boolean"]],
        ),
    )

i20(
    "I20-S8 screen_hit test='welch' with n_cells=1",
    _python(
        lambda: _simulator(MODEL, test="welch", n_cells=1),
        lambda v, c: (
            "silent wrong result",
            "returned",
            f"p* {_p_star(v)[0]:.3f}, SE {_p_star(v)[1].get('p_star_se', [np.nan])[0]}",
        ),
        names=[["n_cells"]],
    ),
)
i20("I20-S9 finetune with null prompts", lambda: _finetune("s9", [["prompt"]], prompt=None))
i20("I20-S9b finetune with empty prompts", lambda: _finetune("s9b", [["prompt"]], prompt=""))
i20(
    "I20-S9c finetune with duplicate question_ids",
    lambda: _finetune("s9c", [["question_id"]], question_id="Q"),
)


def _inspect(label, **change):
    task = _task_table(I20 / f"{label}.parquet", **change)
    rc, out, err = cli(["inspect-task", str(task)])
    return rc, out, err


def _inspect_case(label, words, **change):
    """Clear when inspect-task refuses the table or warns (on stderr) with one of
    ``words``; a silent wrong result when it prints its facts without a word of it."""

    def run():
        rc, out, err = _inspect(label, **change)
        said = any(w in err.lower() for w in words)
        if rc == 0 and not said:
            facts = [line for line in out.splitlines() if "p*" in line or "outcome rate" in line]
            return "silent wrong result", rc, "no word of it: " + "; ".join(facts[:2])
        return ("clear error" if said else "unclear error"), rc, _head(err, out)

    return run


def _nan_p_star(frame):
    frame.loc[0, "p_star"] = np.nan
    return frame


i20("I20-S10 inspect-task: a NaN p*", _inspect_case("s10", ["nan", "missing"], p_star=_nan_p_star))
i20("I20-S10b inspect-task: outcome 2", _inspect_case("s10b", ["outcome"], outcome=2.0))
i20("I20-S10c inspect-task: p* 50", _inspect_case("s10c", ["p_star", "p*"], p_star=50.0))
i20(
    "I20-S10d inspect-task: duplicate question_ids",
    _inspect_case("s10d", ["duplicate"], question_id="Q"),
)


def _empty_config():
    config = I20 / "empty.yaml"
    config.write_text("")
    return i20_cli(
        ["run", str(config), "--out", str(I20 / "empty_run")], names=[["empty"]], timeout=30
    )


i20("I20-S11 an empty pipeline config", _empty_config)


def _report_synthetic():
    out = I20 / "synthetic"
    rc, _, err = cli(
        [
            "synthetic-calibration",
            "--out",
            str(out),
            "--n-questions",
            "12",
            "--n-categories",
            "3",
            "--methods",
            "grpo",
            "rloo",
            "--rl-steps",
            "10",
            "--n-boot",
            "5",
            "--no-progress",
        ]
    )
    if rc != 0:
        return "unclear error", rc, "synthetic-calibration failed: " + _head(err)
    rc, out_text, err = cli(["report", str(out)])
    page = (out / "report.html").read_text() if (out / "report.html").exists() else ""
    if rc == 0 and (
        "records no stages" in page or "metrics.csv" not in page + out_text and "grpo" not in page
    ):
        return "silent wrong result", rc, "an empty report (records no stages)"
    return ("ok" if rc == 0 else "unclear error"), rc, _head(err, out_text)


i20("I20-S12 report on a finished synthetic-calibration folder", _report_synthetic)


# -- unclear errors
def _recompute(label, setting):
    out = run_copy(label)
    return i20_cli(
        ["run", str(TINY_YAML), "--out", str(out), "--no-report", "--set", setting],
        wanted=0,
        timeout=600,
    )


for label, setting in (
    ("u1", "vae.train.max_steps=20"),
    ("u1b", "vae.options.n_latent=3"),
    ("u1c", "data.screen.n_cells_per_condition=20"),
):
    i20(
        f"I20-U1 {setting} on a finished run (docs: recomputes)",
        lambda label=label, setting=setting: (
            lambda r: ("ok" if r[1] == 0 else "unclear error", *r[1:])
        )(_recompute(label, setting)),
    )


def _log2():
    from bioreason.data import recover_counts

    adata = SCREEN.copy()
    counts = _dense(adata.layers.pop("counts"))
    library = counts.sum(axis=1, keepdims=True)
    adata.X = np.log2(1 + counts / library * 1e4)
    adata.obs["ncounts"] = library.ravel()
    recovered, report = recover_counts(adata)
    exact = bool((_dense(recovered.layers["counts"]) == counts).all())
    return exact, getattr(report, "log_base", None)


def _judge_log2(value, caught):
    exact, base = value
    if exact and base == 2:
        return "ok", "returned", "the counts, exactly, and the report names log base 2"
    return "silent wrong result", "returned", f"recovered (exact: {exact}, base: {base})"


i20(
    "I20-U2 recover_counts on log2(1+x) data",
    _python(_log2, _judge_log2, names=[["log2", "base 2"]]),
)
i20(
    "I20-U3 finetune with outcomes 'yes'/'no'",
    lambda: _finetune(
        "u3",
        [["outcome"], ["u3.parquet"]],
        outcome=lambda f: f.assign(outcome=np.where(f.index % 2, "yes", "no")),
    ),
)


def _missing_h5ad():
    config = dict(TINY_PIPELINE, data={"source": "h5ad", "path": str(I20 / "nowhere.h5ad")})
    return i20_cli(
        ["run", str(_yaml(I20 / "u4.yaml", config)), "--out", str(I20 / "u4")],
        names=[["nowhere.h5ad"]],
    )


i20("I20-U4 data.source h5ad with a missing path", _missing_h5ad)


def _build_task_strings(which):
    from bioreason.sim import OutcomeSimulator, build_task

    simulator = OutcomeSimulator(
        MODEL, "screen_hit", readouts=[str(SCREEN.var_names[0])], threshold=0.1
    )
    if which == "conditions":
        return build_task(simulator, "P0+P1", [str(SCREEN.var_names[0])])
    return build_task(simulator, ["P0"], str(SCREEN.var_names[0]))


i20(
    "I20-U5 build_task(conditions='P0+P1') (a string, not a list)",
    _python(
        lambda: _build_task_strings("conditions"),
        lambda v, c: ("silent wrong result", "returned", f"{len(v)} rows"),
        names=[["conditions"], ["list"]],
    ),
)
i20(
    "I20-U5b build_task(readouts='gene00000') (a string, not a list)",
    _python(
        lambda: _build_task_strings("readouts"),
        lambda v, c: ("silent wrong result", "returned", f"{len(v)} rows"),
        names=[["readouts"], ["list"]],
    ),
)
i20(
    "I20-U6 screen_hit threshold='abc'",
    _python(
        lambda: _simulator(MODEL, threshold="abc"),
        lambda v, c: ("silent wrong result", "returned", "p* computed"),
        names=[["threshold"]],
    ),
)
i20(
    "I20-U6b screen_hit test='welch', alpha='abc'",
    _python(
        lambda: _simulator(MODEL, test="welch", alpha="abc"),
        lambda v, c: ("silent wrong result", "returned", "p* computed"),
        names=[["alpha"]],
    ),
)


def _malformed_summary():
    out = run_copy("u7")
    (out / "calibration" / "summary.csv").write_text('garbage,,\n"\n')
    klass, rc, head = i20_cli(["report", str(out)], names=[["summary.csv"], ["malformed"]])
    if rc == 0:
        page = (out / "report.md").read_text()
        said = "summary.csv is missing" in page
        return "unclear error", rc, ("the report says it is missing" if said else head)
    return klass, rc, head


i20("I20-U7 report with a present but malformed calibration/summary.csv", _malformed_summary)


def _history():
    model = make(SCREEN.copy())
    quiet(lambda: model.train(max_steps=2, **COMMON))
    return model.history["elbo_train"]


i20(
    "I20-U8 model.history['elbo_train']",
    _python(_history, lambda v, c: ("ok", "returned", "a column"), names=[["train_loss"]]),
)


def _late(label, setting=None, mine=None):
    out = I20 / label
    keep = [_mine(out / mine, b"<html>mine</html>")] if mine else []
    args = ["run", str(TINY_YAML), "--out", str(out)]
    if setting:
        args += ["--set", setting]
    start = time.time()
    klass, rc, head = i20_cli(args, keep=keep, timeout=600)
    stages = [s for s in ("data", "vae", "task", "warm_start", "finetune") if (out / s).exists()]
    if stages:
        klass = "unclear error"
        head = f"after {time.time() - start:.0f} s and the stages {', '.join(stages)}: {head}"
    return klass, rc, head


i20(
    "I20-U9 lm.model that does not exist (checked before the first stage?)",
    lambda: _late("u9", "lm.model=./no/such/model"),
)
i20(
    "I20-U9b calibration.n_boot=-1 (checked before the first stage?)",
    lambda: _late("u9b", "calibration.n_boot=-1"),
)
i20(
    "I20-U9c the user's own report.html (checked before the first stage?)",
    lambda: _late("u9c", mine="report.html"),
)


# -- file modes
def _modes():
    old = os.umask(0o022)
    try:
        out = I20 / "modes"
        rc, _, err = cli(
            ["finetune", "--task", str(_task_table(I20 / "modes.parquet")), "--out", str(out), *FT]
        )
        modes = {
            p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777)
            for p in out.rglob("*")
            if p.is_file()
        }
    finally:
        os.umask(old)
    private = sorted(name for name, mode in modes.items() if mode != "0o644")
    klass = "ok" if not private else "silent wrong result"
    return klass, rc, f"files not 0644 under umask 022: {private or 'none'} " + _head(err)


i20("I20-F1 finetune output file modes (model.safetensors) under umask 022", _modes)

if I20_ROWS:
    print("\n| case | rc | message head |\n|---|---|---|")
    for name, rc, head in I20_ROWS:
        print(f"| {name} | {rc} | {head} |")

print("# totals:", {k: sum(1 for r in ROWS if r[1] == k) for k in sorted({r[1] for r in ROWS})})
shutil.rmtree(TMP, ignore_errors=True)
