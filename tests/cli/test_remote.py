"""`mifo remote` as a user runs it, a subprocess per command, against a real
`mifo serve --base-model tiny`: learn and synthesize with --wait, downloads that never
overwrite, listings, cancel, Ctrl-C, problems and exit codes, the environment, a terminal."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.serve import QUICK, ROOT, serve
from tests.helpers.servers import free_port

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"
WAIT = 600  # seconds: generous, for a loaded 2-core machine
PROMPT = "a photo of <asset0> and <asset1>"
BOXES = ["--box", "<asset0>=0.05,0.3,0.45,0.8", "--box", "right blob=0.55,0.3,0.95,0.8"]


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")} | extra


def mifo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m mifo_cli remote ARGS...`, its output captured (stdin, stdout: no TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "mifo_cli", "remote", *args],
        cwd=ROOT,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


def _options(values: dict[str, Any]) -> list[str]:
    return [w for k, v in values.items() for w in ("--option", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def learned(
    service: str, scene: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str], Path]:
    image, masks = scene
    maps = tmp_path_factory.mktemp("maps")
    done = mifo(
        "learn",
        str(image),
        *map(str, masks),
        "--names",
        "left blob,right blob",
        *_options({**QUICK, "phase1_steps": 20}),
        "--wait",
        "--out",
        str(maps),
        "--json",
        "--api",
        service,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done, maps


def test_learn_waits_with_progress_lines_and_saves_the_attention_maps(
    learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path],
) -> None:
    job, done, maps = learned
    assert job["kind"] == "learn" and job["status"] == "succeeded"
    concept = job["result"]["concept"]
    assert [t["name"] for t in concept["tokens"]] == ["left blob", "right blob"]
    assert concept["options"]["phase1_steps"] == 20  # --option reached the service
    names = [f"{job['id']}_attention_{i:02d}.png" for i in (0, 1)]
    assert job["files"] == [str(maps / n) for n in names]
    assert all((maps / n).read_bytes().startswith(PNG) for n in names)
    lines = done.stderr.splitlines()  # no TTY: plain lines, no bar
    full = job["id"]  # the whole id: it can be pasted into `mifo remote download`
    assert any(line.startswith(f"job {full} running phase1 ") for line in lines), lines
    assert any("ETA" in line and "/20" in line for line in lines), lines
    assert lines[-1] == f"job {full} succeeded" and "\r" not in done.stderr


def test_synthesize_twice_into_one_folder_keeps_every_file(
    service: str,
    learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path],
    tmp_path: Path,
) -> None:
    concept = learned[0]["result"]["concept"]["id"]
    out = tmp_path / "images"
    runs = []
    for n in (2, 1):
        run = ["synthesize", concept, PROMPT, *BOXES, "--steps", "1", "--num-images", str(n)]
        done = mifo(*run, "--seed", "7", "--out", str(out), "--api", service)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.splitlines())
    first, second = (lines[0].split()[1] for lines in runs)
    assert runs[0][0] == f"job {first} (synthesize) succeeded"
    assert runs[0][1].startswith("  image 0: seed 7, in its box: <asset0> ")
    assert runs[0][2].startswith("  image 1: seed 8,") and "<asset1>" in runs[0][2]
    expected = [f"{first}_image_00.png", f"{first}_image_01.png", f"{second}_image_00.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert runs[0][-2:] == [str(out / n) for n in expected[:2]]
    assert runs[1][-1] == str(out / expected[2])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}

    again = mifo("download", first, "--out", str(out), "--api", service)
    assert again.returncode == 2, again.stderr
    assert again.stderr.startswith(f"mifo remote: --out: {out / expected[0]} exists")
    assert "never overwrite" in again.stderr and again.stdout == ""
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    fresh = mifo(
        "download", first, "--out", str(tmp_path / "b"), "--previews", "--json", "--api", service
    )
    assert fresh.returncode == 0, fresh.stderr
    files = [Path(f).name for f in json.loads(fresh.stdout)["files"]]
    assert files == [f"{first}_{k}_{i:02d}.png" for i in (0, 1) for k in ("image", "preview")]
    assert all((tmp_path / "b" / f).read_bytes().startswith(PNG) for f in files)


def test_jobs_lists_by_status_and_kind(
    service: str, learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path]
) -> None:
    learn_id = learned[0]["id"]
    done = mifo("jobs", "--status", "succeeded", "--kind", "learn", "--json", "--api", service)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert learn_id in [j["id"] for j in listed]
    assert all(j["status"] == "succeeded" and j["kind"] == "learn" for j in listed)
    table = mifo("jobs", "--status", "failed,succeeded", "--api", service)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["JOB", "KIND", "STATUS", "CREATED", "CONCEPT"]
    assert any(r.startswith(learn_id) and " succeeded " in r for r in rows), rows
    none = mifo("jobs", "--status", "queued", "--kind", "learn", "--api", service)
    assert none.returncode == 0 and none.stdout == "no jobs\n", none.stdout + none.stderr
    finished = mifo("cancel", learn_id, "--api", service)
    assert finished.returncode == 2 and "(409 " in finished.stderr, finished.stderr
    bad = mifo("jobs", "--status", "sleeping", "--api", service)
    assert bad.returncode == 2 and "status" in bad.stderr and "422" in bad.stderr, bad.stderr


def test_bad_boxes_name_the_field_and_exit_2(
    service: str, learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path]
) -> None:
    concept = learned[0]["result"]["concept"]["id"]
    malformed = mifo("synthesize", concept, PROMPT, "--box", "<asset0>=0.1,0.2", "--api", service)
    assert malformed.returncode == 2 and malformed.stdout == ""
    first, fix = malformed.stderr.splitlines()
    assert first == "mifo remote: --box: '<asset0>=0.1,0.2' is not TOKEN=x0,y0,x1,y1"
    assert fix.startswith("  fix: write e.g. --box")
    outside = mifo(
        "synthesize", concept, PROMPT, "--box", "<asset0>=0.1,0.2,1.5,0.8", "--api", service
    )
    assert outside.returncode == 2
    first, fix = outside.stderr.splitlines()
    assert first.startswith("mifo remote: boxes[<asset0>]: ") and "outside" in first
    assert first.endswith("(422 /problems/invalid_layout)") and "between 0 and 1" in fix


def test_an_unreachable_service_exits_3_with_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = mifo("jobs", "--api", url)
    assert done.returncode == 3 and done.stdout == ""
    first, fix = done.stderr.splitlines()
    assert first.startswith(f"mifo remote: --api: cannot reach the service at {url}: ")
    assert "MIFO_API_URL" in fix


def _listed(service: str, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    done = mifo(*args, "--json", "--api", service, env=env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _until_running(service: str, job_id: str) -> None:
    deadline = time.monotonic() + WAIT
    while job_id not in [j["id"] for j in _listed(service, "jobs", "--status", "running")]:
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.5)


def _ctrl_c_as_on_a_terminal() -> None:
    """In the child before it starts: SIGINT's default action, whatever this process got.

    A test run started in the background by a shell without job control (`make test &` in
    a script, some CI runners) ignores SIGINT, and children inherit that. Python then
    installs no KeyboardInterrupt handler, so the signal would never reach the wait."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_a_wait(service: str, job_id: str) -> tuple[int, str]:
    """`mifo remote wait JOB`, Ctrl-C once it reported progress: (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mifo_cli", "remote", "wait", job_id, "--api", service],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_on_a_terminal,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first progress line: it is waiting now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert out == "", out
    return proc.returncode, first + err


def test_cancel_a_queued_and_a_running_job_and_ctrl_c_leaves_a_wait(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, masks = scene
    learn = ["learn", str(image), *map(str, masks), "--json", "--api", service]
    submitted = [mifo(*learn, *_options(o)) for o in ({**QUICK, "phase1_steps": 2000}, QUICK)]
    assert all(s.returncode == 0 for s in submitted), [s.stderr for s in submitted]
    first, second = (json.loads(s.stdout) for s in submitted)  # the first outlasts the test
    running, queued = first["job"]["id"], second["job"]["id"]
    try:
        _until_running(service, running)
        assert queued in [j["id"] for j in _listed(service, "jobs", "--status", "queued")]
        rc, err = _interrupt_a_wait(service, running)
        assert rc == 130, err
        assert err.startswith(f"job {running} running"), err
        assert f"stopped waiting; job {running} keeps running at the service" in err
        assert f"  follow it: mifo remote wait {running} --api {service}\n" in err
        assert f"  cancel it: mifo remote cancel {running} --api {service}\n" in err
        assert running in [j["id"] for j in _listed(service, "jobs", "--status", "running")]

        now = mifo("cancel", queued, "--api", service)
        assert now.returncode == 0 and now.stdout == f"job {queued} canceled\n", now.stderr
        stopped = mifo("cancel", running, "--wait", "--api", service)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.splitlines()[0] == f"job {running} (learn) canceled"
        again = mifo("cancel", running, "--api", service)
        assert again.returncode == 0 and again.stdout == f"job {running} canceled\n"  # a no-op
        waited = mifo("wait", running, "--api", service)
        assert waited.returncode == 1 and f"job {running} canceled" in waited.stderr
        nothing = mifo("download", queued, "--out", str(tmp_path), "--api", service)
        assert nothing.returncode == 1 and list(tmp_path.iterdir()) == []
    finally:
        for job in (running, queued):
            mifo("cancel", job, "--api", service)


class _RunningJob(http.server.BaseHTTPRequestHandler):
    """A service whose one job runs on: its event stream sends the job, then keep-alives."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(_job_running()).encode()
        if not self.path.endswith("/events"):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        with contextlib.suppress(OSError):  # the wait went away
            self.wfile.write(b"event: status\ndata: " + body + b"\nid: 1\n\n")
            for _ in range(600):
                self.wfile.flush()
                time.sleep(0.1)
                self.wfile.write(b": ping\n\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


def _job_running() -> dict[str, Any]:
    progress = {"phase": "phase1", "step": 1, "total": 2000, "fraction": 0.0, "eta_seconds": None}
    return {"id": STUB_JOB, "kind": "learn", "status": "running", "progress": progress}


STUB_JOB = "6c625c37-0c76-409e-b740-57e35397a075"


@pytest.fixture
def running_job_service() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RunningJob)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_ctrl_c_leaves_a_wait_even_when_the_test_run_ignores_sigint(
    running_job_service: str,
) -> None:
    """The cause of a once-failed Ctrl-C test: run from a shell that ignores SIGINT, the test
    started a `mifo remote wait` that ignored it too, and it printed progress until killed."""
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background shell leaves it
    try:
        rc, err = _interrupt_a_wait(running_job_service, STUB_JOB)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert rc == 130, err
    assert err.startswith(f"job {STUB_JOB} running phase1 1/2000"), err
    assert f"stopped waiting; job {STUB_JOB} keeps running at the service" in err


