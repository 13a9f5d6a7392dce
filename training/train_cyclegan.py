"""CycleGAN from Gareau-stained confocal (domain A) to H&E (domain B), the paper's recipe.

Least-squares GAN, cycle L1 (lambda 10), identity L1 (0.5 lambda), image pool of 50, Adam 2e-4
(beta1 0.5); a first stage on small crops, a second on crops twice as large with the learning
rate decaying linearly to zero. Resumable (networks, optimisers, pools, step); batches depend
only on (seed, step). Each checkpoint also measures paired fidelity on the validation split
(G_A(Gareau) against the true H&E) and keeps the best generator by PSNR.

``domain="skin"`` trains on real skin slides (``train_skin``): domain B is their H&E moved to
the colour card's look (one lab's look, glass kept white), domain A the colour stage's output
for their synthetic confocal. Because domain A is synthesised from domain B's images, the two
are paired: ``lambda_paired`` adds an L1 term between G_A(A) and its own H&E (the same crop),
which anchors colour and nuclei where the adversarial terms alone drift (CycleGAN stays the
recipe; the paired term is the one thing synthetic data gives that the paper's data could not).
``bf16`` runs forward passes under CPU autocast (AMX), ``channels_last`` the NHWC layout.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from service.core.colour import ColourTarget, load_colour_target
from service.core.quality import HAEMATOXYLIN_FROM_LOG_RGB
from training.colour_fit import normalise_he
from training.common import (
    LOSS_CSV_NAME,
    LossLog,
    configure_torch,
    linear_decay,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    step_rng,
)
from training.data import load_split, load_split_with_cases
from training.domains import build_domain_a, he_to_chw, load_despeckler_onnx
from training.metrics import stain_metrics
from training.networks import (
    PatchDiscriminator,
    ResnetGenerator,
    SharedNormGenerator,
    create_model,
    init_weights,
)
from training.speckle import random_crop_flip

BEST_NAME = "best_generator.pt"
_Net = TypeVar("_Net", bound=nn.Module)
LOSS_COLUMNS = [
    "D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B", "paired", "faithful",
]  # fmt: skip
DOMAINS = ("tcga", "skin")
VAL_COLUMNS = ["val_psnr_db", "val_ssim", "val_ciede2000"]


@dataclass
class CycleGanOptions:
    prepared_dir: str
    out_dir: str
    despeckle_onnx: str = ""  # the exported despeckler used to build domain A ("" = median only)
    ngf: int = 16
    n_blocks: int = 9
    ndf: int = 64
    stage_crops_px: list[int] = field(default_factory=lambda: [256, 512])
    stage_steps: list[int] = field(default_factory=lambda: [1000, 1000])
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    seed: int = 0
    checkpoint_every: int = 250
    threads: int = 0
    max_val_images: int = 16
    upsample: str = "transpose"  # "resize": no checkerboard by construction
    domain: str = "tcga"  # "skin": train_skin / val_skin with the colour card's look
    colour_card: str = ""  # models/colour.json: the colour stage before the generator
    lambda_paired: float = 0.0
    lambda_faithful: float = 0.0  # 1 - r(haematoxylin of G_A(A), of A): keep the nuclei
    bf16: bool = False
    channels_last: bool = False

    @property
    def total_steps(self) -> int:
        return sum(self.stage_steps)


class ImagePool:
    """History of generated images (Shrivastava et al.): half the time the discriminator sees
    an older fake instead of the newest one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif rng.random() < 0.5:
                index = rng.randrange(self.size)
                old = self.images[index]
                if old.shape == image.shape:
                    self.images[index] = image.clone()
                    out.append(old)
                else:  # the crop size changed between stages: start afresh
                    self.images[index] = image.clone()
                    out.append(image)
            else:
                out.append(image)
        return torch.cat(out)


