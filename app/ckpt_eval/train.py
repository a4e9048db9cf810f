"""Reproducible training of small checkpoints (demo and test fixtures), on any dataset kind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .architectures import Architecture, get_architecture
from .datasets import ArrayDataset, EvaluationData, check_compatible

TRAIN_READ_BATCH = 65_536  # rows per batch when gathering a streamed dataset's rows


def training_tensors(architecture: Architecture, data: EvaluationData) -> tuple[torch.Tensor, torch.Tensor]:
    """All prepared inputs and labels of ``data`` (training holds them in memory; datasets to train on are small)."""
    if isinstance(data, ArrayDataset):
        return data.prepared(architecture), data.targets
    inputs, labels = [], []
    for batch_inputs, batch_labels in data.batches(TRAIN_READ_BATCH, architecture):
        inputs.append(batch_inputs)
        labels.append(batch_labels)
    if not labels:
        raise ValueError("no samples to train on")
    return torch.cat(inputs), torch.cat(labels)


def train_model(
    arch: str | Architecture,
    data: EvaluationData,
    epochs: int,
    seed: int,
    lr: float = 0.05,
    batch_size: int = 32,
) -> nn.Module:
    """Plain SGD with momentum; the same seed and data give bit-identical weights."""
    architecture = get_architecture(arch) if isinstance(arch, str) else arch
    check_compatible(architecture, data)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one fixed order
    try:
        inputs, labels = training_tensors(architecture, data)
        torch.manual_seed(seed)
        model = architecture.spec.build()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        order_rng = np.random.default_rng(seed)
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(order_rng.permutation(len(labels)))
            for start in range(0, len(labels), batch_size):
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