def test_concepts_list_get_and_delete(
    service: str,
    scene: tuple[Path, list[Path]],
    learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path],
) -> None:
    ready = learned[0]["result"]["concept"]["id"]
    image, masks = scene
    made = mifo("learn", str(image), *map(str, masks), *_options(QUICK), "--api", service)
    assert made.returncode == 0, made.stderr
    concept = made.stdout.split()[1]  # "concept <id> pending: ..."
    assert made.stdout.splitlines()[-1].startswith("follow it: mifo remote wait ")
    listed = [c["id"] for c in _listed(service, "concepts", "list", "--limit", "100")]
    assert {ready, concept} <= set(listed)
    shown = mifo("concepts", "get", ready, "--api", service)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == (
        f"concept {ready} ready: <asset0> left blob, <asset1> right blob"
    )
    assert "leakage_outside_mask" in shown.stdout
    gone = mifo("concepts", "delete", concept, "--json", "--api", service)
    assert gone.returncode == 0 and json.loads(gone.stdout) == {"id": concept, "deleted": True}
    missing = mifo("concepts", "get", concept, "--api", service)
    assert missing.returncode == 2 and "(404 " in missing.stderr, missing.stderr
    assert concept not in [c["id"] for c in _listed(service, "concepts", "list", "--limit", "100")]


