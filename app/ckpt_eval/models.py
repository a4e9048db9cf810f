"""The built-in architectures, published through ckpt-eval's own entry points like any plugin.

pyproject.toml names each spec below under ``[project.entry-points."ckpt_eval.architectures"]``;
the registry (``architectures.py``) finds them there exactly as it finds a plugin package's.
"""

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


class BreastCancerMLP(nn.Module):
    """A small classifier for scikit-learn's breast_cancer table: 30 standardised features, 2 classes."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(30, 16),
            nn.ReLU(),
            nn.Linear(16, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)


# Per-feature mean and standard deviation (numpy's default, ddof=0) of breast_cancer's train split
# (the samples whose index % 4 != 0), as sklearn.datasets.load_breast_cancer() returns the features.
# Baked in: the preparation belongs to the architecture, and must not move when a dataset does.
BREAST_CANCER_TRAIN_MEAN = (
    14.102910798122076, 19.41119718309858, 91.72037558685457, 649.9478873239435, 0.09562542253521122,
    0.10246084507042257, 0.08484445938967138, 0.04770189436619722, 0.1808171361502348, 0.06248291079812202,
    0.39476173708920176, 1.2152314553990604, 2.7881145539906096, 38.69010328638499, 0.0069958920187793506,
    0.025018112676056355, 0.02996012370892018, 0.011553096244131448, 0.020639079812206577, 0.0036770260563380275,
    16.193370892018777, 25.894154929577457, 106.67084507042259, 867.2223004694835, 0.13164115023474188,
    0.25287657276995323, 0.2651584295774649, 0.11362000234741784, 0.29168497652582176, 0.08363706572769955,
)  # fmt: skip
BREAST_CANCER_TRAIN_STD = (
    3.405368631714433, 4.287452401749677, 23.43820675753948, 333.0609116248018, 0.013645257510248554,
    0.052944918367828234, 0.0758412498904086, 0.03781666715291776, 0.027199705056831888, 0.007035482704077022,
    0.25635823346362047, 0.5333684481658254, 1.8318771544356114, 40.88103819194548, 0.0030541219337908107,
    0.01750416155619646, 0.022552631554609293, 0.005680811632205051, 0.008440243061783639, 0.002368113795602315,
    4.654508103841932, 6.112556949008331, 32.3071589798853, 540.223014890372, 0.02295133086736069,
    0.16235669716133286, 0.2050521718106259, 0.0657563769292849, 0.06411054244217171, 0.018807036281416473,
)  # fmt: skip

FASHION_CNN = ArchitectureSpec(
    "fashion_cnn", FashionCNN, InputSpec((1, 28, 28)), 10, description="FashionMNIST CNN, 28x28 inputs"
)
DIGITS_MLP = ArchitectureSpec(
    "digits_mlp", DigitsMLP, InputSpec((1, 8, 8)), 10, description="two-layer MLP for 8x8 digits"
)
BREAST_CANCER_MLP = ArchitectureSpec(
    "breast_cancer_mlp",
    BreastCancerMLP,
    InputSpec((30,), mean=BREAST_CANCER_TRAIN_MEAN, std=BREAST_CANCER_TRAIN_STD),
    2,
    class_names=("malignant", "benign"),
    description="two-layer MLP for the 30 breast_cancer features",
)
