"""The architecture registry: real entry points of real (throwaway) distributions, found by importlib.metadata.

Each test that needs plugins writes a ``*.dist-info`` (METADATA + entry_points.txt) and the plugin's
module into a fresh directory put on sys.path, exactly what pip leaves in site-packages.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import ckpt_eval
from ckpt_eval import architectures
from ckpt_eval.architectures import (
    Architecture,
    ArchitectureError,
    ArchitectureSpec,
    InputSpec,
    build_model,
    get_architecture,
    installed,
    spec_problems,
    state_spec,
)
from ckpt_eval.checkpoints import load_checkpoint
from ckpt_eval.errors import CheckpointError
from ckpt_eval.isolation import CheckpointParser, ParseLimits, decode_layout, encode_layout

CKPT_EVAL = str(Path(sys.executable).parent / "ckpt-eval")

# A plugin module: a 4-feature, 3-class MLP. {extra} is spliced in at module level.
PLUGIN_SOURCE = """
import torch
from torch import nn
from ckpt_eval.architectures import ArchitectureSpec, InputSpec

{extra}

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x):
        return self.layers(x)

SPEC = ArchitectureSpec({name!r}, Tiny, InputSpec((4,)), 3, ("a", "b", "c"), description="tiny test MLP")
"""


class Site:
    """A directory on sys.path holding throwaway distributions; undone after the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules: list[str] = []

    def distribution(self, package: str, version: str, entry_points: dict[str, str]) -> None:
        info = self.path / f"{package.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{architectures.ENTRY_POINT_GROUP}]\n{lines}")
        architectures.refresh()

    def module(self, name: str, source: str) -> None:
        (self.path / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        architectures.refresh()

    def plugin(self, package: str, module: str, arch: str, *, extra: str = "", version: str = "1.0") -> None:
        """One package publishing one architecture from its own module."""
        self.module(module, PLUGIN_SOURCE.format(name=arch, extra=textwrap.dedent(extra)))
        self.distribution(package, version, {arch: f"{module}:SPEC"})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    place = Site(path)
    architectures.refresh()
    yield place
    monkeypatch.undo()
    for name in place.modules:
        sys.modules.pop(name, None)
    architectures.refresh()


def by_name(name: str) -> list[architectures.ArchitectureInfo]:
    return [info for info in installed() if info.name == name]


def torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- what is installed


def test_the_built_ins_come_from_ckpt_evals_own_entry_points() -> None:
    entries = {info.name: info for info in installed() if info.package == "ckpt-eval"}
    assert set(entries) == {"fashion_cnn", "digits_mlp", "breast_cancer_mlp"}
    for info in entries.values():
        assert info.ok, info.error
        assert info.version == ckpt_eval.__version__
        assert info.target.startswith("ckpt_eval.models:")
    assert get_architecture("fashion_cnn").input_shape == (1, 28, 28)
    assert get_architecture("digits_mlp").input_shape == (1, 8, 8)
    breast = get_architecture("breast_cancer_mlp")
    assert (breast.input_shape, breast.num_classes, breast.class_names) == ((30,), 2, ("malignant", "benign"))
    assert breast.package == "ckpt-eval"


def test_breast_cancer_standardisation_is_the_train_split_mean_and_std() -> None:
    from sklearn.datasets import load_breast_cancer

    features = load_breast_cancer().data
    train = features[np.arange(len(features)) % 4 != 0]
    spec = get_architecture("breast_cancer_mlp").spec.input
    np.testing.assert_allclose(spec.mean, train.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(spec.std, train.std(axis=0), rtol=1e-12, atol=0)
    prepared = get_architecture("breast_cancer_mlp").prepare(torch.from_numpy(train).float())
    np.testing.assert_allclose(prepared.mean(dim=0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(prepared.std(dim=0, unbiased=False).numpy(), 1, atol=1e-4)


def test_the_installed_sonar_example_is_listed_with_its_package_and_version() -> None:
    sonar = get_architecture("sonar_mlp")
    assert (sonar.package, sonar.version) == ("ckpt-eval-sonar", "1.0.0")
    assert (sonar.input_shape, sonar.num_classes, sonar.class_names) == ((60,), 2, ("R", "M"))
    inputs = torch.rand(3, 60)
    assert sonar.prepare(inputs) is inputs  # identity: no copy
    assert [info.status for info in by_name("sonar_mlp")] == ["ok"]
    layout = state_spec("sonar_mlp")
    assert layout["layers.0.weight"] == ((32, 60), torch.float32)
    assert layout["layers.3.weight"] == ((2, 32), torch.float32)


def test_an_unknown_name_lists_what_is_installed() -> None:
    with pytest.raises(
        ArchitectureError, match=r"unknown architecture 'resnet50' \(installed: breast_cancer_mlp, "
    ) as e:
        get_architecture("resnet50")
    assert "sonar_mlp" in str(e.value)
    assert e.value.exit_code == 65
    assert isinstance(e.value, CheckpointError)  # a run that names it fails on its own
    with pytest.raises(ArchitectureError, match=r"unknown architecture '\\x1b\[2Jx'"):
        get_architecture("\x1b[2Jx")


def test_discovery_imports_nothing_and_a_plugin_is_imported_once_when_asked_for(site: Site, tmp_path: Path) -> None:
    counter = tmp_path / "imports"
    extra = f"open({str(counter)!r}, 'a').write('x')"
    site.plugin("lazy-plugin", "lazy_plugin_mod", "lazy_arch", extra=extra)
    site.plugin("other-plugin", "other_plugin_mod", "other_arch")
    assert "lazy_arch" in architectures._published()
    assert "lazy_plugin_mod" not in sys.modules
    first = get_architecture("lazy_arch")
    assert get_architecture("lazy_arch") is first
    assert counter.read_text() == "x"
    assert "other_plugin_mod" not in sys.modules  # only what was asked for
    assert (first.package, first.version, first.class_names) == ("lazy-plugin", "1.0", ("a", "b", "c"))


def test_what_a_plugin_prints_on_import_goes_to_stderr(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.plugin("chatty-plugin", "chatty_plugin_mod", "chatty", extra="print('hello from the plugin')")
    get_architecture("chatty")
    captured = capsys.readouterr()
    assert "hello from the plugin" in captured.err
    assert captured.out == ""


# --------------------------------------------------------------------------- broken plugins


def test_a_plugin_that_raises_on_import_is_listed_broken_and_fails_only_its_own_lookups(site: Site) -> None:
    site.plugin(
        "raising-plugin", "raising_plugin_mod", "raiser", extra="raise RuntimeError('no GPU driver')", version="2.1"
    )
    [info] = by_name("raiser")
    assert not info.ok
    assert (info.package, info.version) == ("raising-plugin", "2.1")
    assert info.status == "broken: import failed: RuntimeError: no GPU driver"
    expected = "architecture 'raiser' from package raising-plugin 2.1 failed to load: "
    expected += "import failed: RuntimeError: no GPU driver"
    with pytest.raises(ArchitectureError) as e:
        get_architecture("raiser")
    assert str(e.value) == expected
    with pytest.raises(ArchitectureError, match="failed to load"):
        build_model("raiser")
    with pytest.raises(ArchitectureError, match="failed to load"):
        state_spec("raiser")
    assert get_architecture("digits_mlp").package == "ckpt-eval"  # the others are unaffected


def test_a_plugin_calling_sys_exit_on_import_is_broken_not_fatal(site: Site) -> None:
    site.plugin("exiting-plugin", "exiting_plugin_mod", "exiter", extra="import sys; sys.exit(3)")
    with pytest.raises(ArchitectureError, match="import failed: SystemExit: 3"):
        get_architecture("exiter")


def test_a_plugins_error_text_is_escaped_and_bounded(site: Site) -> None:
    hostile = "\\x1b]0;pwned\\x07\\n2026-01-01 INFO forged line\\u202e" + "y" * 1000
    site.plugin("hostile-plugin", "hostile_plugin_mod", "hostile", extra=f"raise ValueError('{hostile}')")
    [info] = by_name("hostile")
    assert info.error is not None
    for raw in ("\x1b", "\x07", "\n", "\u202e"):
        assert raw not in info.error
    assert "\\x1b]0;pwned\\x07" in info.error
    assert len(info.error) < 400


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("missing_module_xyz:SPEC", "import failed: ModuleNotFoundError: No module named 'missing_module_xyz'"),
        ("{module}:NOPE", "import failed: AttributeError:"),
        ("{module}:NOT_A_SPEC", "invalid spec: it published a dict, not a ckpt_eval.architectures.ArchitectureSpec"),
        ("{module}:MISNAMED", "invalid spec: its spec is named 'other', the entry point 'published'"),
        ("{module}:BAD_INPUT", "invalid spec: input dtype 'float64' is not supported"),
    ],
)
def test_what_a_plugin_publishes_is_validated(site: Site, target: str, reason: str) -> None:
    site.module(
        "publishing_mod",
        """
        from ckpt_eval.architectures import ArchitectureSpec, InputSpec
        from torch import nn
        NOT_A_SPEC = {"name": "published"}
        MISNAMED = ArchitectureSpec("other", nn.Identity, InputSpec((4,)), 2)
        BAD_INPUT = ArchitectureSpec("published", nn.Identity, InputSpec((4,), dtype="float64"), 2)
        """,
    )
    site.distribution("publishing-plugin", "0.3", {"published": target.format(module="publishing_mod")})
    [info] = by_name("published")
    assert info.error is not None
    assert info.error.startswith(reason), info.error
    with pytest.raises(ArchitectureError, match="from package publishing-plugin 0.3 failed to load: " + reason[:20]):
        get_architecture("published")


def test_two_packages_publishing_one_name_are_both_named(site: Site) -> None:
    site.plugin("first-plugin", "first_plugin_mod", "twice", version="1.0")
    site.plugin("second-plugin", "second_plugin_mod", "twice", version="2.0")
    entries = by_name("twice")
    assert [(info.package, info.version) for info in entries] == [("first-plugin", "1.0"), ("second-plugin", "2.0")]
    assert all(not info.ok for info in entries)
    with pytest.raises(ArchitectureError) as e:
        get_architecture("twice")
    message = str(e.value)
    assert "architecture 'twice' is published by more than one package" in message
    assert "first-plugin 1.0" in message
    assert "second-plugin 2.0" in message
    assert "first_plugin_mod" not in sys.modules  # neither is run: which code would be the right one?


def test_a_plugin_shadowing_a_built_in_name_makes_that_name_ambiguous(site: Site) -> None:
    site.plugin("shadow-plugin", "shadow_plugin_mod", "digits_mlp")
    with pytest.raises(ArchitectureError, match="published by more than one package") as e:
        get_architecture("digits_mlp")
    assert f"ckpt-eval {ckpt_eval.__version__}" in str(e.value)
    assert "shadow-plugin 1.0" in str(e.value)
    assert get_architecture("fashion_cnn").package == "ckpt-eval"


def test_a_build_that_raises_is_an_architecture_error(site: Site) -> None:
    site.module(
        "build_fail_mod",
        """
        from ckpt_eval.architectures import ArchitectureSpec, InputSpec
        def explode():
            raise OSError("weights file /opt/x missing")
        def not_a_module():
            return "a string"
        SPEC = ArchitectureSpec("explodes", explode, InputSpec((4,)), 2)
        WRONG = ArchitectureSpec("wrong_type", not_a_module, InputSpec((4,)), 2)
        """,
    )
    site.distribution(
        "build-fail-plugin", "0.1", {"explodes": "build_fail_mod:SPEC", "wrong_type": "build_fail_mod:WRONG"}
    )
    assert [info.status for info in by_name("explodes")] == ["ok"]  # valid spec: the failure is the build's
    message = "architecture 'explodes' from package build-fail-plugin 0.1 failed to build its module: "
    message += "OSError: weights file /opt/x missing"
    with pytest.raises(ArchitectureError) as e:
        build_model("explodes")
    assert str(e.value) == message
    with pytest.raises(ArchitectureError, match="failed to build its module"):
        state_spec("explodes")
    with pytest.raises(ArchitectureError, match=r"build\(\) returned a str, not a torch.nn.Module"):
        build_model("wrong_type")


def test_a_build_that_raises_fails_the_checkpoint_and_keeps_the_parser(site: Site, tmp_path: Path) -> None:
    site.module(
        "build_fail2_mod",
        """
        from ckpt_eval.architectures import ArchitectureSpec, InputSpec
        def explode():
            raise RuntimeError("cannot build")
        SPEC = ArchitectureSpec("explodes2", explode, InputSpec((4,)), 2)
        """,
    )
    site.distribution("build-fail2-plugin", "0.1", {"explodes2": "build_fail2_mod:SPEC"})
    root = tmp_path / "root"
    root.mkdir()
    data = torch_bytes(build_model("digits_mlp").state_dict())
    (root / "m.pt").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    with CheckpointParser(ParseLimits(wall_seconds=60)) as parser:
        with pytest.raises(ArchitectureError, match="failed to build its module: RuntimeError: cannot build"):
            load_checkpoint(root, "m.pt", "explodes2", sha, parser)
        assert load_checkpoint(root, "m.pt", "digits_mlp", sha, parser).model is not None


def test_an_installed_package_with_unreadable_metadata_hides_no_other(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site.plugin("good-plugin", "good_plugin_mod", "good_arch")
    info = site.path / "garbled-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: garbled\nVersion: 1.0\n")
    (info / "entry_points.txt").write_bytes(b"[ckpt_eval.architectures]\nx = \xff\xfe:SPEC\n")
    architectures.refresh()
    with caplog.at_level("WARNING", logger="ckpt_eval.architectures"):
        assert get_architecture("good_arch").package == "good-plugin"
    assert "metadata cannot be read: UnicodeDecodeError" in caplog.text
    assert get_architecture("sonar_mlp").package == "ckpt-eval-sonar"


# --------------------------------------------------------------------------- validation rules


def valid(**changes: object) -> ArchitectureSpec:
    fields: dict[str, object] = {
        "name": "x",
        "build": torch.nn.Identity,
        "input": InputSpec((3, 4, 4), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)),
        "num_classes": 3,
        "class_names": ("a", "b", "c"),
        "description": "",
    }
    fields.update(changes)
    return ArchitectureSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (valid(name="y"), "its spec is named 'y', the entry point 'x'"),
        (valid(build=None), "build is not callable"),
        (valid(num_classes=1, class_names=None), "num_classes must be an integer of at least 2, not 1"),
        (valid(num_classes=True, class_names=None), "num_classes must be an integer of at least 2, not True"),
        (valid(num_classes=2.0, class_names=None), "num_classes must be an integer of at least 2, not 2.0"),
        (valid(class_names=("a", "b")), "2 class_names for 3 classes"),
        (valid(class_names=["a", "b", "c"]), "class_names must be a tuple of non-empty strings"),
        (valid(class_names=("a", "", "c")), "class_names must be a tuple of non-empty strings"),
        (valid(class_names=("a", "a", "c")), "class_names must be distinct"),
        (valid(description=None), "description must be a string"),
        (valid(input=(3, 4, 4)), "input must be a ckpt_eval.architectures.InputSpec, not tuple"),
        (valid(input=InputSpec((60,), dtype="float16")), "input dtype 'float16' is not supported"),
        (valid(input=InputSpec([60])), "input shape must be a non-empty tuple of positive integers"),
        (valid(input=InputSpec(())), "input shape must be a non-empty tuple of positive integers"),
        (valid(input=InputSpec((60, 0))), "input shape must be a non-empty tuple of positive integers"),
        (valid(input=InputSpec((-1,))), "input shape must be a non-empty tuple of positive integers"),
        (valid(input=InputSpec((2.5,))), "input shape must be a non-empty tuple of positive integers"),
        (valid(input=InputSpec((3, 4, 4), mean=(0.5, 0.5))), "input.mean has 2 values, the input has 3 features"),
        (valid(input=InputSpec((60,), std=(1.0,) * 59)), "input.std has 59 values, the input has 60 features"),
        (valid(input=InputSpec((60,), std=0.0)), "input.std must be greater than 0"),
        (valid(input=InputSpec((2,), std=(1.0, -1.0))), "input.std must be greater than 0"),
        (valid(input=InputSpec((60,), std=math.nan)), "input.std must be finite"),
        (valid(input=InputSpec((60,), std=math.inf)), "input.std must be finite"),
        (valid(input=InputSpec((60,), mean=-math.inf)), "input.mean must be finite"),
        (valid(input=InputSpec((60,), mean="0")), "input.mean must be a number or a tuple of numbers, not str"),
        (valid(input=InputSpec((2,), mean=[0.0, 0.0])), "input.mean must be a number or a tuple of numbers, not list"),
        (valid(input=InputSpec((2,), mean=(0.0, True))), "input.mean must hold numbers only"),
    ],
)
def test_spec_validation_names_the_problem(spec: ArchitectureSpec, problem: str) -> None:
    problems = spec_problems(spec, "x")
    assert any(p.startswith(problem) for p in problems), problems


