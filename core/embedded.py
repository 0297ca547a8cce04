"""`mifo serve`: the API and one worker process on one machine, with nothing to install.

SQLite in MIFO_DATA_DIR (migrated here), a local object folder, and Celery's file-system
transport as the broker. Settings given in the environment still win.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger("mifo")

EMBEDDED_ONLY = ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_STORAGE_URL")


def serve(host: str, port: int) -> int:
    import uvicorn

    from core.db import upgrade
    from core.settings import Settings

    settings = Settings()
    overridden = [name for name in EMBEDDED_ONLY if name in os.environ]
    if overridden:
        log.info("using %s from the environment", ", ".join(overridden))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    log.info(
        "embedded mode: data in %s, base model %s%s", settings.data_dir.resolve(),
        settings.base_model,
        " (random test weights: images are noise, for trying the service only)"
        if settings.base_model == "tiny" else "",
    )  # fmt: skip
    env = {**os.environ, "MIFO_DATA_DIR": str(settings.data_dir.resolve())}
    worker = subprocess.Popen(
        [sys.executable, "-m", "mifo_cli", "worker", "--pool", "solo"], env=env
    )
    try:
        uvicorn.run("api.main:app_factory", factory=True, host=host, port=port)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0
