"""Run by tests/test_models_distributed.py under ``accelerate launch --multi_gpu``."""

import json
import sys

import torch

from bioreason.data import simulate_screen
from bioreason.models import SAMSVAE
from bioreason.models.distributed import parameter_checksum, train_data_parallel

torch.set_num_threads(1)
out = sys.argv[1]
adata = simulate_screen(
    n_cells_per_condition=40, n_genes=30, n_latent=3, n_perturbations=4, n_combinations=2, seed=0
)
SAMSVAE.setup_anndata(adata)
model = SAMSVAE(adata, n_latent=3, n_hidden=16)
before = parameter_checksum(model.module)
history = train_data_parallel(model, max_steps=6, batch_size=32, lr=1e-2, cpu=True)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
state = {k: v.tolist() for k, v in model.module.state_dict().items()}
with open(f"{out}/rank{rank}.json", "w") as handle:
    json.dump(
        {
            "world": world,
            "before": before,
            "after": parameter_checksum(model.module),
            "losses": history["train_loss"].tolist(),
            "state": state,
        },
        handle,
    )
