"""``auto`` per model (service.core.backend_probe): OpenVINO bf16 only where a timed probe on
that model says it is faster without needing more memory than onnxruntime fp32; the result is
cached per machine and model. The machine and the probe are faked here (the CPU flags and the
timings of an AVX2, an AVX512-BF16 and an AMX machine); one test runs the real child probe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from onnx_factory import make_despeckler

from service.core.backend_probe import (
    ProbeResult,
    cache_key,
    probe_in_child,
    settle_backend,
)
from service.core.backends import Backend, Machine, choose_backend
from service.core.models import OnnxModel, file_sha256

CPU = ("CPUExecutionProvider",)
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


def machine(flags: frozenset[str], cpu_model: str = "Test CPU", openvino: bool = True) -> Machine:
    return Machine(CPU, openvino, flags, cpu_model)


class FakeProbe:
    """Timings per backend name, and the calls it was asked for."""

    def __init__(self, cpu: ProbeResult, openvino: ProbeResult) -> None:
        self.results = {"cpu": cpu, "openvino": openvino}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, path: Path, backend: Backend, threads: int) -> ProbeResult:
        self.calls.append((backend.name, backend.precision))
        return self.results[backend.name]


def settle(host: Machine, probe: FakeProbe, cache: Path, sha: str = "a" * 64) -> Backend:
    auto = choose_backend("auto", "auto", host)
    return settle_backend(auto, Path("model.onnx"), sha, 2, host, probe, cache)


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX], ids=["avx512_bf16", "amx"])
def test_bf16_that_measures_slower_is_not_taken(flags: frozenset[str], tmp_path: Path) -> None:
    """The issue's Xeon: OpenVINO bf16 slower than onnxruntime fp32 on the large generator."""
    probe = FakeProbe(ProbeResult(0.41, 300.0), ProbeResult(0.55, 280.0))
    backend = settle(machine(flags), probe, tmp_path / "cache.json")
    assert (backend.name, backend.precision) == ("cpu", "fp32")
    assert backend.reason == (
        "probe: cpu fp32 0.41 s, +300 MB vs openvino bf16 0.55 s, +280 MB"
        " (openvino bf16 not faster)"
    )
    assert probe.calls == [("cpu", "fp32"), ("openvino", "bf16")]


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX], ids=["avx512_bf16", "amx"])
def test_bf16_that_measures_faster_and_leaner_is_taken(
    flags: frozenset[str], tmp_path: Path
) -> None:
    probe = FakeProbe(ProbeResult(0.60, 300.0), ProbeResult(0.20, 250.0))
    backend = settle(machine(flags), probe, tmp_path / "cache.json")
    assert (backend.name, backend.precision) == ("openvino", "bf16")
    assert (
        backend.reason.startswith("probe: cpu fp32 0.60 s")
        and "openvino bf16 0.20 s" in backend.reason
    )


def test_faster_but_needing_more_memory_is_not_taken(tmp_path: Path) -> None:
    probe = FakeProbe(ProbeResult(0.60, 300.0), ProbeResult(0.30, 900.0))
    backend = settle(machine(AMX), probe, tmp_path / "cache.json")
    assert (backend.name, backend.precision) == ("cpu", "fp32")
    assert backend.reason.endswith("(openvino bf16 more memory)")


def test_a_few_percent_is_not_faster(tmp_path: Path) -> None:
    """Within PROBE_MIN_GAIN the known quantity, onnxruntime, stays."""
    probe = FakeProbe(ProbeResult(0.50, 300.0), ProbeResult(0.47, 300.0))
    assert settle(machine(AMX), probe, tmp_path / "cache.json").name == "cpu"


def test_the_probe_runs_once_per_machine_and_model(tmp_path: Path) -> None:
    cache = tmp_path / "probes" / "cache.json"
    probe = FakeProbe(ProbeResult(0.60, 300.0), ProbeResult(0.20, 250.0))
    first = settle(machine(AMX), probe, cache)
    again = settle(machine(AMX), probe, cache)
    assert len(probe.calls) == 2 and (again.name, again.precision) == (first.name, first.precision)
    assert again.reason.startswith("probe, cached: cpu fp32 0.60 s")
    assert len(json.loads(cache.read_text())) == 1
    settle(machine(AMX), probe, cache, sha="b" * 64)  # another model
    settle(machine(AMX, cpu_model="Other CPU"), probe, cache)  # another machine
    settle(machine(AVX512_BF16), probe, cache)  # same name, other flags
    assert len(probe.calls) == 8 and len(json.loads(cache.read_text())) == 4


