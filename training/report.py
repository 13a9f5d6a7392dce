"""Write evaluation results as a Markdown section of docs/models.md (between markers, so a
rerun replaces it) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

START = "<!-- training-results:start (written by dscm-train evaluate) -->"
END = "<!-- training-results:end -->"


def _table(rows: dict[str, dict[str, float]], columns: list[tuple[str, str, str]]) -> list[str]:
    header = "| method | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [format(values[key], fmt) if key in values else "" for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _glass(value: Any) -> str:
    return "no glass" if not value else "(" + ", ".join(f"{v:.0f}" for v in value) + ")"


def _real_table(measures: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| method | FD_skin (nearest slide) | cb_dB | glass RGB | nuc_r |",
        "|---|---|---|---|---|",
    ]
    for name, m in measures.items():
        lines.append(
            f"| {name} | {m['fd_skin']:.1f} ({m['nearest_slide']}) | {m['cb_db']:.1f} | "
            f"{_glass(m['glass_rgb'])} | {m['nuc_r']:.3f} |"
        )
    return lines


def _summary_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| method | FD_skin | cb_dB (worst) | glass, darkest (white) | nuc_r | PSNR (dB) | SSIM "
        "| CIEDE2000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summaries.items():
        glass = f"{_glass(m.get('glass_rgb_worst'))} ({m.get('glass_white', '-')})"
        lines.append(
            f"| {name} | {m['fd_skin']:.1f} | {m['cb_db']:.1f} ({m['cb_db_worst']:.1f}) | {glass} "
            f"| {m['nuc_r']:.3f} | {m['psnr_db']:.2f} | {m['ssim']:.3f} | {m['ciede2000']:.2f} |"
        )
    return lines


def _auc(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def texture_markdown(texture: dict[str, Any]) -> list[str]:
    """The SWD and C2ST tables: every method, then each real slide against the others."""
    reference = ", ".join(texture["reference_slides"])
    held_out = ", ".join(texture["held_out_slides"])
    level_px = next(iter(texture["methods"].values()))["held_out"]["level_px"]
    options = texture.get("options", {})
    floor = texture.get("real_crop_floor")
    lines = [
        f"### Texture: SWD and C2ST (reference: the training slides {reference}; "
        f"held out: {held_out})",
        "",
        "SWD: mean over the Laplacian levels "
        f"({', '.join(str(p) for p in level_px)} px), against the nearest reference slide; "
        "colour: both sets normalised with the real set's statistics; texture: each with "
        "its own. C2ST: ROC AUC of a critic trained on the reference slides' real patches "
        "against their stain, scored on the held-out slide's real patches against its stain "
        f"(0.5 = indistinguishable; {options.get('patch_px', '?')} px patches, "
        f"{options.get('steps', '?')} steps). Real slides: each against the nearest other "
        "(SWD) and against the other two (C2ST, trained on odd-numbered crops, scored on "
        "even-numbered ones): the floor.",
        "",
        "| method (held-out slide) | SWD colour (nearest) | SWD texture | C2ST AUC "
        "| real crop: SWD colour | SWD texture | C2ST AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in texture["methods"].items():
        held, crop, critic = row["held_out"], row.get("real_crop"), row["c2st"]
        crop_cells = (
            f"{crop['swd']:.3f} | {crop['swd_texture']:.3f} | {_auc(critic.get('auc_real_crop'))}"
            if crop
            else " |  | "
        )
        lines.append(
            f"| {name} | {held['swd']:.3f} ({held['nearest_slide']}) | "
            f"{held['swd_texture']:.3f} | {_auc(critic['auc'])} | {crop_cells} |"
        )
    for name, row in texture["real_slides"].items():
        swd_row = row["swd"]
        crop_cells = (
            f"{floor['swd']:.3f} | {floor['swd_texture']:.3f} | "
            if floor and name in texture["held_out_slides"]
            else " |  | "
        )
        lines.append(
            f"| real slide {name} | {swd_row['swd']:.3f} ({swd_row['nearest_slide']}) | "
            f"{swd_row['swd_texture']:.3f} | {_auc(row['c2st']['auc'])} | {crop_cells}|"
        )
    lines += [
        "",
        "SWD per level, finest first (colour / texture):",
        "",
        "| method (held-out slide) | " + " | ".join(f"{p} px" for p in level_px) + " |",
        "|---" * (len(level_px) + 1) + "|",
    ]
    rows = {name: row["held_out"] for name, row in texture["methods"].items()}
    rows |= {f"real slide {name}": row["swd"] for name, row in texture["real_slides"].items()}
    for name, row in rows.items():
        cells = [
            f"{c:.3f} / {t:.3f}"
            for c, t in zip(row["swd_levels"], row["swd_texture_levels"], strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if floor:
        lines += [
            "",
            f"Real crop floor: one {floor.get('crop_px', 512)} px centre crop of the held-out "
            f"slide against the nearest reference slide, median over its {floor['crops']} "
            "crops (SWD of one image reads higher than of a slide).",
        ]
    return [*lines, ""]


def results_markdown(results: dict[str, Any], command: str, preface: str = "") -> str:
    gray = [("psnr_db", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f")]
    counts = results.get("counts", {})
    skin = results["stain_skin"]
    lines = [START, "", "## Measured results (shipped models)", ""]
    if preface:
        lines += [preface, ""]
    lines += [f"Command: `{command}`", ""]
    spread = results.get("reference_spread", {})
    if spread:
        values = sorted(v["fd"] for v in spread.values())
        lines += [
            "FD_skin is read against how far real skin H&E slides are from each other: each "
            f"reference slide to its nearest other slide, {values[0]:.1f}-{values[-1]:.1f} "
            f"(median {float(np.median(values)):.1f}; "
            + ", ".join(f"{k} {v['fd']:.1f}" for k, v in spread.items())
            + ").",
            "",
        ]
    if "stain_real_crop" in results:
        lines += [
            "### The real confocal crop (never used in training or selection)",
            "",
            *_real_table(results["stain_real_crop"]),
            "",
            "![real crop](figures/real-crop.png)",
            "",
        ]
    lines += [
        f"### Held-out skin ({counts.get('skin_patches', '?')} patches of the slides "
        f"{', '.join(counts.get('skin_slides', []))}; synthetic confocal, true H&E known)",
        "",
        "Medians over the patches (cb_dB: median and worst; glass: the darkest patch's mean "
        "and how many patches with glass have it white, >= 235 on every channel):",
        "",
        *_summary_table(skin["median"]),
        "",
    ]
    for case in counts.get("skin_slides", []):
        lines += [
            f"Slide {case}:",
            "",
            *_summary_table({name: rows[case] for name, rows in skin["per_slide"].items()}),
            "",
        ]
    if "texture" in results:
        lines += texture_markdown(results["texture"])
    lines += [
        *(
            f"![stain example, {case}](figures/stain-example-skin-{case}.png)\n"
            for case in counts.get("skin_slides", [])
        ),
        f"### Held-out TCGA slides ({counts.get('test_patches', '?')} patches, not skin)",
        "",
        *_summary_table(results["stain_test_slides"]["median"]),
        "",
        f"### Despeckling ({counts.get('test_patches', '?')} held-out slide patches + "
        f"{counts.get('skin_patches', '?')} held-out skin patches, speckle Gauss(1, 0.2))",
        "",
        *_table(results["despeckle"], gray),
        "",
        "![despeckle example](figures/despeckle-example.png)",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_results(doc_path: Path, json_path: Path, results: dict[str, Any], markdown: str) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    text = doc_path.read_text() if doc_path.is_file() else ""
    if START in text and END in text:
        before = text[: text.index(START)]
        after = text[text.index(END) + len(END) :].lstrip("\n")
        text = before + markdown + after
    else:
        text = text.rstrip("\n") + "\n\n" + markdown
    doc_path.write_text(text)
