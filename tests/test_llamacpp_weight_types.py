"""Every GGUF weight type the llama.cpp engine documents decodes on this CPU.

Each type is loaded and decoded in a subprocess of its own, so that a build whose kernels
die on this machine (SIGILL in llama.cpp's AMX path on some Intel CPUs; see
eager_kernels/engines/llamacpp_build.py) fails one test with the signal named, instead of
killing the test run. The child prefills one prompt and decodes greedily; the parent checks
the exit, that every logit was finite, and that the other types agree with BF16 on this easy
prompt (8-bit and 16-bit: the greedy tokens; 4-bit: the first token), which a broken matmul kernel (other tokens, NaN) would not.

Also the build checks of llamacpp_build.py on recorded /proc/cpuinfo and system-info texts.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from eager_kernels.engines import llamacpp_build as lb

STEPS = 6
PROMPT = "What is 17 + 25?"  # with the chat template: its first token leads by 0.8-1.9 nats in every type

CHILD = textwrap.dedent("""
    import json, math, sys
    import torch
    from eager_kernels.engines.llamacpp import LlamaCppEngine
    from eager_kernels.engines.models import default_gguf_path
    eng = LlamaCppEngine(default_gguf_path(sys.argv[1]), n_threads=2)
    ids = eng.tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[2]}],
                                            add_generation_prompt=True, tokenize=True)
    logits = eng.prefill([ids], max_rows=1, max_new_tokens=int(sys.argv[3]))
    tokens, finite = [], bool(torch.isfinite(logits).all())
    for _ in range(int(sys.argv[3])):
        tokens.append(int(logits[0].argmax()))
        logits = eng.decode(torch.tensor(tokens[-1:], dtype=torch.int32))
        finite = finite and bool(torch.isfinite(logits).all())
    print(json.dumps({"tokens": tokens, "finite": finite, "extra_buffers": eng.extra_buffers,
                      "features": sorted(eng.build_features)}))
""")


def _decode_in_child(weight_type):
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (make install)")
    from eager_kernels.engines.models import default_gguf_path

    try:
        default_gguf_path("q4_1")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    proc = subprocess.run([sys.executable, "-c", CHILD, weight_type, PROMPT, str(STEPS)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    if proc.returncode < 0:
        pytest.fail(f"{weight_type}: the decode died of {signal.Signals(-proc.returncode).name} "
                    f"(llama.cpp's kernels for this weight type on this CPU); stderr:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"{weight_type}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bf16_tokens():
    return _decode_in_child("bf16")["tokens"]


@pytest.mark.parametrize("weight_type", ["q4_1", "q8_0", "q4_0", "f16", "bf16"])
def test_weight_type_decodes_in_a_subprocess(weight_type, bf16_tokens):
    out = _decode_in_child(weight_type)
    assert out["finite"], f"{weight_type}: non-finite logits"
    assert len(out["tokens"]) == STEPS
    assert "AMX_INT8" not in out["features"] or not out["extra_buffers"]
    if weight_type in ("f16", "bf16", "q8_0"):  # close to the BF16 weights: the same greedy text
        assert out["tokens"] == bf16_tokens
    else:  # 4-bit (Q4_0 re-quantised from the shipped Q4_1): the first token, and BF16's top
        assert out["tokens"][0] == bf16_tokens[0]


def test_a_crash_in_the_child_is_a_failure_naming_the_signal(monkeypatch):
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (make install)")
    monkeypatch.setattr(sys.modules[__name__], "CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    with pytest.raises(pytest.fail.Exception, match="q4_1: the decode died of SIGILL"):
        _decode_in_child("q4_1")


# ---- the build checks, on recorded texts (no llama.cpp needed) -------------------------

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 pni ssse3 avx512f avx512cd avx512vl avx512dq " \
       "avx512bw avx512vbmi avx512_vnni avx512_bf16\n"
SPR = ZEN4.replace("avx512_bf16", "avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16")
HASWELL = "flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 pni ssse3\n"


def test_cmake_args_list_the_cpus_sets_and_never_amx():
    for text in (ZEN4, SPR, HASWELL):
        args = lb.cmake_args(lb.cpu_flags(text))
        assert "-DGGML_NATIVE=OFF" in args
        assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
        assert not any(a.startswith("-DGGML_AMX") and a.endswith("=ON") for a in args)
    assert "-DGGML_AVX512=ON" in lb.cmake_args(lb.cpu_flags(ZEN4))
    assert "-DGGML_AVX_VNNI=ON" in lb.cmake_args(lb.cpu_flags(SPR))
    haswell = lb.cmake_args(lb.cpu_flags(HASWELL))
    assert "-DGGML_AVX2=ON" in haswell and "-DGGML_AVX512=OFF" in haswell and "-DGGML_AVX512_BF16=OFF" in haswell
    assert lb.cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") is None  # aarch64: no x86 flags line


def test_a_build_for_another_cpu_is_named_not_run():
    info = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | " \
           "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
    features = lb.build_features(info)
    assert {"AVX512", "AMX_INT8", "REPACK"} <= features and "CPU" not in features
    assert lb.missing_instruction_sets(features, lb.cpu_flags(HASWELL)) == \
        ["AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI"]
    assert lb.missing_instruction_sets(features, lb.cpu_flags(SPR)) == []
    # AMX is not required of the CPU: ggml asks the kernel for it at run time
    assert lb.missing_instruction_sets(features, lb.cpu_flags(ZEN4)) == []


def test_the_engine_raises_instead_of_running_a_foreign_build(monkeypatch):
    from eager_kernels.engines import llamacpp

    class Lib:
        @staticmethod
        def llama_print_system_info():
            return b"CPU : AVX2 = 1 | AVX512 = 1 | AVX512_BF16 = 1 |"

    haswell, zen4 = lb.cpu_flags(HASWELL), lb.cpu_flags(ZEN4)
    monkeypatch.setattr(lb, "cpu_flags", lambda: haswell)
    with pytest.raises(RuntimeError, match="AVX512, AVX512_BF16.*rebuild"):
        llamacpp.check_build(Lib)
    monkeypatch.setattr(lb, "cpu_flags", lambda: zen4)
    assert "AVX512" in llamacpp.check_build(Lib)
