"""bench/quality.py: the paper's rows beside ours, "not measured" where ours cannot be, and the
whole path on the CPU with the tiny models (--smoke)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.quality import PAPER_TABLE_2, main, report, synthesis_prompts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures on a GPU")
def test_without_a_gpu_our_rows_are_not_measured(tmp_path, capsys):
    out = tmp_path / "quality.json"
    assert main(["--concept", "absent", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not measured (no CUDA device)" in text and "0.7918" in text and "25.312" in text
    data = json.loads(out.read_text())
    assert data["not_measured"] == "no CUDA device" and data["ours"] is None
    assert data["paper"]["table_2"]["BD"] == list(PAPER_TABLE_2["BD"])


def test_the_report_prints_our_figures_with_four_decimals():
    row = {"sim_c": 0.61234, "sim_d": 0.8, "nsim_d": 0.7, "cs": 0.1469}
    ours = {"rows": {"learning": row, "synthesis": row}}
    text = report(ours, None, "ours")
    assert "0.6123" in text and "0.5600" in text  # SIM-D x NSIM-D of the learning row
    assert "not measured" not in text


def test_synthesis_prompts_put_every_instance_in_the_templates():
    prompts = synthesis_prompts(["<asset0>", "<asset1>"])
    assert len(prompts) == 10 and prompts[0] == "a photo of <asset0> and <asset1> at the beach"


def test_smoke_runs_the_whole_path_on_the_cpu(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run(
        [sys.executable, "bench/quality.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny smoke (random weights, not a result)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["not_measured"] is None
    for stage in ("learning", "synthesis"):
        assert data["ours"]["rows"][stage]["images"] == 2
    stages = [e["stage"] for e in data["ours"]["evaluations"]]
    assert stages == ["learning", "synthesis"]
