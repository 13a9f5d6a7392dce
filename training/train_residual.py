"""The residual generator: a learned correction on top of the colour stage (issue 22, part 4).

Input: the colour stage's output for synthetic confocal of real skin slides (``train_skin``),
exactly what the engine's chain gives the generator (``training.domains.skin_domains``: the
engine's normalisation, the exported despeckler, the 3x3 median, Gareau, the colour stage with
statistics pooled per slide; [0, 1] mapped to [-1, 1] as the card's range says). The
generator (``ResidualGenerator``: identity at the start, stride-free) is trained with

- the paired term: L1 between its output and the true H&E of the same crop, in the colour
  card's look (``lambda_paired``);
- the adversarial term: least-squares GAN against real skin H&E of the training slides
  (unpaired random crops; a 70x70 PatchGAN, ``lambda_adv``);
- the nuclear term: 1 - r between the haematoxylin of its output and of its input
  (``lambda_faithful``, ``train_cyclegan.nuclear_infidelity``).

With ``glass_gate`` (the default) the correction is multiplied by a tissue weight read from the
input (``networks.glass_gate``): where the colour stage left glass, the output is its glass.

No cycle and no second generator: the input domain is the engine's own, and the paired target
is known. Resumable (checkpoint + options + losses.csv in ``out_dir``), a generator snapshot at
every checkpoint (``snapshots/step-NNNNNN.pt``, small: the curve against training time), and
``best`` chosen by the shipping rule on the validation slides (``select_key``): among the
checkpoints no worse than the colour stage on PSNR, SSIM and CIEDE2000, the lowest SWD to the
true H&E; before any is, the highest PSNR. (The first run kept the best PSNR, which stopped at
the first checkpoint once the adversarial term pulled the later ones off the paired target.)
``dscm-train residual-select`` applies the rule to a finished run. ``time_budget_s`` stops the
run (with a checkpoint) once the training time, summed over resumed runs, passes it; the
learning rate decays linearly to zero over the second half of the steps or of the time budget,
whichever comes first. ``device`` (``cpu``, ``cuda``, ``auto``) and ``bf16`` (autocast) make the
same code the GPU script.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.core.colour import load_colour_target
from training.common import (
    LOSS_CSV_NAME,
    LOSS_PLOT_NAME,
    LossLog,
    ProgressLine,
    configure_torch,
    load_checkpoint,
    save_checkpoint,
    step_rng,
)
from training.domains import load_despeckler_onnx
from training.metrics import stain_metrics
from training.networks import PatchDiscriminator, ResidualGenerator, init_weights
from training.train_cyclegan import (
    BEST_NAME,
    crop_batch,
    nuclear_infidelity,
    paired_crop_batch,
    skin_domains,
)

DESIGN = "residual"
SNAPSHOTS = "snapshots"
LOSS_COLUMNS = ["D", "G_adv", "paired", "faithful", "lr", "elapsed_s"]
VAL_COLUMNS = ["val_psnr_db", "val_ssim", "val_ciede2000", "val_swd", "val_eligible"]


@dataclass
class ResidualOptions:
    prepared_dir: str
    out_dir: str
    despeckle_onnx: str = "models/despeckle.onnx"
    colour_card: str = "models/colour.json"
    ngf: int = 16
    n_blocks: int = 9
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    ndf: int = 32
    crop_px: int = 128
    batch_size: int = 4
    steps: int = 3000
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_paired: float = 10.0
    lambda_adv: float = 1.0
    lambda_faithful: float = 10.0
    seed: int = 0
    checkpoint_every: int = 100
    threads: int = 0
    max_val_images: int = 16
    time_budget_s: float = 0.0  # 0: no limit
    device: str = "cpu"  # cpu, cuda or auto
    bf16: bool = False
    design: str = DESIGN  # read by load_generator and the card
    median: bool | None = None  # the 3x3 median in the input; None: as the chain (card) does
    glass_gate: bool = True  # the correction x a tissue weight of the input (networks.glass_gate)

    def resolved_median(self) -> bool:
        """The chain's rule: the median follows the despeckler unless its card says
        ``"median_after": false``."""
        if self.median is not None:
            return self.median
        card = Path(self.despeckle_onnx).with_suffix(".json") if self.despeckle_onnx else None
        if card is None or not card.is_file():
            return True
        return json.loads(card.read_text()).get("median_after") is not False

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def build_generator(options: dict[str, Any] | ResidualOptions) -> ResidualGenerator:
    """The generator an options.json (or options) describes, identity-initialised."""
    get = options.get if isinstance(options, dict) else lambda k, d=None: getattr(options, k, d)
    net = ResidualGenerator(
        ngf=int(get("ngf", 16)),
        n_blocks=int(get("n_blocks", 9)),
        dilations=tuple(get("dilations", (1, 2, 4, 8))),
        glass_gate=bool(get("glass_gate", False)),  # runs before the gate had none
    )
    init_weights(net)
    net.zero_last()
    return net


class ResidualGan:
    """The generator, the discriminator and their optimisers; ``step`` is one training step."""

    def __init__(self, options: ResidualOptions, device: torch.device) -> None:
        self.options = options
        self.device = device
        self.g = build_generator(options).to(device)
        self.d = PatchDiscriminator(ndf=options.ndf)
        init_weights(self.d)
        self.d.to(device)
        betas = (options.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=options.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=options.lr, betas=betas)
        self.mse = nn.MSELoss()
        self.l1 = nn.L1Loss()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.bf16)

    def _gan(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        loss: torch.Tensor = self.mse(prediction.float(), target)
        return loss

    def step(
        self, real_a: torch.Tensor, paired_b: torch.Tensor, real_b: torch.Tensor, lr: float
    ) -> dict[str, float]:
        opt = self.options
        real_a, paired_b, real_b = (t.to(self.device) for t in (real_a, paired_b, real_b))
        for optimiser in (self.opt_g, self.opt_d):
            for group in optimiser.param_groups:
                group["lr"] = lr
        self.d.requires_grad_(False)
        with self._autocast():
            fake = self.g(real_a)
            pred_fake = self.d(fake)
        fake = fake.float()
        losses = {
            "G_adv": self._gan(pred_fake, True) * opt.lambda_adv,
            "paired": self.l1(fake, paired_b) * opt.lambda_paired,
            "faithful": nuclear_infidelity(fake, real_a) * opt.lambda_faithful,
        }
        self.opt_g.zero_grad(set_to_none=True)
        sum(losses.values(), torch.zeros((), device=self.device)).backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        with self._autocast():
            pred_real = self.d(real_b)
            pred_fake = self.d(fake.detach())
        loss_d = 0.5 * (self._gan(pred_real, True) + self._gan(pred_fake, False))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        values = {name: float(value.detach()) for name, value in losses.items()}
        values["D"] = float(loss_d.detach())
        return values

    def state(self, step: int, elapsed_s: float) -> dict[str, Any]:
        return {
            "step": step,
            "elapsed_s": elapsed_s,
            "G": self.g.state_dict(),
            "D": self.d.state_dict(),
            "opt_G": self.opt_g.state_dict(),
            "opt_D": self.opt_d.state_dict(),
        }

    def load(self, state: dict[str, Any]) -> int:
        self.g.load_state_dict(state["G"])
        self.d.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        return int(state["step"])


def lr_at(options: ResidualOptions, step: int, elapsed_s: float) -> float:
    """Constant, then linear decay to zero over the second half of the steps or of the time
    budget, whichever is further along."""
    progress = step / max(options.steps, 1)
    if options.time_budget_s > 0:
        progress = max(progress, elapsed_s / options.time_budget_s)
    return options.lr * min(1.0, max(0.0, 2.0 * (1.0 - progress)))


def validate_on(
    generator: ResidualGenerator, pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> dict[str, float]:
    """The validation measures (``validation_measures``) of the generator's output (fp32, on
    ``device``), whole validation images."""
    outputs = []
    generator.eval()
    with torch.no_grad():
        for source, _ in pairs:
            image = torch.from_numpy(source[None] * 2.0 - 1.0).float().to(device)
            out = generator(image)[0].float().cpu().numpy()
            outputs.append(np.clip((out + 1.0) / 2.0, 0.0, 1.0))
    generator.train()
    return validation_measures(outputs, [truth for _, truth in pairs])


def validation_measures(outputs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR/SSIM/CIEDE2000 of ``outputs`` (CHW RGB in [0, 1]) against the true H&E, and the
    SWD (colour counted, service.core.quality.swd, mean over levels) of the set of outputs to
    the set of true H&E images."""
    from service.core.quality import swd

    rows, real, fake = [], [], []
    for rgb, truth in zip(outputs, truths, strict=True):
        truth = truth[:, : rgb.shape[1], : rgb.shape[2]]
        rows.append(stain_metrics(rgb, truth))
        real.append(np.transpose(truth, (1, 2, 0)))
        fake.append(np.transpose(rgb, (1, 2, 0)))
    keys = ("psnr_db", "ssim", "ciede2000")
    measures = {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in keys}
    measures["val_swd"] = float(np.mean(swd(real, fake)["swd"]))
    return measures


