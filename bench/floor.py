"""The floor: the forward passes of the same models on the same images, in one warm process.

Run as ``python -m bench.floor`` by the harness; prints one JSON object. Only the forward passes
are timed (after a warm-up batch), with the inputs converted to float once, as fast as this
machine can evaluate the models with plain PyTorch (with the allocator setting ckpt-eval uses):
anything ckpt-eval spends beyond this is overhead. The same process measures attained fp32 matmul
GFLOP/s with the same thread count, and counts the forward pass's FLOPs (conv and linear layers)
so its GFLOP/s can be set against the matmul's.

In the same warm process, on the same models and images, it also times ckpt-eval's own inference
engine: ``evaluate_models`` over groups of ``--group-size`` models (one pass over the data per
group, the exact inference views, the metrics accumulated): the multi-model pass, without the
job's start-up, loading and database work around it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ckpt_eval.allocator import retain_freed_memory
from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.datasets.idx import IDX_DATASETS, load_idx_dataset
from ckpt_eval.evaluate import evaluate_models


def forward_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """Multiply-adds x 2 of conv and linear layers for one forward pass of ``sample``."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * output.numel() * kernel
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return total


def matmul_gflops(size: int, seconds: float = 1.0) -> float:
    """Best attained fp32 GFLOP/s of size x size matmuls over about ``seconds``."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--arch", default="fashion_cnn")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # The same allocator setting as ckpt-eval's: freed activation buffers are kept for the next batch
    # (without it, batches above a few MB fault their buffers in again every time, and the floor
    # would not be the fastest plain PyTorch can do on this machine).
    retain_freed_memory()
    dataset = load_idx_dataset(IDX_DATASETS["fashion_mnist"], args.data_dir)
    inputs = torch.from_numpy(dataset.features.astype(np.float32) / dataset.scale).unsqueeze(1)
    batches = list(torch.split(inputs, args.batch_size))
    models = []
    for path in args.checkpoints:
        model = build_model(args.arch)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        models.append(model.eval())

    with torch.inference_mode():
        models[0](batches[0])  # warm-up: one-off allocations and kernel selection
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        per_model = []
        for model in models:
            model_start = time.perf_counter()
            for batch in batches:
                model(batch)
            per_model.append(time.perf_counter() - model_start)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)

    flops = forward_flops(models[0], inputs[:1]) * len(inputs) * len(models)

    # ckpt-eval's engine on the same models: groups of --group-size, one pass over the data each.
    architecture = get_architecture(args.arch)
    evaluate_models(models[:1], dataset, architecture, args.batch_size)  # warm-up (allocator, views)
    multi_start = time.perf_counter()
    for first in range(0, len(models), args.group_size):
        evaluate_models(models[first : first + args.group_size], dataset, architecture, args.batch_size)
    multi_seconds = time.perf_counter() - multi_start
    print(
        json.dumps(
            {
                "forward_seconds": elapsed,
                "per_model_seconds": per_model,
                "flops": flops,
                "forward_gflops": flops / elapsed / 1e9,
                "multi_seconds": multi_seconds,
                "multi_gflops": flops / multi_seconds / 1e9,
                "group_size": args.group_size,
                "matmul_gflops": matmul_gflops(args.matmul_size),
                "minor_faults": after.ru_minflt - before.ru_minflt,
                "system_seconds": after.ru_stime - before.ru_stime,
                "images": len(inputs),
                "models": len(models),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "interop_threads": torch.get_num_interop_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
