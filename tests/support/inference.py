"""The backend and precision a test runs the networks on, and the tolerance that precision earns.

Tests that load a model without naming a backend run on the one ``DSCM_INFERENCE`` /
``DSCM_INFERENCE_PRECISION`` name (``auto`` when unset: on CPUs with bf16 units, OpenVINO bf16
for the models a timed probe found faster, service.core.backend_probe).
An accuracy test compares what ran at its own tolerance: fp32 to 1e-4 absolute, bf16 and fp16
by the PSNR guard the shipped models are held to (docs/performance.md).

OpenVINO runs a bf16 hint in fp32 on CPUs without bf16 units, so ``bf16_emulated`` also runs
every model in bf16 on any CPU: onnxruntime with each convolution's inputs and weights rounded
to bf16 (what bf16 units multiply; they accumulate in fp32), so the bf16 tolerance is exercised
on every machine, not only on those with the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.core.backends import Backend, RunPrecision, backend_from_env
from service.core.models import OnnxModel

FP32_ATOL = 1e-4
MIN_PSNR_DB = 40.0
REFERENCE = Backend("cpu", "fp32")
BF16_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def backend_under_test() -> Backend:
    """What ``OnnxModel(path)`` runs on in this process."""
    return backend_from_env()


def psnr_db(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def assert_matches_at_precision(
    got: np.ndarray, want: np.ndarray, precision: str, peak: float = 1.0
) -> None:
    """``got``, computed in ``precision``, equals the fp32 ``want`` to that precision's
    tolerance: 1e-4 absolute for fp32, the PSNR guard for bf16 and fp16."""
    assert got.shape == want.shape
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=FP32_ATOL)
        return
    measured = psnr_db(got, want, peak)
    assert measured >= MIN_PSNR_DB, f"{precision}: {measured:.1f} dB < {MIN_PSNR_DB} dB"


def bf16_graph_bytes(path: Path) -> bytes:
    """``path`` with every float input of its convolutions and matrix products rounded to bf16
    (a Cast to bfloat16 and back), the arithmetic of a bf16 unit on an fp32 runtime."""
    model = onnx.load(str(path))
    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type in BF16_OPS:
            for index, name in enumerate(node.input[:2]):  # data and weights, not the bias
                rounded = f"{name}__bf16"
                nodes.append(
                    helper.make_node("Cast", [name], [rounded + "_b"], to=TensorProto.BFLOAT16)
                )
                nodes.append(
                    helper.make_node("Cast", [rounded + "_b"], [rounded], to=TensorProto.FLOAT)
                )
                node.input[index] = rounded
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return bytes(model.SerializeToString())


class Bf16EmulatedRunner:
    """A backend runner (service.core.backends.Runner) that computes in emulated bf16."""

    precision: RunPrecision = "bf16"
    label = "onnxruntime CPU bf16 (emulated)"

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            bf16_graph_bytes(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, dict(feeds)))


def bf16_emulated(path: Path) -> OnnxModel:
    """``path`` loaded like any model (card, sha256, ranges), computing in emulated bf16."""
    model = OnnxModel(path, 1, REFERENCE)
    model.runner = Bf16EmulatedRunner(path)
    return model


def models_under_test(path: Path) -> list[OnnxModel]:
    """``path`` on the backend this process runs (DSCM_INFERENCE...) and in emulated bf16."""
    return [OnnxModel(path), bf16_emulated(path)]
