"""The three networks: despeckler, ResNet generator (reference-compatible keys), PatchGAN.

A small registry: ``create_model("despeckle", width=32)``, ``create_model("resnet_generator",
ngf=16, n_blocks=9)``, ``create_model("patchgan", ndf=64)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from service.core.chain import round_up
from service.core.colour import WEIGHT_LOW, WEIGHT_RAMP
from service.core.stain import EOSIN_RGB, HEMATOXYLIN_RGB

INSTANCE_NORM_EPS = 1e-5
IMAGE_AXES = {0: "N", 2: "H", 3: "W"}  # the ONNX graph takes any batch and tile size
Feeds = dict[str, torch.Tensor]


class StageNetwork(nn.Module):
    """A network a stage of the chain runs (its ``role``: service.core.stages). What its model
    card and ONNX graph say (docs/models.md) lives here beside the architecture, so the exporter
    (training/export.py) reads it instead of asking what the network is."""

    role: ClassVar[str]
    channels: ClassVar[int]  # in and out
    value_range: ClassVar[tuple[float, float]]  # of input and output; the engine maps [0, 1]
    onnx_inputs: ClassVar[dict[str, dict[int, str]]] = {"image": IMAGE_AXES}  # name: dynamic axes
    onnx_outputs: ClassVar[dict[str, dict[int, str]]] = {"output": IMAGE_AXES}

    @property
    def architecture(self) -> str:
        """The card's ``architecture``: the class and the options that rebuild it."""
        raise NotImplementedError

    def card_fields(self) -> dict[str, Any]:
        """The card's fields about how the engine runs it: size multiple and normalisation."""
        raise NotImplementedError

    def card_halo_px(self) -> int:
        """The card's ``halo_px``: the context each output pixel needs (measured)."""
        raise NotImplementedError

    def onnx_module(self) -> nn.Module:
        """What the ONNX export traces (``forward`` over ``onnx_inputs``)."""
        return self

    def onnx_example(self) -> tuple[torch.Tensor, ...]:
        """Example inputs for the trace, in ``onnx_inputs`` order."""
        return (torch.rand(1, self.channels, 64, 64),)

    def export_checks(
        self, generator: torch.Generator, height: int, width: int
    ) -> list[tuple[Feeds, tuple[torch.Tensor, ...]]]:
        """Random ONNX feeds of ``height x width`` and what torch gives for them (every output),
        to compare the exported graph with (no gradients needed)."""
        low, high = self.value_range
        image = torch.rand(2, self.channels, height, width, generator=generator)
        image = image * (high - low) + low
        return [({"image": image}, (self(image),))]