def test_an_unwritable_cache_only_costs_a_probe(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    probe = FakeProbe(ProbeResult(0.60, 300.0), ProbeResult(0.20, 250.0))
    assert settle(machine(AMX), probe, blocker / "cache.json").name == "openvino"
    (tmp_path / "broken.json").write_text("{not json")
    assert settle(machine(AMX), probe, tmp_path / "broken.json").name == "openvino"


@pytest.mark.parametrize("openvino", [True, False])
def test_avx2_and_no_openvino_are_not_probed(openvino: bool, tmp_path: Path) -> None:
    """Without bf16 units OpenVINO fp32 measured no faster at tile size: onnxruntime, no probe."""
    probe = FakeProbe(ProbeResult(0.60, 300.0), ProbeResult(0.20, 250.0))
    host = machine(AVX2, openvino=openvino)
    backend = settle(host, probe, tmp_path / "cache.json")
    assert (backend.name, backend.precision) == ("cpu", "fp32") and probe.calls == []
    assert not (tmp_path / "cache.json").exists()
    assert settle(machine(AMX, openvino=False), probe, tmp_path / "c.json").name == "cpu"
    assert probe.calls == []


def test_a_stated_precision_or_backend_is_not_probed() -> None:
    assert choose_backend("auto", "bf16", machine(AMX)) == Backend(
        "openvino",
        "bf16",
        "auto: only OpenVINO runs bf16 on this CPU, DSCM_INFERENCE_PRECISION=bf16",
    )
    assert choose_backend("auto", "fp32", machine(AMX)).contender is None
    assert choose_backend("openvino", "auto", machine(AMX)).contender is None
    assert choose_backend("cpu", "auto", machine(AMX)).contender is None


def test_cache_key_names_the_machine_and_model() -> None:
    key = cache_key(machine(AMX, "Intel Xeon 8480"), "f" * 64, Backend("openvino", "bf16"), 2)
    assert key.startswith("Intel Xeon 8480|flags ") and key.endswith(
        "|2 threads|openvino bf16|" + "f" * 64
    )
    assert key != cache_key(
        machine(AVX512_BF16, "Intel Xeon 8480"), "f" * 64, Backend("openvino", "bf16"), 2
    )


def test_the_real_child_probe_times_onnxruntime(tmp_path: Path) -> None:
    """No fake: a child process loads a small model on onnxruntime fp32 and times it."""
    result = probe_in_child(make_despeckler(tmp_path), Backend("cpu", "fp32"), 1)
    assert 0 < result.seconds < 30 and result.peak_mb >= 0


def test_a_model_loaded_under_auto_runs_where_the_probe_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OnnxModel settles an auto backend with a contender through the cache (filled here, so
    nothing is timed) and keeps the reason for the report."""
    path = make_despeckler(tmp_path)
    cache = tmp_path / "cache.json"
    monkeypatch.setenv("DSCM_BACKEND_CACHE", str(cache))
    has_openvino = importlib.util.find_spec("openvino") is not None
    contender = Backend("openvino", "bf16")
    fast = {"seconds": 0.1, "peak_mb": 10.0}
    slow = {"seconds": 1.0, "peak_mb": 10.0}
    key = cache_key(Machine.probe(), file_sha256(path), contender, 1)
    cache.write_text(json.dumps({key: {"base": slow, "contender": fast if has_openvino else slow}}))
    auto = Backend("cpu", "fp32", "auto: the CPU has bf16 units (amx): timed per model", contender)
    model = OnnxModel(path, 1, auto)
    assert model.backend.contender is None
    assert model.backend.reason.startswith("probe, cached: cpu fp32 1.00 s")
    if has_openvino:
        assert model.backend.name == "openvino" and model.provider.startswith("OpenVINO CPU")
    else:
        assert model.provider == "CPUExecutionProvider fp32"
