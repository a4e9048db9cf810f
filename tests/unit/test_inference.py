"""The inference view changes no bit of any output: every installed architecture, and the layer
stand-ins on the inputs where they could differ (odd sizes, NaN, infinities, other kernels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckpt_eval.architectures import build_model, installed
from ckpt_eval.inference import TiledMaxPool2d, inference_view, tiled_max_pool

ARCHITECTURES = sorted(info.name for info in installed() if info.ok)


def random_inputs(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=generator) * 4 - 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_every_installed_architecture_gives_bit_identical_outputs(arch: str, batch: int) -> None:
    torch.manual_seed(batch)
    model = build_model(arch).eval()
    info = next(i for i in installed() if i.name == arch)
    assert info.architecture is not None
    inputs = random_inputs(info.architecture.input_shape, batch, seed=batch)
    with torch.inference_mode():
        assert torch.equal(inference_view(model)(inputs), model(inputs))


def test_the_built_in_cnn_gets_the_faster_layers() -> None:
    view = inference_view(build_model("fashion_cnn"))
    kinds = [type(layer) for layer in view.layers]
    assert kinds[4] is TiledMaxPool2d
    assert [view.layers[i].inplace for i in (1, 3, 8)] == [True, True, True]


def test_the_view_leaves_the_callers_module_alone_and_shares_its_tensors() -> None:
    model = build_model("fashion_cnn")
    children = list(model.layers)
    view = inference_view(model)
    assert list(model.layers) == children  # the very same objects, no replacement
    assert type(model.layers[4]) is nn.MaxPool2d
    assert not model.layers[1].inplace
    ours = dict(model.named_parameters())
    for name, tensor in view.named_parameters():
        assert tensor.data_ptr() == ours[name].data_ptr()
    assert not model.training


def test_a_model_with_nothing_to_replace_is_returned_as_it_is() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert inference_view(model) is model


def test_the_models_input_is_never_clamped_in_place() -> None:
    # A ReLU first in the Sequential gets the dataset's own tensor (shared by every model).
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    view = inference_view(model)
    assert not view[0].inplace
    assert view[2].inplace
    inputs = torch.tensor([[-1.0, 2.0, -3.0, 4.0]])
    before = inputs.clone()
    with torch.inference_mode():
        view(inputs)
    assert torch.equal(inputs, before)


def test_a_relu_after_a_layer_that_may_return_its_input_stays_out_of_place() -> None:
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(2, 2))
    assert not inference_view(model)[1].inplace


def test_layers_with_hooks_and_subclasses_are_left_alone() -> None:
    class MyPool(nn.MaxPool2d):
        pass

    hooked = nn.MaxPool2d(2)
    hooked.register_forward_hook(lambda module, args, output: None)
    assert tiled_max_pool(MyPool(2)) is None
    assert tiled_max_pool(hooked) is None
    conv = nn.Conv2d(1, 2, 3)
    conv.register_forward_hook(lambda module, args, output: None)
    assert not inference_view(nn.Sequential(conv, nn.ReLU()))[1].inplace


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2, stride=1),
        nn.MaxPool2d(2, padding=1),
        nn.MaxPool2d(2, dilation=2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.MaxPool2d(2, return_indices=True),
        nn.MaxPool2d(1),
        nn.MaxPool2d((2, 3), stride=(2, 2)),
    ],
    ids=["overlapping", "padded", "dilated", "ceil", "indices", "kernel-1", "stride-differs"],
)
def test_pools_whose_windows_do_not_tile_the_input_keep_max_pool2d(pool: nn.MaxPool2d) -> None:
    assert tiled_max_pool(pool) is None


@pytest.mark.parametrize("kernel", [2, 3, (2, 3), (3, 1), (1, 2)])
@pytest.mark.parametrize("size", [(28, 28), (7, 9), (5, 4), (3, 3)])
def test_the_tiled_pool_equals_max_pool2d(kernel: int | tuple[int, int], size: tuple[int, int]) -> None:
    pool = nn.MaxPool2d(kernel)
    tiled = tiled_max_pool(pool)
    assert tiled is not None
    inputs = torch.randn(3, 4, *size)
    inputs[0, 0, 0, 0] = float("nan")
    inputs[1, 1, 1, 1] = float("inf")
    inputs[2, 2, 2, 2] = float("-inf")
    expected = pool(inputs)
    got = tiled(inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert got.data_ptr() != inputs.data_ptr()  # a new tensor, never a view of the input


def test_the_tiled_pool_takes_unbatched_and_channels_last_inputs() -> None:
    tiled = TiledMaxPool2d((2, 2))
    unbatched = torch.randn(4, 6, 6)
    assert torch.equal(tiled(unbatched), nn.functional.max_pool2d(unbatched, 2))
    channels_last = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    assert torch.equal(tiled(channels_last), nn.functional.max_pool2d(channels_last, 2))


def test_an_input_smaller_than_a_window_fails_as_max_pool2d_does() -> None:
    with pytest.raises(RuntimeError) as ours:
        TiledMaxPool2d((3, 3))(torch.randn(1, 1, 2, 2))
    with pytest.raises(RuntimeError) as theirs:
        nn.MaxPool2d(3)(torch.randn(1, 1, 2, 2))
    assert str(ours.value) == str(theirs.value)


def test_nested_containers_are_viewed_too() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Linear(2 * 3 * 3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).flatten(1))

    model = Net().eval()
    view = inference_view(model)
    assert type(view.features[2]) is TiledMaxPool2d
    assert type(model.features[2]) is nn.MaxPool2d
    inputs = torch.randn(5, 1, 7, 7)
    with torch.inference_mode():
        assert torch.equal(view(inputs), model(inputs))
