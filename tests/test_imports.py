"""Heavy libraries load only where a stage needs them: the CLI's light commands and an unchanged rerun's path
import neither torch, diffusers nor pyrender (torch alone costs ~3 s a call), nor Prefect's server module
when a server is configured (~4 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "pyrender", "prefect.server.api.server")


def _loaded_after(code: str, env_extra: dict[str, str] | None = None) -> list[str]:
    """The HEAVY modules loaded after running `code` in a fresh interpreter."""
    import os

    probe = (f"import sys, json\n{code}\n"
             f"print('LOADED=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOADED=")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("LOADED="))


def _cli(*args: str) -> str:
    return ("import runpy\n"
            f"sys.argv = ['unihope', *{list(args)!r}]\n"
            "try:\n    runpy.run_module('unihope.cli', run_name='__main__')\nexcept SystemExit:\n    pass")


def test_help_and_ls_versions_import_no_heavy_library(tmp_path):
    assert _loaded_after(_cli("--help")) == []
    assert _loaded_after(_cli("ls-versions", "--data", str(tmp_path))) == []


def test_build_entry_points_with_a_configured_server_import_no_server_module():
    code = "import unihope.cli, unihope.build_cli, unihope.launch, unihope.flows.build"
    assert _loaded_after(code, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}) == []


def test_preparing_and_listing_a_complete_synthetic_source_imports_no_torch(synthetic_dexycb):
    from tests.conftest import SYNTHETIC_DEXYCB_CONFIG

    code = ("from unihope.config import HandModelConfig, SourceConfig\n"
            "from unihope.sources import open_source, prepare_source\n"
            f"cfg = SourceConfig(kind='synthetic', root={str(synthetic_dexycb)!r}, "
            f"synthetic={SYNTHETIC_DEXYCB_CONFIG.model_dump(mode='json')!r})\n"
            "prepare_source(cfg, HandModelConfig())\n"
            "assert len(open_source(cfg, HandModelConfig()).index()) == 48")
    assert _loaded_after(code) == []
