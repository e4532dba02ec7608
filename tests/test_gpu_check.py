"""The GPU session's script without a GPU: benchmarks/gpu_check.sh parses (bash -n), and
the step grid it runs (benchmarks/gpu_step_grid.py) runs its --dry-run on CPU (the Triton
interpreter, tiny sizes), writing its CSV."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INTERPRETED

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not INTERPRETED, reason="the dry run is the Triton interpreter on CPU")
def test_gpu_step_grid_dry_run(tmp_path):
    out = tmp_path / "grid.csv"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step_grid.py"), "--dry-run", "--dtypes",
                           "bfloat16", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["op"] for r in rows] == ["entropy", "entropy_top20", "topk_logprobs", "sample", "eager_step",
                                       "prepared", "torch_step", "torch_best"]
    assert all(float(r["call_us"]) > 0 for r in rows)
