"""Tiny ONNX models built with onnx.helper, with model cards, for engine tests and benches.

They follow the interface of docs/models.md exactly (including the `instance_shared` generator
contract), so the engine cannot tell them from trained models except by their weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.core.models import file_sha256

OPSET = 18


class GraphBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, gain: float = 1.0) -> str:
        std = gain / np.sqrt(c_in * k * k)
        w = self.const((self.rng.normal(0, std, (c_out, c_in, k, k))).astype(np.float32), "w")
        b = self.const((self.rng.normal(0, 0.05, c_out)).astype(np.float32), "b")
        return self.op("Conv", [x, w, b], pads=[k // 2] * 4)

    def shared_instance_norm(
        self, x: str, channels: int, stats: str, mix: str, offset: int
    ) -> tuple[str, str]:
        """Instance norm per docs/models.md; returns (normalised, own [N, 2C] stats)."""
        axes = self.const(np.asarray([2, 3], np.int64), "axes")
        mean = self.op("ReduceMean", [x, axes], keepdims=1)
        centred = self.op("Sub", [x, mean])
        var = self.op("ReduceMean", [self.op("Mul", [centred, centred]), axes], keepdims=1)
        starts = self.const(np.asarray([offset], np.int64))
        mid = self.const(np.asarray([offset + channels], np.int64))
        ends = self.const(np.asarray([offset + 2 * channels], np.int64))
        ax1 = self.const(np.asarray([1], np.int64))
        shape = self.const(np.asarray([-1, channels, 1, 1], np.int64))
        given_mean = self.op("Reshape", [self.op("Slice", [stats, starts, mid, ax1]), shape])
        given_var = self.op("Reshape", [self.op("Slice", [stats, mid, ends, ax1]), shape])
        one = self.const(np.asarray([1.0], np.float32))
        keep = self.op("Sub", [one, mix])
        use_mean = self.op("Add", [self.op("Mul", [given_mean, mix]), self.op("Mul", [mean, keep])])
        use_var = self.op("Add", [self.op("Mul", [given_var, mix]), self.op("Mul", [var, keep])])
        eps = self.const(np.asarray([1e-5], np.float32))
        denom = self.op("Sqrt", [self.op("Add", [use_var, eps])])
        normed = self.op("Div", [self.op("Sub", [x, use_mean]), denom])
        flat = self.const(np.asarray([-1, channels], np.int64))
        own = self.op(
            "Concat",
            [self.op("Reshape", [mean, flat]), self.op("Reshape", [var, flat])],
            axis=1,
        )
        return normed, own


def write_model(folder: Path, name: str, model: onnx.ModelProto, card: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    card = dict(card, name=name, sha256=file_sha256(path), version="0.0.0-test")
    card.setdefault("licence", "test fixture")
    (folder / f"{name}.json").write_text(json.dumps(card, indent=2))
    return path


def image_input(channels: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])


def make_despeckler(folder: Path, layers: int = 3, width: int = 8, seed: int = 1) -> Path:
    """Multiplicative residual: output = input * (1 + 0.5 tanh(convs(input)))."""
    g = GraphBuilder(seed)
    x, c = "image", 1
    for _ in range(layers - 1):
        x, c = g.op("Relu", [g.conv(x, c, width)]), width
    factor = g.op("Tanh", [g.conv(x, c, 1)])
    half = g.const(np.asarray([0.5], np.float32))
    one = g.const(np.asarray([1.0], np.float32))
    scale = g.op("Add", [one, g.op("Mul", [factor, half])])
    g.nodes.append(helper.make_node("Mul", ["image", scale], ["output"]))
    graph = helper.make_graph(
        g.nodes,
        "despeckle",
        [image_input(1)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    card = {
        "role": "despeckle",
        "architecture": f"test-despeckle(width={width},layers={layers})",
        "input": {"name": "image", "channels": 1, "range": [0.0, 1.0]},
        "output": {"name": "output", "channels": 1, "range": [0.0, 1.0]},
        "halo_px": layers,
        "norm": "none",
    }
    return write_model(folder, "despeckle", model, card)


def make_generator(
    folder: Path, layers: int = 4, width: int = 8, shared_norm: bool = True, seed: int = 2
) -> Path:
    """Convs on [-1, 1] RGB with an instance norm after the first one (if shared_norm)."""
    g = GraphBuilder(seed)
    inputs = [image_input(3)]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    x = g.conv("image", 3, width, gain=2.0)
    if shared_norm:
        inputs += [
            helper.make_tensor_value_info("norm_stats", TensorProto.FLOAT, ["N", 2 * width]),
            helper.make_tensor_value_info("norm_mix", TensorProto.FLOAT, [1]),
        ]
        x, own = g.shared_instance_norm(x, width, "norm_stats", "norm_mix", 0)
        g.nodes.append(helper.make_node("Identity", [own], ["tile_stats"]))
        outputs.append(
            helper.make_tensor_value_info("tile_stats", TensorProto.FLOAT, ["N", 2 * width])
        )
    x = g.op("Relu", [x])
    for _ in range(layers - 2):
        x = g.op("Relu", [g.conv(x, width, width)])
    residual = g.op("Tanh", [g.conv(x, width, 3)])
    half = g.const(np.asarray([0.5], np.float32))
    mixed = g.op("Add", [g.op("Mul", ["image", half]), g.op("Mul", [residual, half])])
    g.nodes.append(helper.make_node("Identity", [mixed], ["output"]))
    graph = helper.make_graph(g.nodes, "generator", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    card: dict[str, object] = {
        "role": "generator",
        "architecture": f"test-generator(width={width},layers={layers})",
        "input": {"name": "image", "channels": 3, "range": [-1.0, 1.0]},
        "output": {"name": "output", "channels": 3, "range": [-1.0, 1.0]},
        "halo_px": layers,
        "size_multiple_px": 4,
        "norm": "instance_shared" if shared_norm else "none",
    }
    if shared_norm:
        card.update(norm_stats_size=2 * width, norm_stats_layers=[width])
    return write_model(folder, "generator", model, card)


def make_model_folder(folder: Path, shared_norm: bool) -> Path:
    """A despeckler and a generator (instance norm with shared statistics, or none) in
    ``folder``: the two networks of the default chain."""
    make_despeckler(folder)
    make_generator(folder, shared_norm=shared_norm)
    return folder


def make_colour_card(
    folder: Path,
    lab_mean=(70.0, 27.0, -8.0),
    lab_std=(11.0, 9.0, 3.5),
    mpp_um: float | None = None,
) -> Path:
    """A colour stage card (no ONNX file): the target look of the colour transfer."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "colour.json"
    card = {
        "name": "test-look",
        "version": "0.0.1",
        "role": "colour",
        "lab_mean": list(lab_mean),
        "lab_std": list(lab_std),
    }
    if mpp_um is not None:
        card["mpp_um"] = mpp_um
    path.write_text(json.dumps(card))
    return path


def make_eraser_generator(folder: Path) -> Path:
    """A generator that paints every pixel one pink, erasing the nuclei: what the per-slide
    faithfulness check must flag. Its card keeps it out of the default chain."""
    g = GraphBuilder(0)
    zero = g.const(np.zeros((1,), np.float32))
    pink = g.const(np.asarray([0.8, 0.2, 0.6], np.float32).reshape(1, 3, 1, 1))
    flat = g.op("Add", [g.op("Mul", ["image", zero]), pink])
    g.nodes.append(helper.make_node("Identity", [flat], ["output"]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    graph = helper.make_graph(g.nodes, "eraser", [image_input(3)], outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    card: dict[str, object] = {
        "role": "generator",
        "architecture": "test-eraser",
        "input": {"name": "image", "channels": 3, "range": [-1.0, 1.0]},
        "output": {"name": "output", "channels": 3, "range": [-1.0, 1.0]},
        "halo_px": 0,
        "size_multiple_px": 4,
        "norm": "none",
        "default": False,
    }
    return write_model(folder, "generator", model, card)