def test_valid_specs_pass_and_every_problem_is_reported_at_once() -> None:
    assert spec_problems(valid(), "x") == []
    assert spec_problems(valid(class_names=None, input=InputSpec((60,), mean=0.5, std=2)), "x") == []
    assert len(spec_problems(valid(num_classes=0, class_names=None, input=InputSpec((4,), std=0.0)), "x")) == 2
    assert "the name must be" in spec_problems(valid(name="bad name"), "bad name")[0]


def test_prepare_standardises_per_feature_and_per_channel() -> None:
    tabular = Architecture(valid(input=InputSpec((2,), mean=(1.0, 10.0), std=(2.0, 5.0))), "p", "1")
    np.testing.assert_allclose(tabular.prepare(torch.tensor([[3.0, 20.0], [1.0, 10.0]])), [[1.0, 2.0], [0.0, 0.0]])
    images = Architecture(valid(input=InputSpec((2, 1, 2), mean=(1.0, 2.0), std=(1.0, 4.0))), "p", "1")
    batch = torch.tensor([[[[1.0, 3.0]], [[2.0, 10.0]]]])  # (N=1, C=2, H=1, W=2)
    np.testing.assert_allclose(images.prepare(batch), [[[[0.0, 2.0]], [[0.0, 2.0]]]])
    scalar = Architecture(valid(input=InputSpec((1, 2, 2), mean=0.5, std=0.25)), "p", "1")
    np.testing.assert_allclose(scalar.prepare(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))


