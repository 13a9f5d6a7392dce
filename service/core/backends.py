"""Inference backends: which runtime runs the ONNX models, and at which precision.

The model card keeps one ONNX file per model; backend and precision are run-time choices
(``DSCM_INFERENCE``, ``DSCM_INFERENCE_PRECISION``):

- ``cpu``: onnxruntime's CPU provider in fp32; every install has it.
- ``openvino``: the OpenVINO runtime on the CPU (the ``[openvino]`` extra); bf16 on CPUs with
  AMX or AVX512-BF16 units, fp32 elsewhere.
- ``cuda``: onnxruntime-gpu's CUDA provider (the ``[gpu]`` extra) with IO binding; fp32, or fp16
  on request (the graph is converted at load time, inputs and outputs stay fp32).

``auto`` takes CUDA when onnxruntime has it, and onnxruntime CPU fp32 otherwise, unless OpenVINO
is installed and might be faster here (bf16 on CPUs with bf16 units, fp32 on the CPU classes in
``OPENVINO_FP32_FASTER_ON``): then each model is timed on both at load, once per machine and
model (service.core.backend_probe), and OpenVINO runs the model only where it measured faster
without needing more memory. bf16 without AMX tile units is emulated in part and was slower
than onnxruntime fp32 on a large generator (issue 21). docs/performance.md has the measurements.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np

from service.vocabulary.errors import ModelError

Inference = Literal["auto", "cpu", "openvino", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
BackendName = Literal["cpu", "openvino", "cuda"]
RunPrecision = Literal["fp32", "bf16", "fp16"]
INFERENCE_CHOICES: tuple[str, ...] = get_args(Inference)
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# CPU classes without bf16 units on which OpenVINO fp32 measured faster than onnxruntime fp32
# end to end with the shipped models (bench/stain.py, docs/performance.md). None so far: on
# avx2 it was 11 % faster at 4096 and 5 % slower at 8192, with 0.9 GB more peak RSS.
# Unmeasured classes stay on onnxruntime, the known quantity.
OPENVINO_FP32_FASTER_ON: frozenset[str] = frozenset()
PRECISIONS_OF: dict[BackendName, tuple[RunPrecision, ...]] = {
    "cpu": ("fp32",),
    "openvino": ("fp32", "bf16", "fp16"),
    "cuda": ("fp32", "fp16"),
}
OPENVINO_HINTS: dict[RunPrecision, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
OPENVINO_TYPES: dict[str, RunPrecision] = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# Ops whose arithmetic stays fp32 in an fp16 graph: the instance-norm statistics (a mean of a
# million squares overflows or loses every digit in fp16) and the ops that apply them.
FP16_KEEP_FP32_OPS = ("ReduceMean", "Sqrt", "Div", "Pow", "InstanceNormalization")


@dataclass(frozen=True)
class Machine:
    """What this process can run on: onnxruntime's providers, OpenVINO, the CPU's flags."""

    ort_providers: tuple[str, ...]
    openvino: bool
    cpu_flags: frozenset[str]
    cpu_model: str = ""  # /proc/cpuinfo's model name: with the flags, the probe cache's key

    @classmethod
    def probe(cls) -> Machine:
        """What this machine offers: onnxruntime's providers, whether OpenVINO is installed, CPU
        flags."""
        import onnxruntime as ort

        return cls(
            ort_providers=tuple(ort.get_available_providers()),
            openvino=importlib.util.find_spec("openvino") is not None,
            cpu_flags=read_cpu_flags(),
            cpu_model=read_cpu_field("model name"),
        )

    @property
    def cuda(self) -> bool:
        """Whether onnxruntime can run on CUDA here."""
        return "CUDAExecutionProvider" in self.ort_providers

    @property
    def bf16_units(self) -> bool:
        """Whether the CPU has bf16 units (AMX or AVX512-BF16), without which bf16 is not worth
        it."""
        return bool(BF16_CPU_FLAGS & self.cpu_flags)

    @property
    def cpu_class(self) -> str:
        """The CPU's widest vector unit: amx, avx512_bf16, avx512, avx2 or other."""
        for flag, name in (
            ("amx_bf16", "amx"),
            ("avx512_bf16", "avx512_bf16"),
            ("avx512f", "avx512"),
            ("avx2", "avx2"),
        ):
            if flag in self.cpu_flags:
                return name
        return "other"


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (Linux); empty where /proc/cpuinfo is not readable."""
    return frozenset(read_cpu_field("flags", cpuinfo).split())


def read_cpu_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's ``name`` field of /proc/cpuinfo (Linux); "" where it is not readable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


@dataclass(frozen=True)
class Backend:
    """A runtime, the precision it runs at, and why it was chosen; under ``auto``, possibly a
    contender to time against it per model when the model is loaded (backend_probe)."""

    name: BackendName
    precision: RunPrecision
    reason: str = ""
    contender: Backend | None = None

    @property
    def label(self) -> str:
        """The backend's name and precision in one string, as the report and logs show them."""
        return f"{self.name} {self.precision}"


