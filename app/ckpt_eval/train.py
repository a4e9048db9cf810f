"""Reproducible training of small checkpoints (demo and test fixtures), on a dataset's train split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .architectures import build_model
from .datasets import Dataset
from .evaluate import check_compatible


def train_model(
    arch: str, dataset: Dataset, epochs: int, seed: int, lr: float = 0.05, batch_size: int = 32
) -> nn.Module:
    """Plain SGD with momentum; the same seed and data give bit-identical weights."""
    check_compatible(arch, dataset)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one fixed order
    try:
        torch.manual_seed(seed)
        model = build_model(arch)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        order_rng = np.random.default_rng(seed)
        inputs = torch.from_numpy(dataset.pixels.astype(np.float32) / dataset.pixel_scale).unsqueeze(1)
        labels = torch.from_numpy(dataset.labels)
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(order_rng.permutation(len(dataset)))
            for start in range(0, len(dataset), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs[index]), labels[index])
                loss.backward()
                optimizer.step()
        model.eval()
        return model
    finally:
        torch.set_num_threads(previous_threads)


def save_checkpoint(model: nn.Module, out: Path) -> None:
    """Save a bare state dict: .safetensors via safetensors, anything else via torch.save."""
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        # Through a buffer: torch.save names the archive after the file, and the same weights
        # should give the same bytes (and sha256) whatever the file is called.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        out.write_bytes(buffer.getvalue())
