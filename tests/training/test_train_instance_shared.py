"""The ``instance_shared`` contract of docs/models.md."""

from __future__ import annotations

import torch
from torch import nn

from training.networks import ResnetGenerator, SharedInstanceNorm, init_weights


def small_generator() -> ResnetGenerator:
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=4, n_blocks=2)
    init_weights(generator, gain=0.2)
    return generator.eval()


def plain_instance_norm_copy(generator: ResnetGenerator) -> nn.Module:
    """The same network with torch's own InstanceNorm2d in place of ours."""
    import copy

    clone = copy.deepcopy(generator)
    for module in clone.modules():
        for name, child in module.named_children():
            if isinstance(child, SharedInstanceNorm):
                setattr(module, name, nn.InstanceNorm2d(child.channels))
    return clone


def test_mix_zero_is_plain_instance_norm() -> None:
    generator = small_generator()
    image = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        reference = plain_instance_norm_copy(generator)(image)
        zeros = torch.zeros(2, generator.norm_stats_size)
        shared, stats = generator.forward_shared(image, zeros, torch.zeros(1))
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-4)
    assert stats.shape == (2, generator.norm_stats_size)


def test_stats_layout_is_means_then_variances_per_layer() -> None:
    generator = small_generator()
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        _, stats = generator.forward_shared(
            image, torch.zeros(1, generator.norm_stats_size), torch.zeros(1)
        )
        first = generator.model[1](generator.model[0](image))
    channels = generator.norm_stats_layers[0]
    torch.testing.assert_close(stats[0, :channels], first.mean(dim=(2, 3))[0])
    torch.testing.assert_close(
        stats[0, channels : 2 * channels], first.var(dim=(2, 3), unbiased=False)[0]
    )


def test_tile_with_given_stats_equals_whole_image_crop() -> None:
    generator = small_generator()
    halo = 48  # >= receptive radius of ngf 4 x 2 blocks, a multiple of 4
    image = torch.rand(1, 3, 160, 192) * 2 - 1
    with torch.no_grad():
        zeros = torch.zeros(1, generator.norm_stats_size)
        _, whole_stats = generator.forward_shared(image, zeros, torch.zeros(1))
        whole, _ = generator.forward_shared(image, whole_stats, torch.ones(1))
        top, left, size = 52, 68, 40  # multiples of 4
        tile = image[:, :, top - halo : top + size + halo, left - halo : left + size + halo]
        tiled, _ = generator.forward_shared(tile, whole_stats, torch.ones(1))
    centre = tiled[:, :, halo : halo + size, halo : halo + size]
    torch.testing.assert_close(
        centre, whole[:, :, top : top + size, left : left + size], atol=1e-5, rtol=1e-4
    )
    # with the tile's own statistics the result differs: that is what the contract fixes
    with torch.no_grad():
        own, _ = generator.forward_shared(
            tile, torch.zeros(1, generator.norm_stats_size), torch.zeros(1)
        )
    assert (own[:, :, halo : halo + size, halo : halo + size] - centre).abs().max() > 1e-3
