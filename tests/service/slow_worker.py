"""A `dscm worker` whose stainer sleeps between tiles, so a test can kill it mid-job.

Run as a script by the integration tests; DSCM_TEST_TILE_DELAY_S sets the pause per tile.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from service.jobs.runner import StainRequest
from service.jobs.stainer import PipelineStainer
from service.runtime.config import Settings, get_settings
from service.vocabulary.progress import ProgressCallback
from service.vocabulary.report import StainReport
from service.worker.app import create_worker_app


class SlowPipelineStainer(PipelineStainer):
    def stain(
        self, request: StainRequest, settings: Settings, progress: ProgressCallback, models: Any
    ) -> StainReport:
        delay_s = float(os.environ.get("DSCM_TEST_TILE_DELAY_S", "0.5"))

        def slow(phase: str, done: int, total: int) -> None:
            progress(phase, done, total)
            if phase == "tiles" and done < total:
                time.sleep(delay_s)

        return super().stain(request, settings, slow, models)


if __name__ == "__main__":
    settings = get_settings()
    app = create_worker_app(settings, SlowPipelineStainer())
    name = sys.argv[1] if len(sys.argv) > 1 else "slow"
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={settings.queue_name}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            f"--hostname={name}@%h",
        ]
    )
