"""Architecture registry: the names stored in the registry's ``arch`` column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from .errors import CheckpointError
from .text import quoted


class FashionCNN(nn.Module):
    """The widely used FashionMNIST CNN: same layer indices, so its state dicts load unchanged.

    Keys: layers.0 (Conv2d 1->8), layers.2 (Conv2d 8->16), layers.7 (Linear 3136->256),
    layers.10 (Linear 256->10). Inputs are 1x28x28 scaled to [0, 1], no normalisation.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
            nn.Flatten(),
            nn.Linear(16 * 14 * 14, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)


class DigitsMLP(nn.Module):
    """A small classifier for scikit-learn's 8x8 digits (inputs 1x8x8 scaled to [0, 1])."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)


@dataclass(frozen=True)
class Architecture:
    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("fashion_cnn", FashionCNN, (1, 28, 28), 10, "FashionMNIST CNN, 28x28 inputs"),
        Architecture("digits_mlp", DigitsMLP, (1, 8, 8), 10, "two-layer MLP for 8x8 digits"),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(f"unknown architecture {quoted(name, 60)} (known: {known})") from None


def build_model(name: str) -> nn.Module:
    return get_architecture(name).factory()


@lru_cache(maxsize=64)
def state_spec(name: str) -> dict[str, tuple[tuple[int, ...], object]]:
    """The architecture's state-dict layout (key -> shape, dtype), read from a module built without memory."""
    import torch

    with torch.device("meta"):
        model = build_model(name)
    return {key: (tuple(value.shape), value.dtype) for key, value in model.state_dict().items()}
