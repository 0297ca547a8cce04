"""`mifo remote`: a running MIFO service from the command line, through `mifo_client`.

Only the client (httpx, pydantic) and the standard library are imported, and tqdm on a
terminal, so the command works on the service install, without torch (docs/cli.md, "Remote")."""

from mifo_cli.remote.parser import register

__all__ = ["register"]
