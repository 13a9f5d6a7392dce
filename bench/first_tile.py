"""Time to the first stained tile on screen (issue 20): from the accepted upload to coloured
pixels in the viewer of a running job, in headless Chromium against a real `dscm serve`.

    .venv/bin/python bench/first_tile.py [--size 15000x10000] [--stages despeckle,gareau,colour]
        [--tile-px 1024] [--threads 2] [--jobs 2] [--json-out FILE]

The server runs the embedded worker with the shipped models. Each job is cancelled once its
first stained tile is seen: the first job pays the worker's model loading (cold), the later
ones do not (warm). Needs Debian chromium + chromium-driver and selenium, as tests/browser.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "browser"))

from browser_helpers import (  # noqa: E402
    CHROMEDRIVER,
    CHROMIUM,
    STAINED_FRACTION,
    running_server,
    sign_in,
)
from support.polling import wait_until  # noqa: E402

from bench.synthetic import write_pair  # noqa: E402

# The share of the drawn view that is coloured (the stain), not grey (placeholder) or white.
# One 1024 px tile of a 15000 x 10000 slide is about 0.5 % of the home view; 1 % needed two or
# three tiles. A third of a tile's share: the first tile, not the placeholder's few tinted pixels.
FIRST_TILE_FRACTION = 0.002


def chromium() -> Any:
    """Headless Debian Chromium through chromedriver (never a downloaded browser)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="15000x10000")
    parser.add_argument("--stages", default="despeckle,gareau,colour")
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="dscm-first-tile-"))
    inputs = write_pair(work / "in", width, height, tissue_fraction=0.6)
    pair = {"rcm": inputs.rcm, "fcm": inputs.fcm}
    env = {
        "DSCM_MODELS_DIR": str(REPO / "models"),
        "DSCM_TILE_PX": str(args.tile_px),
        "DSCM_THREADS": str(args.threads),
    }
    rows = []
    with running_server(work / "server", **env) as server:
        browser = chromium()
        try:
            sign_in(browser, server)
            for index in range(args.jobs):
                job = server.submit(pair, stages=args.stages)
                accepted_s = time.monotonic()
                browser.get(f"{server.url}/viewer/{job['id']}")
                wait_until(
                    lambda: browser.execute_script(STAINED_FRACTION) > FIRST_TILE_FRACTION,
                    600,
                    "a stained tile",
                    interval_s=0.25,
                )
                first_s = time.monotonic() - accepted_s
                seen = server.job(job["id"])
                log = browser.execute_script("return window.dscmViewer.liveLog")
                rows.append(
                    {
                        "job": index + 1,
                        "worker": "cold" if index == 0 else "warm",
                        "first_stained_tile_s": round(first_s, 1),
                        "state_then": seen["state"],
                        "stage_then": seen["stage"],
                        "ledger_changes_ms": log,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                with server.client() as client:
                    client.delete(f"/v1/jobs/{job['id']}", headers=server.auth)
                server.wait(job["id"], timeout_s=120)
        finally:
            browser.quit()
    result = {
        "size": args.size,
        "stages": args.stages,
        "tile_px": args.tile_px,
        "threads": args.threads,
        "runs": rows,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
