"""Nightly rerun cost: first build vs an unchanged rerun from the CLI, without and with a running Prefect server.

Every build is `unihope build` in a child process of this one (one process tree, the same machine
state for all runs). The synthetic source is prepared once beforehand (a nightly rerun finds its
source in place), so the first build times the pipeline, not the generator. Then the fixed start-up
cost of one CLI call is itemised: the interpreter, the CLI, the unchanged rerun's own work (it stops
before Prefect), and what only a build with work pays: Prefect's imports and a temporary API server.

Run: PYTHONPATH=. .venv/bin/python bench/rerun.py [--frames 144]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMES_PER_SEQUENCE = 24  # configs/demo.yaml
NUM_CAMERAS = 2
SERVER_START_TIMEOUT_S = 180.0


def _env(prefect_home: Path, api_url: str | None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def _timed(command: list[str], env: dict[str, str], log_path: Path) -> float:
    """Wall seconds of one child process (fails loudly with its log)."""
    start_s = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed_s = time.perf_counter() - start_s
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    return elapsed_s


def _build_command(out: Path, synthetic_root: Path, num_sequences: int, frames_per_task: int) -> list[str]:
    return [sys.executable, "-m", "unihope.cli", "build", "--config", str(REPO / "configs" / "demo.yaml"),
            "--out", str(out), "--set", f"source.root={synthetic_root}",
            "--set", f"source.synthetic.num_sequences={num_sequences}", "--set", f"flow.frames_per_task={frames_per_task}"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(prefect_home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` (what an operator runs once per machine), waited for until healthy."""
    port = _free_port()
    env = {**_env(prefect_home, None), "PREFECT_UI_ENABLED": "0"}
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, api_url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"prefect server did not start in {SERVER_START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=144, help="frames per build (multiple of 48)")
    args = parser.parse_args()
    num_sequences = args.frames // (FRAMES_PER_SEQUENCE * NUM_CAMERAS)
    frames_per_task = args.frames // 3  # 3 batches per stage, as the 144-frame measurement
    work = Path(tempfile.mkdtemp(prefix="unihope-rerun-"))
    try:
        synthetic_root = work / "synthetic"
        prepare = [sys.executable, "-c", "import sys; from unihope.config import SourceConfig, HandModelConfig; "
                   "from unihope.sources import prepare_source; "
                   f"prepare_source(SourceConfig(kind='synthetic', root=sys.argv[1], synthetic={{'format': 'dexycb', "
                   f"'num_sequences': {num_sequences}, 'frames_per_sequence': {FRAMES_PER_SEQUENCE}, "
                   f"'num_cameras': {NUM_CAMERAS}, 'seed': 0}}), HandModelConfig())", str(synthetic_root)]
        subprocess.run(prepare, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})

        # 1. First build and unchanged rerun, each CLI call with its own temporary API server.
        rows = []
        home = work / "prefect-home"
        for label, api_url, server in (("temporary server per call", None, None), ("running server", "", None)):
            if api_url == "":
                server, api_url = _start_server(work / "server-home", work / "server.log")
            try:
                out = work / f"out-{len(rows)}"
                command = _build_command(out, synthetic_root, num_sequences, frames_per_task)
                first_s = _timed(command, _env(home, api_url), work / "first.log")
                rerun_s = min(_timed(command, _env(home, api_url), work / "rerun.log") for _ in range(2))
                rows.append((label, first_s, rerun_s))
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(timeout=30)

        # 2. Fixed start-up cost of one CLI call, itemised (best of 3 each).
        env = _env(home, None)

        def best(code: str) -> float:
            return min(_timed([sys.executable, "-c", code], env, work / "item.log") for _ in range(3))

        interpreter_s = best("pass")
        cli_s = best("import unihope.cli")
        prefect_s = best("import unihope.cli, unihope.build_cli, unihope.launch, unihope.flows.build")
        server_s = best("import unihope.flows.build; from unihope.prefect_server import start_owned_api_server; "
                        "start_owned_api_server().stop()")
        print(f"{args.frames} frames, unihope build from the CLI, child processes of one bench process")
        print(f"{'':28s} {'first build':>12s} {'unchanged rerun':>16s} {'rerun / first':>14s}")
        for label, first_s, rerun_s in rows:
            print(f"{label:28s} {first_s:10.1f} s {rerun_s:14.1f} s {rerun_s / first_s:14.3f}")
        running_rerun_s = rows[1][2]
        print("fixed start-up cost of one call (best of 3):")
        print(f"  interpreter                          {interpreter_s:6.2f} s")
        print(f"  + CLI (typer, configs)               {cli_s - interpreter_s:6.2f} s")
        print(f"  + the unchanged rerun's own work     {running_rerun_s - cli_s:6.2f} s   (config, hashes, no-op check, "
              f"summary, exit)")
        print("paid only by a build with work to do:")
        print(f"  Prefect client, flow and tasks       {prefect_s - cli_s:6.2f} s")
        print(f"  temporary API server (start + stop)  {server_s - prefect_s:6.2f} s   (none with a running server)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