def choose_backend(
    requested: str = "auto", precision: str = "auto", machine: Machine | None = None
) -> Backend:
    """The backend for ``DSCM_INFERENCE`` / ``DSCM_INFERENCE_PRECISION`` on this machine.

    An explicit backend that is not installed is an error, never a silent fall-back: a GPU
    worker that quietly stains on its CPU is 50 times slower and nobody would notice.
    """
    if requested not in INFERENCE_CHOICES:
        raise ModelError(f"unknown inference backend {requested!r}; choose {INFERENCE_CHOICES}")
    if precision not in PRECISION_CHOICES:
        raise ModelError(f"unknown inference precision {precision!r}; choose {PRECISION_CHOICES}")
    machine = machine or Machine.probe()
    name: BackendName
    contender: Backend | None = None
    if requested == "auto":
        name, reason, contender = _auto_backend(machine)
        if precision != "auto" and contender is not None:
            # a stated precision is not timed: OpenVINO where only it runs that precision
            if precision not in PRECISIONS_OF[name] and precision in PRECISIONS_OF["openvino"]:
                name, reason = "openvino", f"auto: only OpenVINO runs {precision} on this CPU"
            contender = None
    else:
        name, reason = requested, f"DSCM_INFERENCE={requested}"  # type: ignore[assignment]
    if name == "cuda" and not machine.cuda:
        raise ModelError(
            "DSCM_INFERENCE=cuda, but onnxruntime has no CUDAExecutionProvider: install the "
            "[gpu] extra (onnxruntime-gpu, without onnxruntime) on a machine with CUDA"
        )
    if name == "openvino" and not machine.openvino:
        raise ModelError(
            "DSCM_INFERENCE=openvino, but OpenVINO is not installed: the [openvino] extra"
        )
    if precision == "auto":
        chosen: RunPrecision = "bf16" if name == "openvino" and machine.bf16_units else "fp32"
    else:
        chosen = precision  # type: ignore[assignment]
        reason += f", DSCM_INFERENCE_PRECISION={precision}"
    if chosen not in PRECISIONS_OF[name]:
        raise ModelError(f"the {name} backend runs {', '.join(PRECISIONS_OF[name])}, not {chosen}")
    return Backend(name, chosen, reason, contender)


def backend_from_env(environ: Mapping[str, str] | None = None) -> Backend:
    """The backend ``DSCM_INFERENCE`` and ``DSCM_INFERENCE_PRECISION`` name (``auto`` when
    unset): what a model loaded without an explicit backend runs on, so the variables the
    service's settings read also hold for the command line tools, the trainer and the tests."""
    env = os.environ if environ is None else environ
    return choose_backend(
        env.get("DSCM_INFERENCE") or "auto", env.get("DSCM_INFERENCE_PRECISION") or "auto"
    )


