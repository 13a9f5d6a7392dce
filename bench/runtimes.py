"""Model-only speed of the shipped models in one runtime, and its PSNR against onnxruntime fp32.

    .venv/bin/python bench/runtimes.py ort            # onnxruntime, CPU provider, fp32
    .venv/bin/python bench/runtimes.py openvino       # the OpenVINO runtime (the [openvino] extra)
    /tmp/ovep/bin/python bench/runtimes.py ovep       # onnxruntime-openvino's provider, in a
                                                      # venv of its own (numpy + that package)

Needs only numpy and the runtime, so it also runs in a bare venv; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = Path(__file__).resolve().parents[1] / "models"
CONFIG = {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def make_runner(kind: str, path: Path, threads: int) -> tuple[Callable[..., np.ndarray], str]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if kind == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(path), "CPU", CONFIG | {"INFERENCE_PRECISION_HINT": "f32"}
        )
        request = compiled.create_infer_request()

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            request.infer(feeds)
            return np.array(request.get_output_tensor(0).data)

        return run, f"OpenVINO {ov.__version__.split('-')[0]} runtime, CPU, f32"
    provider: object = "CPUExecutionProvider"
    label = f"onnxruntime {ort.__version__}, CPU provider, fp32"
    if kind == "ovep":
        settings = {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads)}
        provider = ("OpenVINOExecutionProvider", settings)
        label = f"onnxruntime-openvino {ort.__version__}, OpenVINO provider, CPU, FP32"
    session = ort.InferenceSession(str(path), options, providers=[provider])
    return (lambda feeds: session.run(None, feeds)[0]), label


def measure(kind: str, side_px: int, threads: int, repeats: int) -> dict[str, object]:
    result: dict[str, object] = {"side_px": side_px}
    for name, channels in (("despeckle", 1), ("generator", 3)):
        path = MODELS / f"{name}.onnx"
        unit = 0.4 + 0.3 * np.random.default_rng(0).random((1, channels, side_px, side_px))
        feeds = {"image": (unit if channels == 1 else 2 * unit - 1).astype(np.float32)}
        reference, _ = make_runner("ort", path, threads)
        probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if len(probe.get_inputs()) == 3:  # instance_shared: the tile's own statistics, mix 1
            size = probe.get_inputs()[1].shape[1]
            blank = {"norm_stats": np.zeros((1, size), np.float32), "norm_mix": np.zeros(1)}
            own = probe.run(None, feeds | {k: v.astype(np.float32) for k, v in blank.items()})[1]
            feeds |= {"norm_stats": own, "norm_mix": np.ones(1, np.float32)}
        want = reference(feeds)
        run, result["runtime"] = make_runner(kind, path, threads)
        run(feeds)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            got = run(feeds)
            times.append(time.perf_counter() - started)
        peak = 1.0 if channels == 1 else 2.0
        mse = float(np.mean((got.astype(np.float64) - want) ** 2))
        result[name] = {
            "mp_per_s": round(side_px**2 / float(np.median(times)) / 1e6, 3),
            "psnr_vs_onnxruntime_fp32_db": round(10 * np.log10(peak**2 / mse), 1) if mse else None,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=["ort", "openvino", "ovep"])
    parser.add_argument("--side-px", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.runtime, args.side_px, args.threads, args.repeats)))


if __name__ == "__main__":
    main()
