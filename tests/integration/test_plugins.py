"""The example plugin (examples/sonar-plugin, installed into the venv by `make venv` as an operator would
install one) and the tabular built-in, end to end: listed by the real CLI, checkpoints saved with
torch.save go through the isolated parser and load into the plugin's module."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.checkpoints import inspect_checkpoint, load_checkpoint
from ckpt_eval.errors import CheckpointError
from ckpt_eval.isolation import CheckpointParser, ParseLimits

CKPT_EVAL = str(Path(sys.executable).parent / "ckpt-eval")


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=20, memory_bytes=512 * 1024**2)) as started:
        yield started


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoints"
    (path / "sonar").mkdir(parents=True)
    return path


def save(root: Path, relative: str, state: dict[str, torch.Tensor]) -> str:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (root / relative).write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def ckpt_eval(*args: str) -> subprocess.CompletedProcess[str]:
    # Neither credentials nor a vault password: listing architectures needs no database.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CKPT_EVAL_", "ANSIBLE_VAULT"))}
    return subprocess.run([CKPT_EVAL, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_example_plugin_is_installed_as_a_regular_package() -> None:
    import ckpt_eval_sonar

    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(ckpt_eval_sonar.__file__).resolve().is_relative_to(site_packages)  # not the source tree


def test_ckpt_eval_architectures_lists_the_plugin_with_its_package_and_version() -> None:
    result = ckpt_eval("architectures")
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("sonar_mlp ")]
    assert row.split()[:5] == ["sonar_mlp", "ckpt-eval-sonar", "1.0.0", "60", "2"]
    assert "(R, M)" in row
    assert row.endswith("ok")
    [builtin] = [line for line in result.stdout.splitlines() if line.startswith("breast_cancer_mlp ")]
    assert builtin.split()[:4] == ["breast_cancer_mlp", "ckpt-eval", builtin.split()[2], "30"]
    listed = json.loads(ckpt_eval("architectures", "--format", "json").stdout)["architectures"]
    [sonar] = [entry for entry in listed if entry["name"] == "sonar_mlp"]
    assert sonar == {
        "name": "sonar_mlp",
        "package": "ckpt-eval-sonar",
        "version": "1.0.0",
        "entry_point": "ckpt_eval_sonar:SONAR_MLP",
        "input_shape": [60],
        "input_dtype": "float32",
        "standardised": False,
        "num_classes": 2,
        "class_names": ["R", "M"],
        "description": "MLP for 60-band sonar returns: rock (R) or mine (M)",
        "status": "ok",
        "error": None,
    }


def test_a_sonar_checkpoint_goes_through_the_isolated_parser_and_loads(parser: CheckpointParser, root: Path) -> None:
    from ckpt_eval_sonar import SonarMLP

    torch.manual_seed(7)
    original = SonarMLP().eval()  # the plugin's own class, as its users train it
    sha = save(root, "sonar/mlp-v1.pt", original.state_dict())
    assert inspect_checkpoint(root, "sonar/mlp-v1.pt", "sonar_mlp", parser).sha256 == sha
    loaded = load_checkpoint(root, "sonar/mlp-v1.pt", "sonar_mlp", sha, parser)
    assert isinstance(loaded.model, SonarMLP)
    assert not loaded.model.training
    inputs = torch.rand(16, 60)
    architecture = get_architecture("sonar_mlp")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(architecture.prepare(inputs)), original(inputs), rtol=0, atol=0)


def test_a_sonar_checkpoint_in_safetensors_loads_too(parser: CheckpointParser, root: Path) -> None:
    torch.manual_seed(8)
    state = {key: value.contiguous() for key, value in build_model("sonar_mlp").state_dict().items()}
    data = save_safetensors(state)
    (root / "sonar" / "mlp-v2.safetensors").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    loaded = load_checkpoint(root, "sonar/mlp-v2.safetensors", "sonar_mlp", sha, parser)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_a_checkpoint_of_another_architecture_does_not_fit_the_plugin(parser: CheckpointParser, root: Path) -> None:
    sha = save(root, "digits.pt", build_model("digits_mlp").state_dict())
    with pytest.raises(CheckpointError, match=r"'digits\.pt' does not fit architecture sonar_mlp: missing key\(s\)"):
        load_checkpoint(root, "digits.pt", "sonar_mlp", sha, parser)
    narrow = build_model("sonar_mlp").state_dict()
    narrow["layers.0.weight"] = torch.zeros(32, 30)  # trained on 30 features, not 60
    sha = save(root, "narrow.pt", narrow)
    with pytest.raises(
        CheckpointError, match=r"'layers\.0\.weight' has shape \(32, 30\), the architecture needs \(32, 60\)"
    ):
        load_checkpoint(root, "narrow.pt", "sonar_mlp", sha, parser)
    sha = save(root, "sonar/ok.pt", build_model("sonar_mlp").state_dict())
    assert load_checkpoint(root, "sonar/ok.pt", "sonar_mlp", sha, parser).sha256 == sha  # the parser still serves


def test_a_breast_cancer_checkpoint_loads_and_standardises_its_inputs(parser: CheckpointParser, root: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    torch.manual_seed(3)
    original = build_model("breast_cancer_mlp").eval()
    sha = save(root, "breast-cancer.pt", original.state_dict())
    loaded = load_checkpoint(root, "breast-cancer.pt", "breast_cancer_mlp", sha, parser)
    architecture = get_architecture("breast_cancer_mlp")
    features = torch.from_numpy(load_breast_cancer().data.astype(np.float32))
    prepared = architecture.prepare(features)
    assert prepared is not features
    assert float(prepared.abs().mean()) < 2  # standardised, not raw areas in the hundreds
    with torch.inference_mode():
        logits = loaded.model(prepared)
        torch.testing.assert_close(logits, original(prepared), rtol=0, atol=0)
    assert logits.shape == (len(features), 2)