def test_on_a_terminal_the_progress_is_a_bar(
    service: str, learned: tuple[dict[str, Any], subprocess.CompletedProcess[str], Path]
) -> None:
    concept = learned[0]["result"]["concept"]["id"]
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mifo_cli", "remote", "synthesize", concept, PROMPT, *BOXES]
        + ["--steps", "20", "--wait", "--json", "--api", service],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process is gone: no writer is left
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, screen
    job = json.loads(out)
    text = screen.decode(errors="replace")
    assert f"{job['id'][:8]} synthesis: 100%|" in text and "20/20, job " in text, text
    assert "\r" in text and f"job {job['id']} succeeded" in text


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`mifo serve` that requires keys, and a key from `mifo keys create`."""
    data = tmp_path_factory.mktemp("keyed")
    with serve(data, MIFO_REQUIRE_API_KEYS="true") as base:
        made = subprocess.run(
            [sys.executable, "-m", "mifo_cli", "keys", "create", "--tenant", "cli"],
            env=_env(MIFO_DATA_DIR=str(data)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        yield base, made.stdout.strip().splitlines()[-1]


def test_mifo_api_url_and_key_come_from_the_environment(
    keyed: tuple[str, str], scene: tuple[Path, list[Path]]
) -> None:
    base, key = keyed
    env = _env(MIFO_API_URL=base, MIFO_API_KEY=key)
    image, masks = scene
    made = mifo("learn", str(image), *map(str, masks), *_options(QUICK), "--json", env=env)
    assert made.returncode == 0, made.stderr
    concept = json.loads(made.stdout)["concept"]["id"]
    listed = mifo("concepts", "list", "--json", env=env)
    assert listed.returncode == 0 and [c["id"] for c in json.loads(listed.stdout)] == [concept]
    no_key = mifo("jobs", env=_env(MIFO_API_URL=base))
    assert no_key.returncode == 4 and "(401 " in no_key.stderr and "fix:" in no_key.stderr
    wrong = mifo("jobs", "--key", "not-a-key", env=env)  # the option over the variable
    assert wrong.returncode == 4, wrong.stderr
    elsewhere = _env(MIFO_API_URL=f"http://127.0.0.1:{free_port()}", MIFO_API_KEY="not-a-key")
    options = mifo("concepts", "delete", concept, "--api", base, "--key", key, env=elsewhere)
    assert options.returncode == 0, options.stderr


SERVICE_INSTALL = """
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "diffusers", "peft", "accelerate"}:
            raise ImportError(f"no {name} in the service install")

