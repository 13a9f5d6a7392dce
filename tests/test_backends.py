"""Inference backends: the choice DSCM_INFERENCE makes, and the accuracy guard (every backend
this machine has stays >= 40 dB PSNR from onnxruntime fp32, on a real tile and a whole slide,
with no new seams)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from engine_fixtures import SAMPLE_SCAN
from onnx_factory import make_despeckler, make_generator
from support.inference import MIN_PSNR_DB, REFERENCE, bf16_emulated, psnr_db
from support.pairs import write_gray

from service.core.backends import (
    Backend,
    Machine,
    OrtRunner,
    choose_backend,
    open_runner,
    read_cpu_flags,
)
from service.core.models import OnnxModel, discover_models
from service.core.normalize import estimate_range, normalize
from service.engine.pipeline import StainSpec, load_models, stain_slide
from service.slide import SlideInputs, open_pair, resolve_scan_dir
from service.vocabulary.errors import ModelError
from service.vocabulary.options import JobOptions

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models"
CPU = ("CPUExecutionProvider", "AzureExecutionProvider")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AMX = AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
MODEL_MPP = {"xres": 1000 / 0.75, "yres": 1000 / 0.75}  # pixels per mm: the models' 0.75 um/px


def machine(providers=CPU, openvino=False, flags=AVX2) -> Machine:
    return Machine(ort_providers=tuple(providers), openvino=openvino, cpu_flags=frozenset(flags))


# ---- the choice ----


def test_default_install_picks_onnxruntime_cpu() -> None:
    backend = choose_backend("auto", "auto", machine())
    assert (backend.name, backend.precision) == ("cpu", "fp32")
    assert "no OpenVINO" in backend.reason


def test_auto_prefers_cuda_when_onnxruntime_has_it() -> None:
    gpu = machine(providers=("CUDAExecutionProvider", *CPU), openvino=True, flags=AMX)
    backend = choose_backend("auto", "auto", gpu)
    assert (backend.name, backend.precision) == ("cuda", "fp32")
    assert choose_backend("auto", "fp16", gpu).precision == "fp16"


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_times_openvino_bf16_per_model_on_cpus_with_bf16_units(flag: str) -> None:
    """bf16 only where it measures faster for the model (tests/test_backend_probe.py)."""
    backend = choose_backend("auto", "auto", machine(openvino=True, flags=AVX2 | {flag}))
    assert (backend.name, backend.precision) == ("cpu", "fp32")
    assert backend.contender == Backend("openvino", "bf16")


def test_auto_stays_on_onnxruntime_where_openvino_fp32_is_not_faster() -> None:
    backend = choose_backend("auto", "auto", machine(openvino=True))
    assert (backend.name, backend.precision) == ("cpu", "fp32")
    # Asked for explicitly, OpenVINO runs fp32 on a CPU without bf16 units.
    assert choose_backend("openvino", "auto", machine(openvino=True)).precision == "fp32"


@pytest.mark.parametrize(
    ("requested", "precision", "host", "message"),
    [
        ("cuda", "auto", machine(), "no CUDAExecutionProvider"),
        ("openvino", "auto", machine(), "OpenVINO is not installed"),
        ("cpu", "bf16", machine(), "runs fp32, not bf16"),
        ("cuda", "bf16", machine(providers=("CUDAExecutionProvider",)), "not bf16"),
        ("tpu", "auto", machine(), "unknown inference backend"),
        ("cpu", "int8", machine(), "unknown inference precision"),
    ],
)
def test_impossible_choices_are_errors_not_fallbacks(
    requested: str, precision: str, host: Machine, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        choose_backend(requested, precision, host)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO not installed")
def test_a_model_loaded_without_a_backend_runs_the_one_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI tools, the trainer and the tests load models without a backend: they honour
    DSCM_INFERENCE and DSCM_INFERENCE_PRECISION like the service does."""
    path = make_despeckler(tmp_path)
    monkeypatch.setenv("DSCM_INFERENCE", "openvino")
    monkeypatch.setenv("DSCM_INFERENCE_PRECISION", "fp32")
    model = OnnxModel(path, 1)
    assert model.backend == Backend("openvino", "fp32", model.backend.reason)
    assert model.provider == "OpenVINO CPU fp32" and model.precision == "fp32"
    monkeypatch.setenv("DSCM_INFERENCE", "cpu")
    monkeypatch.delenv("DSCM_INFERENCE_PRECISION")
    assert OnnxModel(path, 1).provider == "CPUExecutionProvider fp32"


