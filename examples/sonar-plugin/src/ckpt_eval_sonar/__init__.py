"""ckpt-eval-sonar: the ``sonar_mlp`` architecture for ckpt-eval, as an installable plugin.

The UCI "Connectionist Bench (Sonar, Mines vs. Rocks)" data: 60 energies of a sonar return, one per
frequency band, each already in [0, 1], labelled R (rock) or M (mine, a metal cylinder). Class
index 0 is R and 1 is M, the order of ``class_names`` below: a dataset with 'R'/'M' labels maps
onto it by name.
"""

from __future__ import annotations

from torch import nn

from ckpt_eval.architectures import ArchitectureSpec, InputSpec

__version__ = "1.0.0"

N_BANDS = 60


class SonarMLP(nn.Module):
    """60 band energies -> 32 hidden units -> 2 logits (R, M). State dict keys: layers.0, layers.3."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(N_BANDS, 32),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(32, 2),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)


SONAR_MLP = ArchitectureSpec(
    name="sonar_mlp",
    build=SonarMLP,
    # The energies are already in [0, 1]: identity preparation (mean 0, std 1, no copy of the inputs).
    input=InputSpec(shape=(N_BANDS,)),
    num_classes=2,
    class_names=("R", "M"),
    description="MLP for 60-band sonar returns: rock (R) or mine (M)",
)
