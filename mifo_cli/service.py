"""Service commands of `mifo`: serve (embedded), api, worker, beat, migrate, keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("mifo")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="Upgrade the database schema (MIFO_DATABASE_URL) to head.")
    p.add_argument("--revision", default="head", help="Target revision (default: head).")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("api", help="Run the HTTP API (production: Postgres, Redis, S3).")
    _host_port(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes.")
    p.set_defaults(func=_api)

    p = sub.add_parser(
        "worker",
        help="Run a Celery worker: one per GPU for jobs, or a small CPU one for `--queues "
        "control` (the periodic duties `mifo beat` sends).",
    )
    p.add_argument(
        "--queues",
        help="Comma-separated: the queues of the job kinds (learn, synthesize, ...) or control "
        "(default: every job kind's queue).",
    )
    p.add_argument("--concurrency", type=int, default=1, help="Jobs at a time (default 1).")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.set_defaults(func=_worker)

    p = sub.add_parser(
        "beat",
        help="Send the periodic duties (reconcile, webhooks, maintenance) to the control "
        "queue; run exactly one.",
    )
    p.set_defaults(func=_beat)

    keys = sub.add_parser("keys", help="API keys: create, list, revoke.")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("create", help="New key for a tenant (created if new); shown once.")
    p.add_argument("--tenant", required=True, help="Tenant name, e.g. acme.")
    p.set_defaults(func=_keys_create)
    p = ksub.add_parser("list", help="Key ids, tenants and states (never the keys).")
    p.set_defaults(func=_keys_list)
    p = ksub.add_parser("revoke", help="Revoke a key by id (effective within seconds).")
    p.add_argument("key_id")
    p.set_defaults(func=_keys_revoke)

    p = sub.add_parser(
        "serve",
        help="Embedded mode: API + one worker, SQLite, local files, no servers to install.",
    )
    _host_port(p)
    p.add_argument("--data-dir", help="Folder for the database, broker and files (MIFO_DATA_DIR).")
    p.add_argument(
        "--base-model",
        help="'tiny' (random test weights, CPU), a path, or hub-id@revision (MIFO_BASE_MODEL).",
    )
    p.set_defaults(func=_serve)


def _host_port(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, and then API keys are required).",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000).")


def _logging() -> str:
    """Configure logging at MIFO_LOG_LEVEL; returns that level's name (e.g. "INFO")."""
    from core.settings import Settings

    level = Settings().log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return level


def _migrate(args: argparse.Namespace) -> int:
    from core.db import upgrade
    from core.settings import Settings

    _logging()
    settings = Settings()
    upgrade(settings.db_url, args.revision)
    log.info("database %s is at %s", _safe(settings.db_url), args.revision)
    return 0


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _check_db() -> int:
    from core.db import NotMigrated, check_migrated, make_engine
    from core.settings import Settings

    engine = make_engine(Settings().db_url)
    try:
        check_migrated(engine)
    except NotMigrated as exc:
        print(f"mifo: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _sessions():  # type: ignore[no-untyped-def]
    from core.db import check_migrated, make_engine, make_sessionmaker
    from core.settings import Settings

    engine = make_engine(Settings().db_url)
    check_migrated(engine)
    return make_sessionmaker(engine)


def _keys_create(args: argparse.Namespace) -> int:
    from core import auth
    from core.db import session_scope

    name = args.tenant.strip()
    if not name or len(name) > 100:
        print("mifo: --tenant needs a name of 1 to 100 characters", file=sys.stderr)
        return 2
    with session_scope(_sessions()) as session:
        tenant, created = auth.get_or_create_tenant(session, name)
        row, clear = auth.create_key(session, tenant=tenant)
        print(f"tenant: {tenant.name} ({'created' if created else 'existing'})")
        if created:
            print(
                f"webhook signing secret (also at GET /v1/webhook-secret): {tenant.webhook_secret}"
            )
        print(f"key id: {row.id}")
        print("API key (shown once; send it as `Authorization: Bearer <key>`):")
        print(clear)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from core import auth

    with _sessions()() as session:
        rows = auth.list_keys(session)
    print(f"{'KEY ID':<20} {'TENANT':<24} {'CREATED':<26} STATE")
    for key, tenant in rows:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.id:<20} {tenant:<24} {key.created_at:%Y-%m-%d %H:%M:%S}{'':<7} {state}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from core import auth
    from core.db import session_scope

    try:
        with session_scope(_sessions()) as session:
            row = auth.revoke_key(session, args.key_id)
            print(f"revoked {row.id}")
    except auth.UnknownKey as exc:
        print(f"mifo: {exc}", file=sys.stderr)
        return 2
    return 0


def _beat(args: argparse.Namespace) -> int:
    level = _logging()
    import tempfile

    from core.queue import create_celery
    from core.settings import Settings

    schedule = os.path.join(tempfile.gettempdir(), "mifo-beat-schedule")
    create_celery(Settings()).Beat(loglevel=level, schedule=schedule).run()
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from core.settings import Settings

    os.environ["MIFO_BIND_HOST"] = args.host  # uvicorn's workers read settings anew
    _logging()
    if rc := _check_db():
        return rc
    settings = Settings()
    options = dict(
        factory=True,
        host=args.host,
        port=args.port,
        proxy_headers=True,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )
    if args.workers > 1:  # uvicorn's supervisor runs its own servers in the child processes
        uvicorn.run("api.main:app_factory", workers=args.workers, **options)
    else:  # one process: waiting requests answer their 202 as soon as it begins to stop
        from mifo_cli.embedded import server

        server(uvicorn.Config("api.main:app_factory", **options)).run()
    return 0


def _worker(args: argparse.Namespace) -> int:
    level = _logging()
    if rc := _check_db():
        return rc
    from core.kinds import QUEUES as JOB_QUEUES
    from core.queue import prepare_folders
    from core.settings import get_settings

    prepare_folders(get_settings())
    from worker.tasks import celery_app

    argv = [
        "worker",
        "--queues",
        args.queues or ",".join(JOB_QUEUES),
        "--concurrency",
        str(args.concurrency),
        "--pool",
        args.pool,
        "--loglevel",
        level,
        "--without-gossip",
        "--without-mingle",
    ]
    celery_app.worker_main(argv)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mifo_cli.embedded import serve

    if args.data_dir:
        os.environ["MIFO_DATA_DIR"] = args.data_dir
    if args.base_model:
        os.environ["MIFO_BASE_MODEL"] = args.base_model
    os.environ["MIFO_EMBEDDED"] = "true"
    os.environ["MIFO_BIND_HOST"] = args.host
    _logging()
    return serve(args.host, args.port)
