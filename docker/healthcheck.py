"""Container healthcheck: exit 0 when URL answers 2xx within the timeout, else 1 (stdlib only).

    python /opt/dscm/healthcheck.py http://127.0.0.1:8000/readyz     # api: db, broker, storage
    python /opt/dscm/healthcheck.py http://127.0.0.1:9100/metrics    # worker: process alive

A solo Celery worker cannot answer `celery inspect ping` while it stains (the pool is the main
thread), so a worker is checked through its metrics server, which runs in its own thread.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def check(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").replace("\n", " ")
        return False, f"{url}: HTTP {exc.code} {detail}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 1  # Docker reserves exit code 2
    healthy, detail = check(argv[1])
    print(detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