# --------------------------------------------------------------------------- the isolated parser imports no plugin


def test_the_parser_process_never_imports_a_plugin(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported-by"
    extra = f"import os\nopen({str(marker)!r}, 'a').write(str(os.getpid()) + ' ')"
    site.plugin("marked-plugin", "marked_plugin_mod", "marked", extra=extra)
    # The parser could find the plugin: its sys.path includes the site, as the worker's does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site.path), os.environ.get("PYTHONPATH", "")]))
    torch.manual_seed(0)
    data = torch_bytes(build_model("marked").state_dict())
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.pt").write_bytes(data)
    with CheckpointParser(ParseLimits(wall_seconds=60)) as parser:
        loaded = load_checkpoint(root, "tiny.pt", "marked", hashlib.sha256(data).hexdigest(), parser)
        child = parser._process.pid if parser._process else None
    assert child is not None
    assert marker.read_text().split() == [str(os.getpid())]  # imported once, by the worker only
    out = loaded.model(torch.ones(2, 4))
    assert out.shape == (2, 3)


def test_a_module_with_state_outside_its_state_dict_is_built_for_real(site: Site, tmp_path: Path) -> None:
    site.module(
        "buffered_mod",
        """
        import torch
        from torch import nn
        from ckpt_eval.architectures import ArchitectureSpec, InputSpec

        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(4, 2)
                self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)

            def forward(self, x):
                return self.linear(x) * self.scale

        SPEC = ArchitectureSpec("scaled", Scaled, InputSpec((4,)), 2)
        """,
    )
    site.distribution("buffered-plugin", "1.0", {"scaled": "buffered_mod:SPEC"})
    original = build_model("scaled")
    data = torch_bytes(original.state_dict())
    root = tmp_path / "root"
    root.mkdir()
    (root / "s.pt").write_bytes(data)
    with CheckpointParser(ParseLimits(wall_seconds=60)) as parser:
        loaded = load_checkpoint(root, "s.pt", "scaled", hashlib.sha256(data).hexdigest(), parser).model
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    inputs = torch.rand(5, 4)
    torch.testing.assert_close(loaded(inputs), original(inputs))


def test_layouts_cross_to_the_parser_as_json_and_nothing_else_is_accepted() -> None:
    layout = state_spec("digits_mlp")
    encoded = encode_layout(layout)
    assert decode_layout(json.loads(json.dumps(encoded))) == layout
    for bad in (
        None,
        [],
        [["k", [1], "complex64"]],
        [["k", [-1], "float32"]],
        [["k", [True], "float32"]],
        [[1, [], "float32"]],
    ):
        with pytest.raises(CheckpointError, match="layout"):
            decode_layout(bad)
    with pytest.raises(CheckpointError, match="dtype complex64, which is not supported"):
        encode_layout({"k": ((2,), torch.complex64)})


# --------------------------------------------------------------------------- the command


def run_cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CKPT_EVAL_", "ANSIBLE_VAULT"))}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([CKPT_EVAL, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_command_lists_broken_plugins_with_their_reason_and_exits_0(site: Site, tmp_path: Path) -> None:
    site.plugin(
        "broken-plugin", "broken_plugin_mod", "faulty", extra="raise ImportError('needs libfoo.so.3')", version="0.9"
    )
    # No credentials, no vault password: the command needs neither.
    result = run_cli("architectures", pythonpath=site.path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "package", "version", "input", "classes", "description", "status"]
    sonar = next(line for line in lines if line.startswith("sonar_mlp "))
    assert "ckpt-eval-sonar  1.0.0" in sonar
    assert "2 (R, M)" in sonar
    assert sonar.endswith("ok")
    faulty = next(line for line in lines if line.startswith("faulty "))
    assert "broken-plugin" in faulty
    assert faulty.endswith("broken (see below)")
    assert lines[-1] == "faulty (broken-plugin 0.9): broken: import failed: ImportError: needs libfoo.so.3"
    result = run_cli("architectures", "--format", "json", pythonpath=site.path)
    assert result.returncode == 0, result.stderr
    entries = {entry["name"]: entry for entry in json.loads(result.stdout)["architectures"]}
    assert entries["faulty"]["status"] == "broken"
    assert entries["faulty"]["error"] == "import failed: ImportError: needs libfoo.so.3"
    assert entries["faulty"]["package"] == "broken-plugin"
    assert entries["fashion_cnn"]["input_shape"] == [1, 28, 28]
    assert entries["breast_cancer_mlp"]["class_names"] == ["malignant", "benign"]
    assert entries["breast_cancer_mlp"]["standardised"] is True
    assert entries["sonar_mlp"]["standardised"] is False