class CycleGan:
    """Two generators and two discriminators; ``optimize_parameters`` is one training step."""

    def __init__(self, options: CycleGanOptions) -> None:
        self.options = options
        self.g_a = self._generator()  # A (Gareau) -> B (H&E)
        self.g_b = self._generator()
        self.d_a = self._discriminator()  # judges G_A's output against real B
        self.d_b = self._discriminator()
        betas = (options.beta1, 0.999)
        self.opt_g = torch.optim.Adam(
            [*self.g_a.parameters(), *self.g_b.parameters()], lr=options.lr, betas=betas
        )
        self.opt_d = torch.optim.Adam(
            [*self.d_a.parameters(), *self.d_b.parameters()], lr=options.lr, betas=betas
        )
        decay_from = options.stage_steps[0] if len(options.stage_steps) > 1 else 0

        def factor(step: int) -> float:
            return linear_decay(step, options.total_steps, decay_from)

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)
        self.pool_a = ImagePool(options.pool_size)
        self.pool_b = ImagePool(options.pool_size)
        self.gan_loss = nn.MSELoss()
        self.l1 = nn.L1Loss()

    def _generator(self) -> ResnetGenerator:
        opt = self.options
        net = create_model(
            "resnet_generator", ngf=opt.ngf, n_blocks=opt.n_blocks, upsample=opt.upsample
        )
        assert isinstance(net, ResnetGenerator)
        init_weights(net)
        return self._layout(net)

    def _discriminator(self) -> PatchDiscriminator:
        net = create_model("patchgan", ndf=self.options.ndf)
        assert isinstance(net, PatchDiscriminator)
        init_weights(net)
        return self._layout(net)

    def _layout(self, net: _Net) -> _Net:
        if self.options.channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return net

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.options.bf16)

    def _adversarial(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        loss: torch.Tensor = self.gan_loss(prediction, target)
        return loss

    def optimize_parameters(
        self,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        rng: random.Random,
        paired_b: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One step; ``paired_b`` is the true H&E of ``real_a`` (same crop) when known."""
        opt = self.options
        lam = opt.lambda_cycle
        if opt.channels_last:
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        # Generators (discriminators frozen)
        for net in (self.d_a, self.d_b):
            net.requires_grad_(False)
        with self._autocast():
            fake_b = self.g_a(real_a)
            rec_a = self.g_b(fake_b)
            fake_a = self.g_b(real_b)
            rec_b = self.g_a(fake_a)
            idt_a = self.g_a(real_b)
            idt_b = self.g_b(real_a)
            pred_fake_b = self.d_a(fake_b)
            pred_fake_a = self.d_b(fake_a)
        fake_b, rec_a, fake_a, rec_b, idt_a, idt_b = (
            t.float() for t in (fake_b, rec_a, fake_a, rec_b, idt_a, idt_b)
        )
        losses = {
            "G_A": self._adversarial(pred_fake_b.float(), True),
            "G_B": self._adversarial(pred_fake_a.float(), True),
            "cycle_A": self.l1(rec_a, real_a) * lam,
            "cycle_B": self.l1(rec_b, real_b) * lam,
            "idt_A": self.l1(idt_a, real_b) * lam * opt.lambda_identity,
            "idt_B": self.l1(idt_b, real_a) * lam * opt.lambda_identity,
        }
        if paired_b is not None and opt.lambda_paired > 0:
            losses["paired"] = self.l1(fake_b, paired_b) * opt.lambda_paired
        if opt.lambda_faithful > 0:
            losses["faithful"] = nuclear_infidelity(fake_b, real_a) * opt.lambda_faithful
        self.opt_g.zero_grad(set_to_none=True)
        sum(losses.values(), torch.zeros(())).backward()
        self.opt_g.step()
        # Discriminators
        for net in (self.d_a, self.d_b):
            net.requires_grad_(True)
        pooled_b = self.pool_b.query(fake_b, rng)
        pooled_a = self.pool_a.query(fake_a, rng)
        with self._autocast():
            d_outputs = (
                self.d_a(real_b),
                self.d_a(pooled_b.detach()),
                self.d_b(real_a),
                self.d_b(pooled_a.detach()),
            )
        real_b_pred, fake_b_pred, real_a_pred, fake_a_pred = (t.float() for t in d_outputs)
        loss_d_a = 0.5 * (
            self._adversarial(real_b_pred, True) + self._adversarial(fake_b_pred, False)
        )
        loss_d_b = 0.5 * (
            self._adversarial(real_a_pred, True) + self._adversarial(fake_a_pred, False)
        )
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        values = {name: float(value.detach()) for name, value in losses.items()}
        values["D_A"] = float(loss_d_a.detach())
        values["D_B"] = float(loss_d_b.detach())
        return values

    def state(self, step: int, elapsed_s: float = 0.0) -> dict[str, Any]:
        return {
            "step": step,
            "elapsed_s": elapsed_s,
            "G_A": self.g_a.state_dict(),
            "G_B": self.g_b.state_dict(),
            "D_A": self.d_a.state_dict(),
            "D_B": self.d_b.state_dict(),
            "opt_G": self.opt_g.state_dict(),
            "opt_D": self.opt_d.state_dict(),
            "sched_G": self.sched_g.state_dict(),
            "sched_D": self.sched_d.state_dict(),
            "pool_A": self.pool_a.images,
            "pool_B": self.pool_b.images,
        }

    def load(self, state: dict[str, Any]) -> int:
        self.g_a.load_state_dict(state["G_A"])
        self.g_b.load_state_dict(state["G_B"])
        self.d_a.load_state_dict(state["D_A"])
        self.d_b.load_state_dict(state["D_B"])
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        self.sched_g.load_state_dict(state["sched_G"])
        self.sched_d.load_state_dict(state["sched_D"])
        self.pool_a.images = list(state["pool_A"])
        self.pool_b.images = list(state["pool_B"])
        return int(state["step"])


def haematoxylin(image: torch.Tensor) -> torch.Tensor:
    """Haematoxylin optical density (rgb2hed's first channel, unclipped) of ``(N, 3, H, W)``
    in [-1, 1]: a linear map of log RGB, so it has gradients everywhere."""
    rgb = ((image.float() + 1.0) / 2.0).clamp(1e-6, 1.0)
    weights = image.new_tensor(HAEMATOXYLIN_FROM_LOG_RGB).float().view(1, 3, 1, 1)
    return (torch.log(rgb) / float(np.log(1e-6)) * weights).sum(dim=1)


def nuclear_infidelity(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - Pearson r between the haematoxylin of ``output`` and of
    ``source``: zero when the generator keeps every nucleus where its input has one, whatever
    colours it paints (nuc_r of docs/models.md, made a loss)."""
    a = haematoxylin(output).flatten(1)
    b = haematoxylin(source).flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
    return (1.0 - r).mean()


def crop_batch(
    images: list[np.ndarray], batch_size: int, crop_px: int, rng: np.random.Generator
) -> torch.Tensor:
    """Random crops + flips of ``(3, H, W)`` images in [0, 1], returned in [-1, 1]."""
    usable = [im for im in images if min(im.shape[1:]) >= crop_px] or images
    size = min(crop_px, *(min(im.shape[1:]) for im in usable))
    picks = rng.integers(0, len(usable), size=batch_size)
    batch = np.stack([random_crop_flip(usable[i], size, rng) for i in picks])
    return torch.from_numpy(batch * 2.0 - 1.0)


def paired_crop_batch(
    images_a: list[np.ndarray],
    images_b: list[np.ndarray],
    batch_size: int,
    crop_px: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crops + flips of aligned A and B images, both in [-1, 1]."""
    pairs = [np.concatenate([a, b]) for a, b in zip(images_a, images_b, strict=True)]
    usable = [p for p in pairs if min(p.shape[1:]) >= crop_px] or pairs
    size = min(crop_px, *(min(p.shape[1:]) for p in usable))
    picks = rng.integers(0, len(usable), size=batch_size)
    batch = torch.from_numpy(np.stack([random_crop_flip(usable[i], size, rng) for i in picks]))
    batch = batch * 2.0 - 1.0
    return batch[:, :3], batch[:, 3:]


def stage_crop_px(options: CycleGanOptions, step: int) -> int:
    boundary = 0
    for crop, steps in zip(options.stage_crops_px, options.stage_steps, strict=True):
        boundary += steps
        if step <= boundary:
            return crop
    return options.stage_crops_px[-1]


def translate(generator: SharedNormGenerator, gareau_chw: np.ndarray) -> np.ndarray:
    """A whole image through G_A (own statistics), ``(3, H, W)`` [0, 1] in and out; the size is
    cropped to a multiple of 4."""
    height, width = (s - s % 4 for s in gareau_chw.shape[1:])
    image = torch.from_numpy(gareau_chw[None, :, :height, :width] * 2.0 - 1.0)
    generator.eval()
    with torch.no_grad():
        out = generator(image.float())[0].numpy()
    generator.train()
    result: np.ndarray = np.clip((out + 1.0) / 2.0, 0.0, 1.0)
    return result


def validate(
    generator: SharedNormGenerator, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """Mean PSNR/SSIM/CIEDE2000 of G_A(Gareau) against the true H&E."""
    rows = []
    for gareau, truth in pairs:
        out = translate(generator, gareau)
        rows.append(stain_metrics(out, truth[:, : out.shape[1], : out.shape[2]]))
    keys = ("psnr_db", "ssim", "ciede2000")
    return {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in keys}


def train_cyclegan(options: CycleGanOptions) -> Path:
    """Train (or resume); returns the checkpoint folder."""
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_torch(options.seed, options.threads)
    prepared = Path(options.prepared_dir)
    despeckle_onnx = Path(options.despeckle_onnx) if options.despeckle_onnx else None
    despeckler = load_despeckler_onnx(despeckle_onnx)
    started = time.monotonic()
    if options.domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {options.domain!r}")
    colour = load_colour_target(Path(options.colour_card)) if options.colour_card else None
    paired = options.domain == "skin"
    if paired:
        domain_a, domain_b = skin_domains(
            prepared, ("train_skin",), despeckler, colour, options.seed
        )
        val_gareau, val_truth = skin_domains(
            prepared, ("val_skin",), despeckler, colour, options.seed + 100_000
        )
        val_pairs = list(zip(val_gareau, val_truth, strict=True))[: options.max_val_images]
    else:
        domain_a = build_domain_a(
            load_split(prepared, ("train_a",)), despeckler, options.seed, colour
        )
        domain_b = [he_to_chw(rgb) for rgb in load_split(prepared, ("train_b",))]
        val_he = load_split(prepared, ("val",))[: options.max_val_images]
        val_gareau = build_domain_a(val_he, despeckler, options.seed + 100_000, colour)
        val_pairs = [(g, he_to_chw(h)) for g, h in zip(val_gareau, val_he, strict=True)]
    print(
        f"domain A {len(domain_a)} images, domain B {len(domain_b)}, val {len(val_pairs)} "
        f"({time.monotonic() - started:.0f} s to build)",
        flush=True,
    )
    if not domain_a or not domain_b:
        raise ValueError(f"{prepared} has no train_a or train_b patches")
    model = CycleGan(options)
    start = 0
    elapsed_before_s = 0.0
    state = load_checkpoint(out_dir)
    if state is not None:
        start = model.load(state)
        elapsed_before_s = float(state.get("elapsed_s", 0.0))
        print(f"resuming from step {start}", flush=True)
    log = LossLog(out_dir / LOSS_CSV_NAME, LOSS_COLUMNS + VAL_COLUMNS, resume_step=start)
    best_path = out_dir / BEST_NAME
    best_psnr = -1.0
    if best_path.is_file():
        best_psnr = float(torch.load(best_path, weights_only=False)["val_psnr_db"])

    def train_step(step: int) -> dict[str, float]:
        rng = step_rng(options.seed, step)
        crop = stage_crop_px(options, step)
        paired_b = None
        if paired:
            real_a, paired_b = paired_crop_batch(domain_a, domain_b, options.batch_size, crop, rng)
            real_a, paired_b = real_a.float(), paired_b.float()
        else:
            real_a = crop_batch(domain_a, options.batch_size, crop, rng).float()
        real_b = crop_batch(domain_b, options.batch_size, crop, rng).float()
        pool_rng = random.Random(int(rng.integers(2**31)))
        return model.optimize_parameters(real_a, real_b, pool_rng, paired_b)

    def checkpoint(step: int, losses: dict[str, float]) -> dict[str, float]:
        """Validate, save, and keep G_A apart when its validation PSNR is the best yet."""
        nonlocal best_psnr
        validation = validate(model.g_a, val_pairs)
        elapsed_s = elapsed_before_s + time.monotonic() - started
        save_checkpoint(out_dir, model.state(step, elapsed_s), options)
        if validation["val_psnr_db"] > best_psnr:
            best_psnr = validation["val_psnr_db"]
            best = {**losses, **validation, "step": step, "state_dict": model.g_a.state_dict()}
            torch.save(best, best_path)
        return validation

    run_steps(
        log, start, options.total_steps, options.checkpoint_every, train_step, checkpoint, started
    )
    return out_dir


def skin_domains(
    prepared: Path,
    splits: tuple[str, ...],
    despeckler: Any,
    colour: ColourTarget | None,
    seed: int,
    median: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Aligned (A, B) of skin slides: B is each slide's H&E in the colour card's look (as it is
    without a card), A the chain's output for its synthetic confocal; statistics per slide."""
    items = load_split_with_cases(prepared, splits)
    images = [rgb for rgb, _ in items]
    cases = [case for _, case in items]
    domain_a = build_domain_a(images, despeckler, seed, colour, cases, median)
    domain_b: list[np.ndarray] = [np.empty(0)] * len(images)
    for case in sorted(set(cases)):
        members = [i for i, c in enumerate(cases) if c == case]
        slide = [images[i] for i in members]
        looks = normalise_he(slide, colour.lab) if colour else [he_to_chw(rgb) for rgb in slide]
        for i, look in zip(members, looks, strict=True):
            domain_b[i] = look
    return domain_a, domain_b


def load_generator(
    checkpoint_dir: Path, which: str = "best"
) -> tuple[SharedNormGenerator, dict[str, Any]]:
    """G_A of a CycleGAN run, or the generator of a residual run (``dscm-train residual``):
    ``best`` (by validation PSNR) or ``last``; with its info."""
    options = json.loads((checkpoint_dir / "options.json").read_text())
    if options.get("design") == "residual":
        from training.train_residual import load_residual_generator

        return load_residual_generator(checkpoint_dir, which)
    net = create_model(
        "resnet_generator",
        ngf=options["ngf"],
        n_blocks=options["n_blocks"],
        upsample=options.get("upsample", "transpose"),
    )
    assert isinstance(net, ResnetGenerator)
    if which == "best" and (checkpoint_dir / BEST_NAME).is_file():
        saved = torch.load(checkpoint_dir / BEST_NAME, weights_only=False)
        net.load_state_dict(saved["state_dict"])
        info = {k: v for k, v in saved.items() if k != "state_dict"}
    else:
        state = load_checkpoint(checkpoint_dir)
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
        net.load_state_dict(state["G_A"])
        info = {"step": state["step"]}
    info["options"] = options
    return net.eval(), info