def _auto_backend(machine: Machine) -> tuple[BackendName, str, Backend | None]:
    """The backend ``auto`` starts from, why, and the contender each model is timed against."""
    if machine.cuda:
        return "cuda", "auto: onnxruntime has the CUDA provider", None
    if machine.openvino and machine.bf16_units:
        reason = f"auto: the CPU has bf16 units ({machine.cpu_class}): timed per model"
        return "cpu", reason, Backend("openvino", "bf16")
    if machine.openvino and machine.cpu_class in OPENVINO_FP32_FASTER_ON:
        reason = f"auto: OpenVINO fp32 measured faster on {machine.cpu_class} CPUs: timed per model"
        return "cpu", reason, Backend("openvino", "fp32")
    if machine.openvino:
        return (
            "cpu",
            (
                f"auto: no bf16 units ({machine.cpu_class}) and OpenVINO fp32 not measured faster "
                "there: onnxruntime CPU"
            ),
            None,
        )
    return "cpu", "auto: no GPU provider, no OpenVINO: onnxruntime CPU", None


class Runner(Protocol):
    """One loaded model on one backend: named float32 arrays in, float32 arrays out."""

    label: str
    precision: RunPrecision  # what it computes in (OpenVINO may fall back from the hint)
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the network on one batch of named inputs; the outputs in the model's order."""


def open_runner(path: Path, backend: Backend, threads: int | None = None) -> Runner:
    """Load ``path`` on ``backend``; onnxruntime and OpenVINO raise untyped errors."""
    threads = threads or os.cpu_count() or 1
    try:
        if backend.name == "openvino":
            return OpenVinoRunner(path, backend, threads)
        return OrtRunner(path, backend, threads)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load {path.name} on {backend.label}: {exc}") from exc


class OrtRunner:
    """onnxruntime, on the CPU provider or the CUDA provider (with IO binding)."""

    def __init__(self, path: Path, backend: Backend, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        model: str | bytes = str(path) if backend.precision == "fp32" else fp16_model_bytes(path)
        providers: list[Any] = ["CPUExecutionProvider"]
        if backend.name == "cuda":
            preload_cuda_libraries(ort)
            providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
        self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        used = self.session.get_providers()[0]
        if backend.name == "cuda" and used != "CUDAExecutionProvider":
            raise ModelError(
                f"{path.name}: onnxruntime fell back to {used}: the CUDA provider did not load "
                "(driver, CUDA or cuDNN version; see the worker's log)"
            )
        # Outputs land on the device, then come back in one copy per output.
        self.bind_device: str | None = "cuda" if backend.name == "cuda" else None
        self.precision: RunPrecision = backend.precision
        self.label = f"{used} {backend.precision}"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session; with a bound device, through I/O binding so outputs are not copied per
        call."""
        if self.bind_device is None:
            return list(self.session.run(None, dict(feeds)))
        return self.run_bound(feeds, self.bind_device)

    def run_bound(self, feeds: Mapping[str, np.ndarray], device: str) -> list[np.ndarray]:
        """Run with IO binding: inputs copied to ``device`` once, outputs allocated there."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels of ``onnxruntime-gpu[cuda,cudnn]`` when
    they are installed; a base image's system libraries are found without it."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload(directory="")
    except OSError:  # not pip-installed: the default library path still applies
        return


def fp16_model_bytes(path: Path) -> bytes:
    """``path`` with fp16 weights and activations, fp32 inputs, outputs and norm statistics."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as exc:
        raise ModelError(f"fp16 needs the onnx package (the [gpu] extra has it): {exc}") from exc
    model = onnx.load(str(path))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS]
    )
    return bytes(converted.SerializeToString())


class OpenVinoRunner:
    """The OpenVINO runtime on the CPU; one infer request per calling thread."""

    def __init__(self, path: Path, backend: Backend, threads: int) -> None:
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[backend.precision],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        # OpenVINO falls back to f32 where the CPU has no unit for the hint: report what runs.
        actual = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision: RunPrecision = OPENVINO_TYPES.get(actual, backend.precision)
        self.label = f"OpenVINO CPU {OPENVINO_TYPES.get(actual, actual)}"
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self._local = threading.local()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on this thread's infer request (one per thread; requests are not thread-safe),
        copying the outputs out because the request reuses their memory."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer(dict(feeds))
        # The request reuses its output memory on the next call: copy out.
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]
