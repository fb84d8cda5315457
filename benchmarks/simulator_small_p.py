"""p* near 0 and 1 on the brute-force path: the standard error's binomial floor (issue 21).

A one-gene Poisson model whose single-cell outcome P(g0 > 0) is exactly p (0.01 and
0.99) is asked ``--runs`` times (seeds 0..runs-1) with the default budget
(target_se 0.01, 16 draws x 8 replicates per round). For each p it prints the share of
runs that report a standard error of 0, the share whose p* +/- 2 SE covers p, the mean
p* and the draws used, first with the standard error as it is, then (baseline, same run)
with the plain sd_k(P_k) / sqrt(K) that ignores the binomial floor.

    python benchmarks/simulator_small_p.py [--runs 200]
"""

from __future__ import annotations

import argparse
import sys
from unittest import mock

import numpy as np


class _Bernoulli:
    """Every cell expresses g0 with probability p (Poisson rate -log(1 - p))."""

    gene_names = ["g0", "g1"]
    control_label = "control"

    def __init__(self, p: float) -> None:
        self.rate = -np.log1p(-p)

    def posterior_predictive(self, conditions, n_cells=100, n_draws=100, library_size=None, seed=0):
        from bioreason.models import PosteriorPredictive

        conditions = [conditions] if isinstance(conditions, str) else list(conditions)
        rng = np.random.default_rng(seed)
        g0 = rng.poisson(self.rate, size=(n_draws, len(conditions), n_cells))
        counts = np.stack([g0, np.zeros_like(g0)], axis=-1).astype(np.float32)
        return PosteriorPredictive(
            conditions=conditions,
            gene_names=self.gene_names,
            counts=counts,
            expected_counts=counts,
            library_size=counts.sum(-1),
        )


def _measure(p: float, runs: int) -> dict[str, float]:
    from bioreason.sim import OutcomeSimulator, SimulationBudget

    simulator = OutcomeSimulator(
        _Bernoulli(p), "cell_expression", threshold=1.0, budget=SimulationBudget(method="brute")
    )
    rows = [simulator.probability([("A", "g0")], seed=s).iloc[0] for s in range(runs)]
    p_star = np.array([r["p_star"] for r in rows])
    se = np.array([r["p_star_se"] for r in rows])
    return {
        "zero_se_share": float(np.mean(se == 0)),
        "covered_2se_share": float(np.mean(np.abs(p_star - p) <= 2 * se)),
        "mean_pstar": float(p_star.mean()),
        "mean_draws": float(np.mean([r["n_draws"] for r in rows])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    import bioreason.sim.simulator as simulator_module

    plain = simulator_module._standard_error

    def without_floor(total, total_sq, draws, trials_per_draw=None):
        return plain(total, total_sq, draws, None)

    for label, patch in (("floor", None), ("baseline_no_floor", without_floor)):
        for p in (0.01, 0.99):
            if patch is None:
                figures = _measure(p, args.runs)
            else:
                with mock.patch.object(simulator_module, "_standard_error", patch):
                    figures = _measure(p, args.runs)
            for name, value in figures.items():
                unit = "draws" if name == "mean_draws" else "fraction"
                unit = "probability" if name == "mean_pstar" else unit
                print(f"p{p:g}_{label}_{name}: {value:.4f} {unit}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