def colour_stage_validation(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The validation measures of the colour stage alone (the generator's input, step 0)."""
    return validation_measures([source for source, _ in pairs], [truth for _, truth in pairs])


def select_key(validation: dict[str, float], colour_stage: dict[str, float]) -> tuple[int, float]:
    """The shipping rule as an ordering (larger is better): a checkpoint no worse than the colour
    stage on PSNR, SSIM and CIEDE2000 (``eligible``) beats any that is not; eligible ones rank
    by lower SWD, the others by higher PSNR."""
    eligible = (
        validation["val_psnr_db"] >= colour_stage["val_psnr_db"]
        and validation["val_ssim"] >= colour_stage["val_ssim"]
        and validation["val_ciede2000"] <= colour_stage["val_ciede2000"]
    )
    return (1, -validation["val_swd"]) if eligible else (0, validation["val_psnr_db"])


def validation_pairs(
    options: ResidualOptions, despeckler: Any, colour: Any, median: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The colour stage's output and the true H&E of the validation slides (``val_skin``)."""
    val_a, val_b = skin_domains(
        Path(options.prepared_dir),
        ("val_skin",),
        despeckler,
        colour,
        options.seed + 100_000,
        median,
    )
    return list(zip(val_a, val_b, strict=True))[: options.max_val_images]


def format_validation(validation: dict[str, float]) -> str:
    """One line of the validation measures."""
    return (
        f"PSNR {validation['val_psnr_db']:.2f} dB, SSIM {validation['val_ssim']:.3f}, "
        f"CIEDE2000 {validation['val_ciede2000']:.2f}, SWD {validation['val_swd']:.3f}"
    )


def cpu_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


def train_residual(options: ResidualOptions) -> Path:
    """Train (or resume); returns the run folder."""
    out_dir = Path(options.out_dir)
    (out_dir / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    configure_torch(options.seed, options.threads)
    device = options.resolved_device()
    started = time.monotonic()
    prepared = Path(options.prepared_dir)
    despeckler = load_despeckler_onnx(
        Path(options.despeckle_onnx) if options.despeckle_onnx else None
    )
    colour = load_colour_target(Path(options.colour_card)) if options.colour_card else None
    median = options.resolved_median()
    options.median = median  # recorded in options.json: the input the generator learned on
    domain_a, domain_b = skin_domains(
        prepared, ("train_skin",), despeckler, colour, options.seed, median
    )
    val_pairs = validation_pairs(options, despeckler, colour, median)
    baseline = colour_stage_validation(val_pairs) if val_pairs else {}
    if not domain_a:
        raise ValueError(f"{prepared} has no train_skin patches")
    print(
        f"device {device}, bf16 {options.bf16}, median {median}; {len(domain_a)} training pairs, "
        f"{len(val_pairs)} validation ({time.monotonic() - started:.0f} s to build)",
        flush=True,
    )
    if baseline:
        print(f"colour stage on validation: {format_validation(baseline)}", flush=True)
    model = ResidualGan(options, device)
    start, elapsed_before_s = 0, 0.0
    state = load_checkpoint(out_dir)
    if state is not None:
        start = model.load(state)
        elapsed_before_s = float(state.get("elapsed_s", 0.0))
        print(f"resuming from step {start} ({elapsed_before_s / 60:.1f} min trained)", flush=True)
    log = LossLog(out_dir / LOSS_CSV_NAME, LOSS_COLUMNS + VAL_COLUMNS, resume_step=start)
    best_path = out_dir / BEST_NAME
    best_key: tuple[int, float] = (-1, 0.0)
    if best_path.is_file() and baseline:
        best = torch.load(best_path, weights_only=False)
        if "val_swd" in best:
            best_key = select_key(best, baseline)
    train_started = time.monotonic()

    def elapsed() -> float:
        return elapsed_before_s + time.monotonic() - train_started

    def checkpoint(step: int, values: dict[str, float]) -> dict[str, float]:
        nonlocal best_key
        validation = validate_on(model.g, val_pairs, device) if val_pairs else {}
        key = select_key(validation, baseline) if validation else (-1, 0.0)
        if validation:
            validation["val_eligible"] = float(key[0])
        spent = elapsed()
        save_checkpoint(out_dir, model.state(step, spent), options)
        snapshot: dict[str, Any] = {**values, **validation, "step": step, "elapsed_s": spent}
        snapshot["state_dict"] = cpu_state(model.g.state_dict())
        torch.save(snapshot, out_dir / SNAPSHOTS / f"step-{step:06d}.pt")
        if key > best_key:
            best_key = key
            torch.save(snapshot, best_path)
        return validation

    progress = ProgressLine(options.steps, start)
    step = start
    while step < options.steps:
        step += 1
        rng = step_rng(options.seed, step)
        real_a, paired_b = paired_crop_batch(
            domain_a, domain_b, options.batch_size, options.crop_px, rng
        )
        real_b = crop_batch(domain_b, options.batch_size, options.crop_px, rng)
        lr = lr_at(options, step, elapsed())
        values = model.step(real_a.float(), paired_b.float(), real_b.float(), lr)
        values["lr"] = lr
        values["elapsed_s"] = round(elapsed(), 1)
        out_of_time = options.time_budget_s > 0 and elapsed() >= options.time_budget_s
        at_checkpoint = step % options.checkpoint_every == 0 or step == options.steps
        if at_checkpoint or out_of_time:
            values.update(checkpoint(step, values))
        log.append(step, values)
        if at_checkpoint or out_of_time:
            log.plot(out_dir / LOSS_PLOT_NAME)
        progress.update(step, values, force=at_checkpoint or out_of_time)
        if out_of_time:
            print(
                f"time budget of {options.time_budget_s:.0f} s reached at step {step}", flush=True
            )
            break
    print(f"done: step {step}, {elapsed() / 60:.1f} min of training", flush=True)
    return out_dir


def load_residual_generator(
    checkpoint_dir: Path, which: str = "best"
) -> tuple[ResidualGenerator, dict[str, Any]]:
    """The generator of a residual run: ``best`` (``select_key``), ``last``, or a snapshot
    file name under ``snapshots/``; with its info."""
    options = json.loads((checkpoint_dir / "options.json").read_text())
    net = build_generator(options)
    if which == "last":
        state = load_checkpoint(checkpoint_dir)
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
        net.load_state_dict(state["G"])
        info: dict[str, Any] = {"step": state["step"], "elapsed_s": state.get("elapsed_s")}
    else:
        path = checkpoint_dir / (BEST_NAME if which == "best" else f"{SNAPSHOTS}/{which}")
        if which == "best" and not path.is_file():
            return load_residual_generator(checkpoint_dir, "last")
        saved = torch.load(path, map_location="cpu", weights_only=False)
        net.load_state_dict(saved["state_dict"])
        info = {k: v for k, v in saved.items() if k != "state_dict"}
    info["options"] = options
    return net.eval(), info


def snapshot_names(checkpoint_dir: Path) -> list[str]:
    return sorted(p.name for p in (checkpoint_dir / SNAPSHOTS).glob("step-*.pt"))


def select_best(run_dir: Path, prepared_dir: Path | None = None) -> dict[str, Any]:
    """Apply the shipping rule (``select_key``) to every snapshot of a finished run, on its own
    validation slides, and write the chosen one as ``best``; returns it (without weights).
    Prints one line per snapshot."""
    saved = json.loads((run_dir / "options.json").read_text())
    fields = set(ResidualOptions.__dataclass_fields__)
    options = ResidualOptions(**{k: v for k, v in saved.items() if k in fields})
    options.dilations = tuple(options.dilations)
    if prepared_dir is not None:
        options.prepared_dir = str(prepared_dir)
    despeckler = load_despeckler_onnx(
        Path(options.despeckle_onnx) if options.despeckle_onnx else None
    )
    colour = load_colour_target(Path(options.colour_card)) if options.colour_card else None
    pairs = validation_pairs(options, despeckler, colour, options.resolved_median())
    if not pairs:
        raise ValueError(f"{options.prepared_dir} has no val_skin patches")
    baseline = colour_stage_validation(pairs)
    print(f"colour stage: {format_validation(baseline)}", flush=True)
    best: dict[str, Any] | None = None
    best_key: tuple[int, float] = (-1, 0.0)
    for name in snapshot_names(run_dir):
        snapshot = torch.load(run_dir / SNAPSHOTS / name, map_location="cpu", weights_only=False)
        net = build_generator(options)
        net.load_state_dict(snapshot["state_dict"])
        validation = validate_on(net, pairs, torch.device("cpu"))
        key = select_key(validation, baseline)
        validation["val_eligible"] = float(key[0])
        print(f"{name}: {format_validation(validation)}, eligible {bool(key[0])}", flush=True)
        if key > best_key:
            best_key, best = key, {**snapshot, **validation}
    if best is None:
        raise ValueError(f"{run_dir} has no snapshots")
    torch.save(best, run_dir / BEST_NAME)
    chosen = {k: v for k, v in best.items() if k != "state_dict"}
    print(f"best: step {chosen['step']} ({format_validation(chosen)})", flush=True)
    return chosen
