"""The smallest objective the Trainer accepts, for tests of the training loop itself."""

from __future__ import annotations

import torch


class Regression(torch.nn.Module):
    """A one-layer objective: the Trainer's contract (forward(batch) -> named losses, `.model`)."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 1)

    def forward(self, batch):
        return {"mse": torch.nn.functional.mse_loss(self.model(batch["x"]).squeeze(1), batch["y"])}
