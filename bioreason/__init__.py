"""bioreason: perturbation VAEs in Pyro, outcome simulators, and RL fine-tuning of
calibrated probability predictors."""

__version__ = "0.1.0"

__all__ = ["__version__"]
