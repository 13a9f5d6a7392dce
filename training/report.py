"""Write evaluation results as a Markdown section of docs/models.md (between markers, so a
rerun replaces it) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START = "<!-- training-results:start (written by dscm-train evaluate) -->"
END = "<!-- training-results:end -->"


def _table(rows: dict[str, dict[str, float]], columns: list[tuple[str, str, str]]) -> list[str]:
    header = "| method | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [format(values[key], fmt) if key in values else "" for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(results: dict[str, Any], command: str, preface: str = "") -> str:
    gray = [("psnr_db", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f")]
    colour = [*gray, ("ciede2000", "CIEDE2000 (lower is better)", ".2f")]
    counts = results.get("counts", {})
    lines = [START, "", "## Measured results (shipped models)", ""]
    if preface:
        lines += [preface, ""]
    lines += [
        f"Command: `{command}`",
        "",
        f"### Despeckling ({counts.get('test_patches', '?')} held-out slide patches + "
        f"{counts.get('skin_patches', '?')} held-out skin patches, speckle Gauss(1, 0.2))",
        "",
        *_table(results["despeckle"], gray),
        "",
        "![despeckle example](figures/despeckle-example.png)",
        "",
        "### Staining fidelity against the true H&E (synthetic confocal of held-out tissue)",
        "",
        "Held-out slides (test split):",
        "",
        *_table(results["staining_test_slides"], colour),
        "",
        "Held-out skin image:",
        "",
        *_table(results["staining_skin"], colour),
        "",
        "![stain example, skin](figures/stain-example-skin.png)",
        "",
        "![stain example, held-out slide](figures/stain-example-test.png)",
        "",
        "### The real confocal crop",
        "",
        "![real crop](figures/real-crop.png)",
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
