"""Errors as a user meets them: one line from the CLI (exit 2, no traceback), and backends
that say what they need before any launch."""
import os
import subprocess
import sys

import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import registry as _registry
from eager_kernels import errors
from eager_kernels import __main__ as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv -> the start of the one error line. None of these loads a model.
CLI_CASES = {
    "max-paths": (["generate", "hi", "--max-paths", "0"],
                  "eager-kernels generate: error: max_paths_per_prompt: expected a positive int, got 0"),
    "max-new-tokens": (["generate", "hi", "--max-new-tokens", "-3"],
                       "eager-kernels generate: error: max_new_tokens: expected a positive int, got -3"),
    "model": (["generate", "hi", "--model", "/nonexistent"],
              "eager-kernels generate: error: load_model: /nonexistent is not a transformers model directory"),
    "triton": (["generate", "hi", "--backend", "triton"],
               "eager-kernels generate: error: backend='triton' needs CUDA tensors"),
    "eval": (["eval", "--model", "/nonexistent", "--prompts", "2"],
             "eager-kernels eval: error: load_model: /nonexistent"),
    "bench": (["bench", "--rows", "0"], "eager-kernels bench: error: --rows: expected positive integers"),
    "serve": (["serve", "--max-paths", "0"], "eager-kernels serve: error: --max-paths: expected an int >= 1, got 0"),
}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "EAGER_KERNELS_DEBUG")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _launch(argv, **env):
    return subprocess.Popen([sys.executable, "-m", "eager_kernels", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(**env), cwd=REPO)


def _check_cli(names, debug_too):
    # All at once: each process costs an interpreter start and the torch import.
    procs = {name: _launch(CLI_CASES[name][0]) for name in names}
    debugs = []
    if debug_too:
        debugs = [_launch(["generate", "hi", "--max-paths", "0", "--debug"]),
                  _launch(["generate", "hi", "--max-paths", "0"], EAGER_KERNELS_DEBUG="1")]
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, proc.returncode, err)
        assert "Traceback" not in err, (name, err)
        if name == "bench":  # argparse's own error form: usage lines, then the one error line
            lines = lines[-1:]
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith(CLI_CASES[name][1]), (name, lines[0])
    for proc in debugs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and proc.returncode != 2, err
        assert "Traceback" in err and "ConfigError: max_paths_per_prompt" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the triton case expects a machine without CUDA")
def test_cli_errors_are_one_line_with_exit_code_2():
    _check_cli(["max-paths", "triton"], debug_too=True)


@pytest.mark.slow
def test_cli_errors_every_command():
    _check_cli([n for n in CLI_CASES if n != "triton" or not torch.cuda.is_available()], debug_too=False)


def test_cli_user_error_in_process(capsys, monkeypatch):
    def bad(args):
        raise FileNotFoundError("model weights: missing")

    monkeypatch.setattr(cli, "cmd_generate", bad)
    assert cli.main(["generate", "hi"]) == 2
    err = capsys.readouterr().err
    assert err == "eager-kernels generate: error: model weights: missing\n"


def test_cli_missing_extra_is_one_line(capsys, monkeypatch):
    def bad(args):
        raise errors.MissingExtraError("llama_cpp", "llamacpp", "the llama.cpp engine")

    monkeypatch.setattr(cli, "cmd_generate", bad)
    assert cli.main(["generate", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eager-kernels generate: error: the llama.cpp engine needs the optional package")
    assert "eager-kernels[llamacpp]" in err and "\n" not in err


def test_cli_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug, not the user's")

    monkeypatch.setattr(cli, "cmd_generate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["generate", "hi"])


def test_cli_debug_reraises(monkeypatch):
    def bad(args):
        raise ValueError("temperature: expected a number >= 0, got -1")

    monkeypatch.setattr(cli, "cmd_generate", bad)
    with pytest.raises(ValueError, match="temperature"):
        cli.main(["--debug", "generate", "hi"])


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 16)
    for call in (lambda: ek.entropy(x, backend="triton"), lambda: ek.topk_logprobs(x, 2, backend="triton"),
                 lambda: ek.sample(x, temperature=1.0, seed=0, backend="triton"),
                 lambda: ek.EntropyHistory(1, 4, device="cpu", backend="triton").threshold(
                     torch.zeros(1, dtype=torch.int64), q=50.0, theta=0.0, initial=1.0)):
        with pytest.raises(errors.BackendUnavailableError, match="needs CUDA tensors.*backend='cpu' or 'torch'.*TRITON_INTERPRET=1"):
            call()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is a way to run it on CPU
    assert _registry.resolve("triton", torch.device("cpu")) == "triton"


def test_triton_missing_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(errors, "_found", set())
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    for device in ("cuda", "cpu"):
        with pytest.raises(errors.MissingExtraError, match=r"eager-kernels\[triton\]"):
            _registry.resolve("triton", torch.device(device))
    with pytest.raises(ImportError, match=r"eager-kernels\[triton\]"):
        _registry.resolve("auto", torch.device("cuda"))


def test_cpu_backend_without_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_registry, "_cpu_ext", None)
    monkeypatch.setattr(_registry, "_cpu_ext_error", "ImportError: no module eager_kernels.kernels._C")
    x = torch.randn(2, 16)
    with pytest.raises(errors.BackendUnavailableError, match="pip install --no-build-isolation -e ."):
        ek.entropy(x, backend="cpu")
    with pytest.raises(RuntimeError):  # what it raised before: old except clauses keep working
        ek.entropy(x, backend="cpu")
