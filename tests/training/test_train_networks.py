"""Networks: reference-compatible generator, despeckler, PatchGAN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.networks import (
    Despeckler,
    ResnetGenerator,
    count_parameters,
    create_model,
    init_weights,
    receptive_radius_px,
)


def test_reference_size_generator_parameters_and_keys() -> None:
    generator = create_model("resnet_generator", ngf=64, n_blocks=9)
    assert count_parameters(generator) == 11_378_179
    keys = {k.rsplit(".", 1)[0] for k in generator.state_dict()}
    expected = {"model.1", "model.4", "model.7", "model.19", "model.22", "model.26"}
    expected |= {f"model.{i}.conv_block.{j}" for i in range(10, 19) for j in (1, 5)}
    assert keys == expected


@pytest.mark.parametrize(("ngf", "blocks"), [(8, 2), (16, 9)])
def test_generator_shapes_and_finite(ngf: int, blocks: int) -> None:
    generator = create_model("resnet_generator", ngf=ngf, n_blocks=blocks)
    init_weights(generator)
    out = generator(torch.rand(2, 3, 68, 52) * 2 - 1)
    assert out.shape == (2, 3, 68, 52)
    assert torch.isfinite(out).all() and out.abs().max() <= 1


def test_despeckler_starts_as_identity_and_keeps_shape() -> None:
    despeckler = create_model("despeckle", width=8, depth=3)
    image = torch.rand(1, 1, 33, 47)
    assert torch.equal(despeckler.eval()(image), image)
    assert isinstance(despeckler, Despeckler) and despeckler.halo_px == 4
    assert receptive_radius_px(despeckler, 1, 33) == 4


def test_paper_despeckler_layout() -> None:
    despeckler = create_model("despeckle", width=64, depth=7)
    convs = [m for m in despeckler.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in despeckler.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 8 and len(norms) == 6
    assert convs[-1].out_channels == 1


def test_patchgan_70px_output() -> None:
    discriminator = create_model("patchgan", ndf=8)
    assert discriminator(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_generator_receptive_field_matches_reference() -> None:
    generator = create_model("resnet_generator", ngf=4, n_blocks=9)
    assert isinstance(generator, ResnetGenerator)
    assert receptive_radius_px(generator, 3, 257) == 82


def test_unknown_network_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        create_model("unet")


def test_resize_upsampling_has_no_checkerboard_by_construction() -> None:
    """Untrained generators on a smooth image: transposed convolutions print a regular grid
    (their kernels overlap unevenly), bilinear resize + convolution does not."""
    from service.core.quality import checkerboard_db

    smooth = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    image = torch.nn.functional.interpolate(smooth, size=(256, 256), mode="bilinear") * 2 - 1
    peaks = {}
    for upsample in ("transpose", "resize"):
        torch.manual_seed(1)
        net = create_model("resnet_generator", ngf=8, n_blocks=2, upsample=upsample)
        init_weights(net)
        with torch.no_grad():
            out = net(image)[0].permute(1, 2, 0).numpy()
        peaks[upsample] = checkerboard_db((out + 1) * 127.5)
    assert peaks["transpose"] > 15.0
    assert peaks["resize"] < 6.0
    resize_keys = set(
        create_model("resnet_generator", ngf=4, n_blocks=9, upsample="resize").state_dict()
    )
    assert {"model.19.conv.weight", "model.22.conv.weight"} <= resize_keys


@pytest.mark.parametrize("name", ["despeckle", "resnet_generator", "residual_generator"])
def test_each_exportable_network_names_a_registered_stage(name: str) -> None:
    from service.core.stages import NETWORK_ROLES
    from training.networks import StageNetwork

    network = create_model(name)
    assert isinstance(network, StageNetwork) and network.role in NETWORK_ROLES
    assert network.card_fields()["size_multiple_px"] >= 1
