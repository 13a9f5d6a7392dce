"""In Celery mode the API process never loads onnxruntime, torch or the pipeline, even serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from processes import REPO, Cluster
from service_helpers import Keys, Pair
from support.api import accepted, submit

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from service.api import create_app
    from service.runtime.config import Settings
    from service.jobs.stainer import PipelineStainer

    args = json.loads(sys.argv[1])
    settings = Settings(**args["settings"])
    with TestClient(create_app(PipelineStainer(), settings)) as client:
        auth = {"Authorization": "Bearer " + args["key"]}
        files = {n: (n + ".tif", Path(p).read_bytes()) for n, p in args["pair"].items()}
        posted = client.post("/v1/jobs", files=files, data={"stages": "gareau"}, headers=auth)
        statuses = [posted.status_code, client.get("/readyz").status_code,
                    client.get("/v1/jobs", headers=auth).status_code]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "torch")
                    or m.startswith("service.engine.pipeline"))
    print(json.dumps({"statuses": statuses, "loaded": loaded}))
    """
)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_api_in_celery_mode_never_loads_the_engine(tmp_path: Path, keys: Keys, pair: Pair) -> None:
    cluster = Cluster(tmp_path, [])
    try:
        cluster.start_redis()
        settings = {
            "storage_dir": str(tmp_path / "storage"),
            "models_dir": str(tmp_path / "no-models"),
            "broker_url": f"redis://127.0.0.1:{cluster.redis_port}/0",
            "api_keys": [e.model_dump() for e in keys.entries],
        }
        args = {
            "settings": settings,
            "key": keys.alice,
            "pair": {"rcm": str(pair.rcm), "fcm": str(pair.fcm)},
        }
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(args)],
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        cluster.stop_all()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [202, 200, 200]
    assert result["loaded"] == []


def libvips_loaded(pid: int) -> bool:
    """Whether the process has libvips mapped (pyvips loads it when first imported)."""
    return "libvips" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_dscm_serve_loads_pyvips_only_when_an_upload_needs_it(
    cluster: Cluster, keys: Keys, pair: Pair
) -> None:
    cluster.start_redis()
    api = cluster.start_api()  # DSCM_BROKER_URL is set: no embedded worker
    with cluster.client() as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/jobs", headers=Keys.auth(keys.alice)).status_code == 200
        assert not libvips_loaded(api.pid), "dscm serve loaded libvips before any upload"
        accepted(submit(client, keys.alice, pair))
    assert libvips_loaded(api.pid), "the upload was probed without libvips?"