class Despeckler(StageNetwork):
    """The paper's despeckling CNN with a multiplicative residual.

    ``depth`` x [conv 3x3 ``width``, batch norm (not on the first layer), PReLU], then conv 3x3
    to one channel and tanh. The tanh output ``t`` in (-1, 1) is the log-free estimate of the
    inverse noise: ``output = input * (1 + t)``, a factor in (0, 2) that is 1 (identity) when the
    last layer is zero. Bounded, so a fresh or badly trained net can never blow up an image; the
    group's first public code used the same ``x * (1 + tanh(.))`` form. Input and output are
    reflectance in [0, 1] (tissue bright).
    """

    def __init__(self, width: int = 64, depth: int = 7) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth {depth} and width {width} must be positive")
        layers: list[nn.Module] = []
        in_channels = 1
        for index in range(depth):
            layers.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=index == 0))
            if index > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.PReLU(width))
            in_channels = width
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.width = width
        self.depth = depth
        # Start at the identity: the residual factor is exactly 1 before training.
        last = layers[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    role = "despeckle"
    channels = 1
    value_range = (0.0, 1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * (1.0 + torch.tanh(self.body(image)))

    @property
    def halo_px(self) -> int:
        """Receptive-field radius: one pixel per 3x3 convolution."""
        return self.depth + 1

    @property
    def architecture(self) -> str:
        return f"despeckle-cnn(width={self.width},depth={self.depth})"

    def card_fields(self) -> dict[str, Any]:
        """Any tile size, no normalisation statistics."""
        return {"size_multiple_px": 1, "norm": "none"}

    def card_halo_px(self) -> int:
        """The measured receptive-field radius."""
        return receptive_radius_px(self, 1, 65)


class SharedInstanceNorm(nn.Module):
    """Instance norm (no affine, no running stats, so reference keys stay compatible) that can
    mix in given statistics: ``mean = mix * given + (1 - mix) * own``, likewise the variance.

    Outside ``ResnetGenerator.forward_shared`` it is plain ``InstanceNorm2d(affine=False)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self._given: torch.Tensor | None = None  # (N, 2C): C means then C variances
        self._mix: torch.Tensor | None = None
        self.own_stats: torch.Tensor | None = None

    def set_shared(self, given: torch.Tensor | None, mix: torch.Tensor | None) -> None:
        self._given, self._mix, self.own_stats = given, mix, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._given is None or self._mix is None:
            return F.instance_norm(x, eps=INSTANCE_NORM_EPS)
        own_mean = x.mean(dim=(2, 3))
        own_var = (x - own_mean[:, :, None, None]).pow(2).mean(dim=(2, 3))
        self.own_stats = torch.cat([own_mean, own_var], dim=1)
        given_mean = self._given[:, : self.channels]
        given_var = self._given[:, self.channels :]
        mix = self._mix.reshape(1, 1)
        mean = mix * given_mean + (1.0 - mix) * own_mean
        var = mix * given_var + (1.0 - mix) * own_var
        scale = torch.rsqrt(var + INSTANCE_NORM_EPS)
        return (x - mean[:, :, None, None]) * scale[:, :, None, None]


class ResnetBlock(nn.Module):
    """``conv_block``: pad, conv, norm, ReLU, pad, conv, norm (reference indices 1 and 5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            SharedInstanceNorm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            SharedInstanceNorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResizeConv(nn.Module):
    """2x bilinear upsampling, then a 3x3 convolution: the same shapes as the reference's
    transposed convolution without its uneven kernel overlap, the classic source of a
    checkerboard (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        out: torch.Tensor = self.conv(self.pad(up))
        return out


UPSAMPLING = ("transpose", "resize")


class SharedNormGenerator(StageNetwork):
    """A generator whose instance-norm layers are ``SharedInstanceNorm``: the
    ``instance_shared`` contract of docs/models.md (``forward_shared``), RGB in [-1, 1].
    Subclasses build ``self.model`` and may override ``_generate`` (the forward pass)."""

    role = "generator"
    channels = 3
    value_range = (-1.0, 1.0)
    onnx_inputs: ClassVar[dict[str, dict[int, str]]] = {
        "image": IMAGE_AXES,
        "norm_stats": {0: "N"},
        "norm_mix": {},
    }
    onnx_outputs: ClassVar[dict[str, dict[int, str]]] = {
        "output": IMAGE_AXES,
        "tile_stats": {0: "N"},
    }
    model: nn.Sequential
    ngf: int
    n_blocks: int
    size_multiple_px: int = 4

    @property
    def norm_layers(self) -> list[SharedInstanceNorm]:
        """Instance-norm layers in execution order (the order of the stats vector)."""
        return [m for m in self.modules() if isinstance(m, SharedInstanceNorm)]

    @property
    def norm_stats_layers(self) -> tuple[int, ...]:
        return tuple(layer.channels for layer in self.norm_layers)

    @property
    def norm_stats_size(self) -> int:
        return 2 * sum(self.norm_stats_layers)

    @property
    def architecture(self) -> str:
        raise NotImplementedError

    def _generate(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(image)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._generate(image)

    def card_fields(self) -> dict[str, Any]:
        """Tiles in multiples of ``size_multiple_px``; slide-wide instance-norm statistics."""
        return {
            "size_multiple_px": self.size_multiple_px,
            "norm": "instance_shared",
            "norm_stats_size": self.norm_stats_size,
            "norm_stats_layers": list(self.norm_stats_layers),
        }

    def card_halo_px(self) -> int:
        """The measured receptive-field radius, rounded up to the size multiple."""
        return round_up(receptive_radius_px(self, 3, 257), self.size_multiple_px)

    def onnx_module(self) -> nn.Module:
        """``forward_shared``: image, statistics and mix in; output and the tile's own out."""
        return SharedStatsExport(self).eval()

    def onnx_example(self) -> tuple[torch.Tensor, ...]:
        """An image in [-1, 1], random statistics, mix 1."""
        image = torch.rand(1, 3, 64, 64) * 2 - 1
        return (image, torch.rand(1, self.norm_stats_size), torch.ones(1))

    def export_checks(
        self, generator: torch.Generator, height: int, width: int
    ) -> list[tuple[Feeds, tuple[torch.Tensor, ...]]]:
        """Another item's own statistics (the batch's, flipped) mixed in at 0, 1 and 0.5."""
        image = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
        _, own = self.forward_shared(image, torch.zeros(2, self.norm_stats_size), torch.zeros(1))
        checks: list[tuple[Feeds, tuple[torch.Tensor, ...]]] = []
        for mix in (0.0, 1.0, 0.5):
            mix_t = torch.full((1,), mix)
            feeds = {"image": image, "norm_stats": own.flip(0), "norm_mix": mix_t}
            checks.append((feeds, self.forward_shared(image, own.flip(0), mix_t)))
        return checks

    def forward_shared(
        self, image: torch.Tensor, norm_stats: torch.Tensor, norm_mix: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``instance_shared`` contract of docs/models.md: returns (output, tile_stats)."""
        layers = self.norm_layers
        offset = 0
        for layer in layers:
            size = 2 * layer.channels
            layer.set_shared(norm_stats[:, offset : offset + size], norm_mix)
            offset += size
        try:
            output = self._generate(image)
            own = [layer.own_stats for layer in layers]
            tile_stats = torch.cat([s for s in own if s is not None], dim=1)
        finally:
            for layer in layers:
                layer.set_shared(None, None)
        return output, tile_stats


class ResnetGenerator(SharedNormGenerator):
    """Johnson-style ResNet generator laid out exactly like the reference ``ResnetGenerator``
    (junyanz/pytorch-CycleGAN-and-pix2pix, instance norm, no dropout), so its state_dict loads.

    Inputs and outputs are RGB in [-1, 1]. ``upsample="transpose"`` is the reference layout
    (what ``import-reference`` loads); ``"resize"`` replaces both transposed convolutions by
    ``ResizeConv`` at the same indices (keys ``model.19.conv.*``, ``model.22.conv.*``).
    """

    def __init__(
        self,
        ngf: int = 64,
        n_blocks: int = 9,
        in_nc: int = 3,
        out_nc: int = 3,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_nc, ngf, 7, bias=True),
            SharedInstanceNorm(ngf),
            nn.ReLU(True),
        ]
        for power in range(2):
            channels = ngf * 2**power
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=True),
                SharedInstanceNorm(channels * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for power in (2, 1):
            channels = ngf * 2**power
            up: nn.Module
            if upsample == "resize":
                up = ResizeConv(channels, channels // 2)
            else:
                up = nn.ConvTranspose2d(
                    channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=True
                )
            layers += [
                up,
                SharedInstanceNorm(channels // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.ngf = ngf
        self.n_blocks = n_blocks
        self.upsample = upsample

    @property
    def architecture(self) -> str:
        if self.upsample == "transpose":
            return f"resnet_generator(ngf={self.ngf},n_blocks={self.n_blocks})"
        return f"resnet_generator(ngf={self.ngf},n_blocks={self.n_blocks},upsample={self.upsample})"


DILATIONS = (1, 2, 4, 8, 1, 2, 4, 8, 1)

# The glass gate. The colour stage leaves a pixel as Gareau's stain where its tissue weight is 0
# (FCM + RCM <= WEIGHT_LOW); there Gareau's largest drop below white on any channel is at most
# WEIGHT_LOW x the largest absorption of the two stains (haematoxylin's green, 0.8): 0.08. One
# level of 255 above that covers the chain's stain table (nearest grid point, one level). The
# gate rises from 0 there to 1 over WEIGHT_RAMP x the same absorption, the colour stage's ramp.
_MAX_ABSORPTION = max(1.0 - c for c in (*HEMATOXYLIN_RGB, *EOSIN_RGB))
GATE_LOW = WEIGHT_LOW * _MAX_ABSORPTION + 1.0 / 255.0
GATE_RAMP = WEIGHT_RAMP * _MAX_ABSORPTION


def glass_gate(image: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` tissue weight in [0, 1] of the colour stage's RGB ``(N, 3, H, W)`` in
    [-1, 1]: 0 where no channel is more than GATE_LOW below white (every pixel the colour stage
    left as glass), 1 from GATE_LOW + GATE_RAMP on. Per pixel: no context, no grid."""
    below_white = (1.0 - image.amin(dim=1, keepdim=True)) * 0.5  # 1 - min channel, in [0, 1]
    return ((below_white - GATE_LOW) / GATE_RAMP).clamp(0.0, 1.0)


class DilatedBlock(nn.Module):
    """``ResnetBlock`` with dilated 3x3 convolutions (reflection padding by the dilation)."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(dilation),
            nn.Conv2d(dim, dim, 3, dilation=dilation, bias=True),
            SharedInstanceNorm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(dilation),
            nn.Conv2d(dim, dim, 3, dilation=dilation, bias=True),
            SharedInstanceNorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResidualGenerator(SharedNormGenerator):
    """A learned correction on top of its input (the colour stage's output):
    ``output = clamp(input + body(input), -1, 1)``, RGB in [-1, 1].

    The body is stride-free: a 7x7 convolution to ``ngf`` channels, ``n_blocks`` residual
    blocks of dilated 3x3 convolutions (dilations cycling 1, 2, 4, 8: context without
    downsampling), and a 3x3 convolution to 3 channels that starts at zero, so an untrained
    generator is exactly the identity. Without strides or upsampling every layer commutes with
    a shift of the image, so the network cannot print a pattern locked to the pixel grid (the
    4-px texture of the strided ResNet generator). Costs per pixel what the ResNet generator's
    blocks at ``4 ngf`` channels on a quarter of the pixels cost.

    ``glass_gate``: the correction is multiplied by ``glass_gate(input)``, a tissue weight read
    from the colour stage's RGB, 0 wherever the colour stage's own tissue weight is 0, so there
    (glass, empty spaces) the output is the colour stage's exactly.
    """

    size_multiple_px = 1
    clamp_output = True

    def __init__(
        self,
        ngf: int = 16,
        n_blocks: int = 9,
        dilations: tuple[int, ...] = DILATIONS,
        glass_gate: bool = True,
    ) -> None:
        super().__init__()
        self.glass_gate = glass_gate
        if n_blocks < 1 or ngf < 1:
            raise ValueError(f"ngf {ngf} and n_blocks {n_blocks} must be positive")
        cycle = tuple(dilations) or (1,)
        self.dilations = tuple(cycle[i % len(cycle)] for i in range(n_blocks))
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7, bias=True),
            SharedInstanceNorm(ngf),
            nn.ReLU(True),
        ]
        layers += [DilatedBlock(ngf, d) for d in self.dilations]
        last = nn.Conv2d(ngf, 3, 3, bias=True)
        layers += [nn.ReflectionPad2d(1), last]
        self.model = nn.Sequential(*layers)
        self.ngf = ngf
        self.n_blocks = n_blocks
        self.zero_last()

    def zero_last(self) -> None:
        """The last convolution at zero: the generator is the identity (after ``init_weights``
        too, which the trainers call on every network)."""
        last = self.model[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    @property
    def architecture(self) -> str:
        dilations = "-".join(str(d) for d in self.dilations)
        gate = ",glass_gate=1" if self.glass_gate else ""
        return (
            f"residual_generator(ngf={self.ngf},n_blocks={self.n_blocks},"
            f"dilations={dilations}{gate})"
        )

    def _generate(self, image: torch.Tensor) -> torch.Tensor:
        correction: torch.Tensor = self.model(image)
        if self.glass_gate:
            correction = correction * glass_gate(image)
        out = image + correction
        return out.clamp(-1.0, 1.0) if self.clamp_output else out


class SharedStatsExport(nn.Module):
    """Wraps a generator so that ``forward`` is ``forward_shared`` (what ONNX export traces)."""

    def __init__(self, generator: SharedNormGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, image: torch.Tensor, norm_stats: torch.Tensor, norm_mix: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generator.forward_shared(image, norm_stats, norm_mix)


class PatchDiscriminator(nn.Module):
    """70 x 70 PatchGAN (``n_layers=3``) with instance norm, as in the reference CycleGAN."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, in_nc: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_nc, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        channels = ndf
        for index in range(1, n_layers + 1):
            stride = 2 if index < n_layers else 1
            out_channels = ndf * min(2**index, 8)
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=True),
                nn.InstanceNorm2d(out_channels),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(image)
        return out


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Normal(0, 0.02) convolution weights, zero biases (the reference CycleGAN's init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "despeckle": Despeckler,
    "resnet_generator": ResnetGenerator,
    "residual_generator": ResidualGenerator,
    "patchgan": PatchDiscriminator,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network by name with its keyword options."""
    try:
        factory = _REGISTRY[name]
    except KeyError as exc:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(_REGISTRY)}") from exc
    return factory(**kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def receptive_radius_px(model: nn.Module, channels: int, size_px: int = 257) -> int:
    """Measured receptive-field radius: how far from the centre pixel the input influences it.

    Back-propagates from the centre output pixel through a copy whose convolutions have small
    positive weights (so no ReLU or zero-initialised layer hides a path); a shared-stats
    generator gets fixed identity statistics (``mix = 1``) as during tiled inference.
    """
    probe = copy.deepcopy(model).eval()
    if isinstance(probe, ResidualGenerator):
        probe.clamp_output = False  # saturated outputs would hide paths
        probe.glass_gate = False  # per pixel; a zero gate at the centre would hide every path
    with torch.no_grad():
        for layer in probe.modules():
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = layer.weight[0].numel()
                layer.weight.uniform_(0.05 / fan_in, 0.15 / fan_in)
    image = torch.rand(1, channels, size_px, size_px, dtype=torch.float64) + 0.1
    image.requires_grad_(True)
    probe = probe.double()
    if isinstance(probe, SharedNormGenerator):
        stats = torch.zeros(1, probe.norm_stats_size, dtype=torch.float64)
        offset = 0
        for width in probe.norm_stats_layers:
            stats[:, offset + width : offset + 2 * width] = 1.0
            offset += 2 * width
        out, _ = probe.forward_shared(image, stats, torch.ones(1, dtype=torch.float64))
    else:
        out = probe(image)
    centre = size_px // 2
    out[0, :, centre, centre].sum().backward()
    grad = image.grad
    if grad is None:
        raise RuntimeError("no gradient reached the input")
    rows, cols = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
    if rows.numel() == 0:
        return 0
    return max(int((rows - centre).abs().max()), int((cols - centre).abs().max()))
