"""The Triton kernels compile for NVIDIA GPUs (sm_90: H100/H200), checked on any machine:
tests/triton_compile.py runs Triton's real compiler down to a cubin for every launch
variant (the interpreter, which runs the kernels in the other tests here, accepts code the
compiler rejects). Fresh compiles: each run gets an empty Triton cache."""
import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_compile.py")

# About 1.5 minutes of CPU: make test-full only (make test runs every kernel in the
# interpreter, which checks results; this checks that the real compiler accepts them).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                or importlib.util.find_spec("triton.backends.nvidia") is None,
                                reason="Triton's NVIDIA backend is not installed")]


@pytest.mark.parametrize("extra", [[], ["--fallback-topk"]], ids=["tl.topk", "fallback-topk"])
def test_kernels_compile_for_sm90(tmp_path, extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, SCRIPT, "--arch", "90", *extra], env=env, capture_output=True,
                          text=True, timeout=900)
    report = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert "all variants compiled" in proc.stdout and "FAILED" not in proc.stdout, report
    assert proc.stdout.count("ok      sm_90") >= 25, report
