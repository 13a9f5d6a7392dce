"""The residual generator (issue 22, parts 4 and 5): identity at the start, no grid by
construction, the colour stage's glass kept by construction (the glass gate), one training
step in fp32 and bf16, resumable, and training/gpu/train.sh end to end on the CPU (a few steps
on tiny data: a valid ONNX with its card, and the measures)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.cards import card_problems
from service.core.chain import StainChain, crop
from service.core.colour import WEIGHT_LOW, WEIGHT_RAMP, load_colour_target, tissue_weight
from service.core.models import OnnxModel
from service.core.quality import checkerboard_db
from service.core.stain import gareau_stain
from training.export import CardInfo, export_model
from training.networks import ResidualGenerator, glass_gate, init_weights
from training.train_residual import (
    ResidualGan,
    ResidualOptions,
    load_residual_generator,
    lr_at,
    select_best,
    select_key,
    train_residual,
    validation_measures,
)

REPO = Path(__file__).resolve().parents[2]


def test_starts_at_the_identity_and_stays_in_range() -> None:
    torch.manual_seed(0)
    generator = ResidualGenerator(ngf=4, n_blocks=2)
    init_weights(generator)
    generator.zero_last()
    image = torch.rand(2, 3, 40, 36) * 2 - 1
    assert torch.equal(generator(image), image)
    init_weights(generator, gain=0.5)
    assert generator(image).abs().max() <= 1.0


def test_shift_equivariant_so_no_grid() -> None:
    """Stride-free: shifting the input by one pixel shifts the output by one pixel (a strided
    network's output changes), and a smooth image stays free of a 2- or 4-px grid."""
    torch.manual_seed(1)
    generator = ResidualGenerator(ngf=8, n_blocks=2).eval()
    init_weights(generator, gain=0.3)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():  # fixed statistics, as in tiled inference
        _, stats = generator.forward_shared(
            image, torch.zeros(1, generator.norm_stats_size), torch.zeros(1)
        )
        out, _ = generator.forward_shared(image, stats, torch.ones(1))
        shifted, _ = generator.forward_shared(image[:, :, 1:, 1:], stats, torch.ones(1))
    inner = (slice(None), slice(None), slice(16, 40), slice(16, 40))
    assert torch.allclose(out[:, :, 1:, 1:][inner], shifted[inner], atol=1e-5)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    smooth = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.2 * np.cos(5 * yy), 0.6 + 0 * xx])
    with torch.no_grad():
        rgb = generator(torch.from_numpy(smooth[None] * 2 - 1).float())[0].numpy()
    hwc = np.clip((np.moveaxis(rgb, 0, -1) + 1) * 127.5, 0, 255).astype(np.uint8)
    assert checkerboard_db(hwc) < 3.0


@pytest.mark.parametrize("bf16", [False, True])
def test_one_step_moves_the_generator(tmp_path: Path, bf16: bool) -> None:
    options = ResidualOptions(
        prepared_dir="", out_dir=str(tmp_path), ngf=4, n_blocks=2, ndf=8, bf16=bf16
    )
    torch.manual_seed(0)
    model = ResidualGan(options, torch.device("cpu"))
    a, b, real = (torch.rand(2, 3, 48, 48) * 2 - 1 for _ in range(3))
    for _ in range(2):  # the zero last layer moves first, then the body behind it
        losses = model.step(a, b, real, lr=1e-3)
    assert set(losses) == {"G_adv", "paired", "faithful", "D"}
    assert all(np.isfinite(v) for v in losses.values())
    with torch.no_grad():
        assert not torch.equal(model.g(a), a)


def test_learning_rate_decays_over_the_second_half() -> None:
    options = ResidualOptions(prepared_dir="", out_dir="", steps=100, lr=1.0)
    assert lr_at(options, 10, 0.0) == 1.0
    assert lr_at(options, 75, 0.0) == pytest.approx(0.5)
    timed = ResidualOptions(prepared_dir="", out_dir="", steps=10**6, lr=1.0, time_budget_s=100)
    assert lr_at(timed, 1, 75.0) == pytest.approx(0.5) and lr_at(timed, 1, 120.0) == 0.0


