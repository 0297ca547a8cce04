"""bench/gpu.py runs end to end on CPU (--smoke) and writes every row and figure it promises."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["default", "fp32", "full"]
CONFIG_KEYS = ["precision", "phase2_mode", "gradient_checkpointing", "optimizer", "tf32"]
PHASE_KEYS = ["steps", "steps_per_s", "step_ms_attn", "step_ms_no_attn"]
SYNTH_KEYS = ["s_per_image", "call_s", "guided_step_ms", "unguided_step_ms"]
LEARN_KEYS = ["projected_1200_steps_s", "projected_learn_call_s", "learn_call_s"]
MEMORY_KEYS = [
    "learn_setup_peak_gb",
    "phase1_peak_gb",
    "phase2_peak_gb",
    "synthesis_b1_peak_gb",
    "synthesis_b4_peak_gb",
]
TARGET_KEYS = {
    "projected_1200_steps_s",
    "synthesis_b1_s_per_image",
    "synthesis_b4_s_per_image",
    *MEMORY_KEYS[1:],
}
TIMED_KEYS = (
    [f"{ph}_{k}" for ph in ("phase1", "phase2") for k in PHASE_KEYS]
    + LEARN_KEYS
    + [f"synthesis_b{b}_{k}" for b in (1, 4) for k in SYNTH_KEYS]
)


def test_smoke_run_on_cpu_writes_every_row_and_key(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target (H200, 512 px)" in proc.stdout

    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["model"] == "tiny"
    assert data["targets_apply"] is False
    assert {t["key"] for t in data["targets"]} == TARGET_KEYS
    assert [row["variant"] for row in data["rows"]] == VARIANTS
    for row in data["rows"]:
        assert set(CONFIG_KEYS + TIMED_KEYS + MEMORY_KEYS) <= set(row), row["variant"]
        assert row["skipped"] == []
        for key in TIMED_KEYS:
            assert isinstance(row[key], int | float) and math.isfinite(row[key]), (
                row["variant"],
                key,
            )
            assert row[key] > 0, (row["variant"], key)
        assert row["phase1_steps"] == 3 and row["phase2_steps"] == 2
        # no GPU: no memory figures, and targets (one H200 at 512 px) are not judged
        assert all(row[key] is None for key in MEMORY_KEYS)
        assert row["target_met"] and all(v is None for v in row["target_met"].values())
        # projections scale the measured step times to the paper's 800 + 400 steps
        assert (
            row["projected_1200_steps_s"]
            > 800 * min(row["phase1_step_ms_attn"], row["phase1_step_ms_no_attn"]) / 1e3
        )
    by_variant = {row["variant"]: row for row in data["rows"]}
    assert by_variant["default"]["phase2_mode"] == "lora"
    assert by_variant["fp32"]["precision"] == "fp32"
    assert by_variant["full"]["phase2_mode"] == "full"
