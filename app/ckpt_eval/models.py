"""The built-in architectures, published through ckpt-eval's own entry points like any plugin."""

from __future__ import annotations

from torch import nn

from .architectures import ArchitectureSpec, InputSpec


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


FASHION_CNN = ArchitectureSpec(
    "fashion_cnn", FashionCNN, InputSpec((1, 28, 28)), 10, description="FashionMNIST CNN, 28x28 inputs"
)
DIGITS_MLP = ArchitectureSpec(
    "digits_mlp", DigitsMLP, InputSpec((1, 8, 8)), 10, description="two-layer MLP for 8x8 digits"
)
BUILTIN_SPECS = (FASHION_CNN, DIGITS_MLP)