sys.meta_path.insert(0, NotInstalled())
import mifo_cli
code = mifo_cli.main(sys.argv[1:])
loaded = sorted({m.partition(".")[0] for m in sys.modules})
print(json.dumps(loaded), file=sys.stderr)
sys.exit(code)
"""
HEAVY = {
    *("torch", "diffusers", "transformers", "numpy", "PIL"),
    *("sqlalchemy", "fastapi", "celery", "core", "api", "worker"),
}


def test_mifo_remote_runs_without_torch(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVICE_INSTALL, "remote", "jobs", "--json", "--api", service],
        cwd=ROOT,
        env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    loaded = set(json.loads(done.stderr.splitlines()[-1]))
    assert "mifo_client" in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)


@pytest.mark.parametrize("hard_links", [True, False])
def test_saving_without_overwrite_keeps_the_file_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    """What `--out` relies on, with and without hard links on the file system."""
    from mifo_client import _files

    if not hard_links:

        def refuse(src: object, dst: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
    assert _files.save(tmp_path, "a.png", b"first", overwrite=False) == tmp_path / "a.png"
    with pytest.raises(FileExistsError) as taken:
        _files.save(tmp_path, "a.png", b"second", overwrite=False)
    assert taken.value.filename == str(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no part file left
    _files.save(tmp_path, "a.png", b"third")  # the default replaces, as before
    assert (tmp_path / "a.png").read_bytes() == b"third"


def test_progress_lines_show_the_phase_the_share_the_eta_and_the_loss_terms() -> None:
    from mifo_cli.remote.output import progress_text
    from mifo_client import Job

    progress = {"phase": "phase1", "step": 12, "total": 40, "fraction": 0.31, "eta_seconds": 25}
    running = Job(id="0b7d5a52-x", kind="learn", status="running", progress=progress)
    assert progress_text(running) == "running phase1 12/40 31% ETA 0:00:25"
    progress["losses"] = {"reward": -0.4123, "rec": 0.02134}
    running = Job(id="0b7d5a52-x", kind="learn", status="running", progress=progress)
    assert progress_text(running) == "running phase1 12/40 31% ETA 0:00:25 rec 0.0213 reward -0.412"


def _in_process(*args: str) -> int:
    """`mifo remote ARGS...` in this process: its exit code, argparse's included."""
    from mifo_cli import main

    try:
        return main(["remote", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "--limit", "-1"], "argument --limit: -1 is below 1"),
        (["jobs", "--limit", "0"], "argument --limit: 0 is below 1"),
        (["concepts", "list", "--limit", "-5"], "argument --limit: -5 is below 1"),
        (["jobs", "--limit", "many"], "argument --limit: 'many' is not a whole number"),
        (["wait", "JOB", "--timeout", "-1"], "argument --timeout: -1 is below 0"),
        (["wait", "JOB", "--timeout", "nan"], "argument --timeout: nan is not a finite number"),
        (
            ["synthesize", "C", PROMPT, "--guidance-scale", "inf"],
            "argument --guidance-scale: inf is not a finite number",
        ),
    ],
)
def test_counts_and_seconds_out_of_range_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _in_process(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value", "detail"),
    [
        (
            "--box",
            "<asset0>=nan,0,1,1",
            "'<asset0>=nan,0,1,1' has a coordinate that is not a finite number",
        ),
        (
            "--box",
            "<asset0>=0,0,inf,1",
            "'<asset0>=0,0,inf,1' has a coordinate that is not a finite number",
        ),
        ("--option", "guidance_scale=NaN", "guidance_scale=NaN holds NaN, which JSON cannot carry"),
        (
            "--option",
            "x=[0.5,-Infinity]",
            "x=[0.5,-Infinity] holds -Infinity, which JSON cannot carry",
        ),
        ("--option", "x=1e999", "x=1e999 holds a number too large, which JSON cannot carry"),
    ],
)
def test_non_finite_numbers_are_refused_before_any_request(
    flag: str, value: str, detail: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at this address: a request would exit 3, not 2.
    api = f"http://127.0.0.1:{free_port()}"
    assert _in_process("synthesize", "C", PROMPT, flag, value, "--api", api) == 2
    first, fix = capsys.readouterr().err.splitlines()
    assert first == f"mifo remote: {flag}: {detail}"
    assert fix.startswith("  fix: give ")


def test_a_config_file_with_nan_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "options.json"
    config.write_text('{"guidance_scale": NaN}')
    api = f"http://127.0.0.1:{free_port()}"
    assert _in_process("synthesize", "C", PROMPT, "--config", str(config), "--api", api) == 2
    first, _ = capsys.readouterr().err.splitlines()
    assert first == f"mifo remote: --config: {config} holds NaN, which JSON cannot carry"


def test_a_problem_names_its_field_once() -> None:
    import io

    from mifo_cli.remote.output import Console

    err = io.StringIO()
    console = Console(False, out=io.StringIO(), err=err)
    console.problem("job_id", "job_id: Input should be a valid UUID", "give a job id", "422 /p")
    console.problem("masks[1]", "masks[1] is 320x320, the image 256x256", None)
    console.problem("masks", "masks[1] is 320x320", None)
    console.problem("seed", "seeds must be whole numbers", None)
    assert err.getvalue().splitlines() == [
        "mifo remote: job_id: Input should be a valid UUID (422 /p)",
        "  fix: give a job id",
        "mifo remote: masks[1] is 320x320, the image 256x256",
        "mifo remote: masks: masks[1] is 320x320",
        "mifo remote: seed: seeds must be whole numbers",
    ]


def test_stdout_closed_early_exits_141_without_a_traceback(service: str) -> None:
    """`mifo remote jobs --json | head -0`: the reader is gone before the answer is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mifo_cli", "remote", "jobs", "--json", "--api", service],
            cwd=ROOT,
            env=_env(),
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=WAIT,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_the_services_field_is_named_once(service: str) -> None:
    done = mifo("wait", "not-a-uuid", "--api", service)
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith("mifo remote: job_id: Input should be a valid UUID"), first
    assert first.endswith("(422 /problems/validation_error)")