def test_cpu_flags_and_class(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f amx_bf16\n\n")
    flags = read_cpu_flags(cpuinfo)
    assert {"avx2", "avx512f", "amx_bf16"} <= flags
    assert machine(flags=flags).cpu_class == "amx" and machine(flags=flags).bf16_units
    assert machine().cpu_class == "avx2" and not machine().bf16_units
    assert read_cpu_flags(tmp_path / "absent") == frozenset()


def test_a_cuda_session_that_falls_back_to_the_cpu_is_refused(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    path = make_despeckler(tmp_path)
    with pytest.raises(ModelError, match="fell back to CPUExecutionProvider"):
        OrtRunner(path, Backend("cuda", "fp32"), threads=1)


def test_io_binding_gives_the_plain_run(tmp_path: Path) -> None:
    """The CUDA path's IO binding, exercised on the CPU device."""
    runner = OrtRunner(make_generator(tmp_path), Backend("cpu", "fp32"), threads=1)
    rng = np.random.default_rng(0)
    feeds = {
        "image": rng.uniform(-1, 1, (2, 3, 40, 40)).astype(np.float32),
        "norm_stats": rng.uniform(0, 1, (2, 16)).astype(np.float32),
        "norm_mix": np.asarray([0.5], np.float32),
    }
    plain, bound = runner.run(feeds), runner.run_bound(feeds, "cpu")
    assert [o.shape for o in bound] == [(2, 3, 40, 40), (2, 16)]
    for a, b in zip(plain, bound, strict=True):
        np.testing.assert_array_equal(a, b)


def test_report_names_the_backend_that_ran(make_pair, shared_models: Path, tmp_path: Path) -> None:
    spec = StainSpec(models_dir=shared_models, tile_px=256, inference="cpu", threads=1)
    report = stain_slide(make_pair(300, 400, **MODEL_MPP), tmp_path / "out.tif", spec).to_dict()
    assert report["providers"] == ["CPUExecutionProvider fp32"]
    assert report["backend_reason"] == {
        "despeckle": "DSCM_INFERENCE=cpu",
        "generator": "DSCM_INFERENCE=cpu",
    }


# ---- the accuracy guard, on the shipped models ----


def available_backends() -> list[Backend]:
    """onnxruntime fp32 (the reference), and every other backend this machine can run."""
    host = Machine.probe()
    found = [Backend("cpu", "fp32")]
    if host.openvino:
        found.append(choose_backend("openvino", "auto", host))
        if host.bf16_units:
            found.append(Backend("openvino", "fp32"))
    if host.cuda:
        found += [Backend("cuda", "fp32"), Backend("cuda", "fp16")]
    return found


OTHER_BACKENDS = [b for b in available_backends() if b != Backend("cpu", "fp32")]


@pytest.fixture(scope="module")
def real_tile() -> tuple[np.ndarray, np.ndarray]:
    """A 320 px tile (plus a 96 px halo) of the bundled skin scan, normalised like a slide."""
    info, rcm, fcm = open_pair(resolve_scan_dir(SAMPLE_SCAN), 400_000_000)
    side, x, y = 320 + 2 * 96, info.width_px // 3, info.height_px // 3
    fcm_block, rcm_block = (
        normalize(mode.read_padded(x, y, side, side), estimate_range(mode.thumbnail(1024)))
        for mode in (fcm, rcm)
    )
    return fcm_block, rcm_block


def shipped_model_paths() -> dict[str, Path]:
    found = discover_models(SHIPPED)
    if not found:
        pytest.skip("no shipped models")
    return dict(found)


@pytest.mark.parametrize("backend", OTHER_BACKENDS, ids=lambda b: b.label.replace(" ", "-"))
def test_each_backend_matches_fp32_on_a_real_tile(
    backend: Backend, real_tile: tuple[np.ndarray, np.ndarray]
) -> None:
    fcm, rcm = real_tile
    gareau_like = np.stack([fcm, rcm, 0.5 * (fcm + rcm)])[None]
    for role, path in shipped_model_paths().items():
        reference, other = OnnxModel(path, 2, REFERENCE), OnnxModel(path, 2, backend)
        block = rcm[None, None] if role == "despeckle" else gareau_like
        stats = None
        if reference.card.norm == "instance_shared":
            _, stats = reference.run(block, norm_stats=None)
        want, _ = reference.run(block, norm_stats=stats)
        got, _ = other.run(block, norm_stats=stats)
        assert got.shape == want.shape
        assert psnr_db(got, want, 1.0) >= MIN_PSNR_DB, (role, other.provider)


def test_shipped_models_in_emulated_bf16_pass_the_guard(
    real_tile: tuple[np.ndarray, np.ndarray],
) -> None:
    """bf16 on any CPU (support.inference): the guard a bf16 machine's auto choice is held to."""
    fcm, rcm = real_tile
    for role, path in shipped_model_paths().items():
        reference, half = OnnxModel(path, 2, REFERENCE), bf16_emulated(path)
        block = rcm[None, None] if role == "despeckle" else np.stack([fcm, rcm, fcm])[None]
        stats = None
        if reference.card.norm == "instance_shared":
            _, stats = reference.run(block, norm_stats=None)
        want, _ = reference.run(block, norm_stats=stats)
        got, _ = half.run(block, norm_stats=stats)
        assert half.precision == "bf16" and not np.array_equal(got, want)
        assert psnr_db(got, want, 1.0) >= MIN_PSNR_DB, role


def test_fp16_graph_keeps_the_interface_and_the_accuracy(
    real_tile: tuple[np.ndarray, np.ndarray],
) -> None:
    """The CUDA fp16 conversion, run on the CPU: same inputs and outputs (fp32), and >= 40 dB
    (on the CPU this checks fp16 weights and the graph; bench/gpu.sh measures fp16 on a GPU)."""
    fcm, rcm = real_tile
    for role, path in shipped_model_paths().items():
        reference = OnnxModel(path, 2, REFERENCE)
        half = open_runner(path, Backend("cpu", "fp16"), 2)
        assert half.input_names == reference.input_names
        block = rcm[None, None] if role == "despeckle" else np.stack([fcm, rcm, fcm])[None]
        feeds: dict[str, np.ndarray] = {reference.input_names[0]: reference.to_model_range(block)}
        if reference.card.norm == "instance_shared":
            _, stats = reference.run(block, norm_stats=None)
            assert stats is not None
            feeds[reference.input_names[1]] = stats
            feeds[reference.input_names[2]] = np.ones(1, np.float32)
        else:
            stats = None
        want, _ = reference.run(block, norm_stats=stats)
        got = reference.from_model_range(half.run(feeds)[0])
        assert got.dtype == np.float32
        assert psnr_db(got, want, 1.0) >= MIN_PSNR_DB, role


def seam_jump(diff: np.ndarray, tile_px: int) -> tuple[float, float]:
    """Mean step of ``diff`` across tile borders, and across every other row and column."""
    steps = [
        np.abs(np.diff(diff, axis=axis)).mean(axis=tuple({0, 1, 2} - {axis})) for axis in (0, 1)
    ]
    borders = [np.arange(tile_px - 1, len(s), tile_px) for s in steps]
    at_border = np.concatenate([s[b] for s, b in zip(steps, borders, strict=True)])
    elsewhere = np.concatenate([np.delete(s, b) for s, b in zip(steps, borders, strict=True)])
    return float(at_border.mean()), float(elsewhere.mean())


def test_seam_measure_sees_a_seam() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (512, 512, 3))
    seamy = noise + np.kron(rng.normal(0, 4, (4, 4)), np.ones((128, 128)))[..., None]
    border, elsewhere = seam_jump(seamy, 128)
    assert border > 2 * elsewhere
    border, elsewhere = seam_jump(noise, 128)
    assert border < 1.2 * elsewhere


@pytest.fixture(scope="module")
def sample_crop(tmp_path_factory: pytest.TempPathFactory) -> SlideInputs:
    """A 768 x 576 crop of the bundled scan, written as a pair of TIFFs."""
    folder = tmp_path_factory.mktemp("crop")
    info, rcm, fcm = open_pair(resolve_scan_dir(SAMPLE_SCAN), 400_000_000)
    x, y = info.width_px // 4, info.height_px // 4
    paths = {}
    for name, mode in (("rcm", rcm), ("fcm", fcm)):
        pixels = mode.read_padded(x, y, 768, 576)[:576, :768]
        unit = pixels.astype(np.float32) / max(float(pixels.max()), 1.0)
        paths[name] = write_gray(folder / f"{name}.tif", unit, **MODEL_MPP)
    return SlideInputs(rcm=paths["rcm"], fcm=paths["fcm"])


@pytest.mark.parametrize("backend", OTHER_BACKENDS, ids=lambda b: b.label.replace(" ", "-"))
def test_each_backend_matches_fp32_on_a_whole_slide_without_new_seams(
    backend: Backend, sample_crop: SlideInputs, tmp_path: Path
) -> None:
    found = shipped_model_paths()
    stages = ("despeckle", "median", "gareau", "generator")
    stages = tuple(s for s in stages if s in found or s in ("median", "gareau"))
    outputs = {}
    for label, chosen in (("reference", Backend("cpu", "fp32")), ("other", backend)):
        spec = StainSpec(
            options=JobOptions(stages=stages, compression="lossless"),  # type: ignore[arg-type]
            models_dir=SHIPPED, tile_px=256, threads=2,
            inference=chosen.name, inference_precision=chosen.precision,
        )  # fmt: skip
        out = tmp_path / f"{label}.tif"
        report = stain_slide(sample_crop, out, spec, models=load_models(spec)).to_dict()
        assert report["tiles"]["computed"] >= 4
        outputs[label] = tifffile.imread(out, key=0).astype(np.float64)
    assert psnr_db(outputs["other"], outputs["reference"], 255.0) >= MIN_PSNR_DB
    border, elsewhere = seam_jump(outputs["other"] - outputs["reference"], 256)
    assert border <= 2 * elsewhere + 0.05, (border, elsewhere)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO not installed")
def test_openvino_serves_concurrent_callers(tmp_path: Path) -> None:
    """One infer request per thread: a threads-pool worker shares one loaded model."""
    from concurrent.futures import ThreadPoolExecutor

    model = OnnxModel(make_despeckler(tmp_path), 1, Backend("openvino", "fp32"))
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 1, 48 + 8 * i, 48), dtype=np.float32) for i in range(6)]
    alone = [model.run(b)[0] for b in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda b: model.run(b)[0], batches))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dscm_models_says_which_backend_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from service.cli import main
    from service.runtime.config import get_settings

    lines = {}
    monkeypatch.setenv("DSCM_INFERENCE_PRECISION", "auto")  # the backend's own precision
    for requested in ("cpu", "cuda"):
        monkeypatch.setenv("DSCM_INFERENCE", requested)
        get_settings.cache_clear()
        result = CliRunner().invoke(main, ["models", "--models", str(SHIPPED)])
        assert result.exit_code == 0, result.output
        lines[requested] = next(x for x in result.output.splitlines() if x.startswith("inference:"))
        if requested == "cpu":  # each model says where it runs, and why
            assert "           runs on cpu fp32 (DSCM_INFERENCE=cpu)" in result.output.splitlines()
    get_settings.cache_clear()
    assert lines["cpu"] == "inference: cpu fp32 (DSCM_INFERENCE=cpu)"
    if not Machine.probe().cuda:
        assert lines["cuda"].startswith("inference: unavailable: DSCM_INFERENCE=cuda, but")