def test_resumes_where_it_stopped(prepared_dir: Path, tmp_path: Path) -> None:
    def options(steps: int) -> ResidualOptions:
        return ResidualOptions(
            prepared_dir=str(prepared_dir),
            out_dir=str(tmp_path / "run"),
            despeckle_onnx="",
            colour_card=str(REPO / "models" / "colour.json"),
            ngf=4,
            n_blocks=2,
            ndf=8,
            crop_px=48,
            batch_size=1,
            steps=steps,
            checkpoint_every=2,
            max_val_images=1,
        )

    run = train_residual(options(2))
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    train_residual(options(3))
    second = torch.load(run / "checkpoint.pt", weights_only=False)
    assert second["step"] == 3 and second["elapsed_s"] >= first["elapsed_s"]
    rows = (run / "losses.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [
        "step-000002.pt",
        "step-000003.pt",
    ]
    chosen = select_best(run)  # the shipping rule, applied to the finished run's snapshots
    assert chosen["step"] in (2, 3) and "val_swd" in chosen and "val_eligible" in chosen
    _, info = load_residual_generator(run, "best")
    assert info["step"] == chosen["step"] and info["val_swd"] == pytest.approx(chosen["val_swd"])


def test_the_shipping_rule_orders_checkpoints() -> None:
    """No worse than the colour stage on PSNR, SSIM and CIEDE2000 first, then the lowest SWD;
    a checkpoint that is worse on any of the three ranks by PSNR below every eligible one."""
    colour = {"val_psnr_db": 18.0, "val_ssim": 0.66, "val_ciede2000": 9.4, "val_swd": 0.18}

    def key(psnr: float, ssim: float, ciede: float, swd: float) -> tuple[int, float]:
        validation = {"val_psnr_db": psnr, "val_ssim": ssim, "val_ciede2000": ciede}
        return select_key({**validation, "val_swd": swd}, colour)

    sharp_but_far = key(21.6, 0.74, 6.9, 0.20)
    closer = key(20.5, 0.70, 8.0, 0.15)
    loses_ssim = key(22.0, 0.60, 6.0, 0.05)
    assert closer > sharp_but_far > loses_ssim
    assert key(19.0, 0.70, 9.0, 0.30) > key(25.0, 0.65, 5.0, 0.01)
    assert key(17.0, 0.5, 12.0, 0.1) < key(17.5, 0.4, 13.0, 0.9)  # neither eligible: PSNR


def test_validation_swd_sees_a_blurred_set() -> None:
    rng = np.random.default_rng(0)
    truths = [rng.random((3, 64, 64)).astype(np.float32) for _ in range(4)]
    same = validation_measures(truths, truths)
    blurred = [
        (t + np.roll(t, 1, 1) + np.roll(t, 1, 2) + np.roll(t, 1, (1, 2))) / 4 for t in truths
    ]
    assert same["val_swd"] < 1e-6 < validation_measures(blurred, truths)["val_swd"]


def test_gpu_script_runs_on_the_cpu(fake_data_root: Path, tmp_path: Path) -> None:
    """training/gpu/train.sh, a few CPU steps on tiny data: exports a valid ONNX with its card
    (off by default) that the engine loads, and prints and writes the measures."""
    out = tmp_path / "gpu"
    env = {
        **os.environ,
        "DATA": str(fake_data_root),
        "OUT": str(out),
        "DEVICE": "cpu",
        "BF16": "0",
        "NGF": "4",
        "BLOCKS": "2",
        "NDF": "8",
        "CROP_PX": "48",
        "BATCH": "2",
        "STEPS": "3",
        "CKPT_EVERY": "2",
        "PATCH_PX": "128",
        "EVAL_IMAGES": "2",
        "TEXTURE": "0",
        "BUDGET_S": "0",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO / "training" / "gpu" / "train.sh"), "--threads", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "models" / "generator.json").read_text())
    assert card_problems(card) == []
    assert card["role"] == "generator" and card["default"] is False
    assert card["architecture"].startswith("residual_generator(ngf=4,n_blocks=2")
    assert card["size_multiple_px"] == 1 and card["norm"] == "instance_shared"
    assert card["training_data"]["checkpoint"]["step"] in (2, 3)
    model = OnnxModel(out / "models" / "generator.onnx")
    rgb = np.random.default_rng(0).random((1, 3, 37, 41), dtype=np.float32)
    output, stats = model.run(rgb, norm_stats=None)
    assert output.shape == rgb.shape and stats is not None
    measures = json.loads((out / "measures.json").read_text())
    assert set(measures["held_out_skin"]) == {"Gareau", "colour transfer", "colour + generator"}
    assert "colour + generator" in done.stdout and "nuc_r=" in done.stdout


def test_input_follows_the_chain_on_the_median(tmp_path: Path) -> None:
    """The generator learns on what the chain gives it: the 3x3 median only where the
    despeckler's card keeps it after the network (``median_after``)."""
    onnx = tmp_path / "despeckle.onnx"
    card = tmp_path / "despeckle.json"
    options = ResidualOptions(prepared_dir="", out_dir="", despeckle_onnx=str(onnx))
    assert options.resolved_median() is True  # no card: the paper's chain
    card.write_text(json.dumps({"median_after": False}))
    assert options.resolved_median() is False
    card.write_text(json.dumps({}))
    assert options.resolved_median() is True
    options.median = False
    assert options.resolved_median() is False


def glassy_pair(size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Left half glass carrying faint fluorescence and speckle (FCM + RCM at most 0.1, where
    the colour stage's tissue weight is 0); right half tissue with nuclei under speckle."""
    rng = np.random.default_rng(5)
    fcm = rng.uniform(0.0, 0.05, (size_px, size_px)).astype(np.float32)
    rcm = (0.03 * rng.gamma(25.0, 1 / 25.0, (size_px, size_px))).clip(0, 0.05)
    tissue = np.s_[:, size_px // 2 :]
    yy, xx = np.mgrid[0:size_px, 0 : size_px - size_px // 2]
    nuclei = (np.sin(xx / 3.0) * np.sin(yy / 4.0) > 0.6).astype(np.float32)
    fcm[tissue] = 0.15 + 0.7 * nuclei
    rcm[tissue] = 0.45 * rng.gamma(4.0, 1 / 4.0, nuclei.shape).clip(0, 2.2)
    return fcm, rcm.astype(np.float32)


@pytest.mark.parametrize("gate", [True, False])
def test_the_glass_gate_keeps_the_colour_stages_glass(tmp_path: Path, gate: bool) -> None:
    """Colour + a generator whose correction is large everywhere, run by the engine's chain:
    with the gate, every pixel the colour stage left as glass (tissue weight 0) keeps the colour
    stage's value within one level while tissue changes; without it, the glass changes too."""
    torch.manual_seed(3)
    generator = ResidualGenerator(ngf=4, n_blocks=2, glass_gate=gate)
    init_weights(generator, gain=0.5)
    onnx = tmp_path / "generator.onnx"
    export_model(generator, onnx, CardInfo(name="gated" if gate else "ungated"))
    colour = load_colour_target(REPO / "models" / "colour.json")
    networks = {"generator": OnnxModel(onnx)}
    with_generator = StainChain(("gareau", "colour", "generator"), networks, colour)
    colour_only = StainChain(("gareau", "colour"), colour=colour)
    halo = with_generator.halo_px
    fcm, rcm = glassy_pair(96 + 2 * halo)
    for chain in (with_generator, colour_only):
        chain.estimate_slide_stats([(fcm, rcm)])
    out = with_generator.run(fcm[None], rcm[None])[0].astype(int)
    base = colour_only.run(crop(fcm, halo)[None], crop(rcm, halo)[None])[0].astype(int)
    glass = tissue_weight(crop(fcm, halo), crop(rcm, halo)) == 0
    assert glass[:, :40].all() and not glass[:, 56:].any()
    assert base[glass].min() >= 235  # the colour stage's glass is white
    glass_change = np.abs(out[glass] - base[glass]).max()
    tissue_change = np.abs(out[~glass] - base[~glass]).mean()
    assert tissue_change > 5.0  # the correction acts on tissue
    if gate:
        assert glass_change <= 1
    else:
        assert glass_change > 5


def test_the_gate_is_zero_wherever_the_colour_stage_leaves_glass() -> None:
    """Every (FCM, RCM) with FCM + RCM <= the colour stage's WEIGHT_LOW gives Gareau's RGB a
    gate of exactly 0; tissue at full weight gets a gate above 0."""
    axis = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    fcm, rcm = np.meshgrid(axis, axis, indexing="ij")
    rgb = torch.from_numpy(gareau_stain(fcm, rcm)[None] * 2 - 1)
    gate = glass_gate(rgb)[0, 0].numpy()
    weight = tissue_weight(fcm, rcm)
    assert (gate[weight == 0] == 0).all()
    # fluorescence: full weight one level after the colour stage's (the gate's margin)
    assert (gate[fcm >= WEIGHT_LOW + WEIGHT_RAMP + 0.01] == 1).all()
    assert (gate[weight == 1] > 0).all()
