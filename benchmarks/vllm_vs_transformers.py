"""How far the vLLM engine's trees are from the transformers engine's (both float32), on the
configurations of tests/test_vllm_engine.py::test_same_tree_as_transformers and the bench's
paper policy: whether the trees are equal, and the largest |difference| of a path's
log-probability and of a recorded entropy. Run in .venv-vllm (docs/vllm.md, "Numerics"):

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/vllm_vs_transformers.py
"""
import datetime
import os

import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from eager_kernels import EagerConfig, generate  # noqa: E402
from eager_kernels.engines import TransformersEngine  # noqa: E402
from eager_kernels.engines.vllm_engine import VllmEngine  # noqa: E402
from eager_kernels.engines.models import default_model_dir, load_default_model  # noqa: E402

PROMPTS = ["What is 17 + 25?", "Name a colour.", "Write one short sentence about the sea."]


def configs():
    paper = dict(policy="paper", max_new_tokens=24, theta=1.0, initial_threshold=1.0, seed=3, backend="cpu")
    return {
        "seed M=5": EagerConfig(policy="seed", max_new_tokens=24, max_paths_per_prompt=5, prune_to=5, backend="cpu"),
        "paper adapt M=2 T=1": EagerConfig(**dict(paper, max_paths_per_prompt=2, budget="adapt", temperature=1.0)),
        "paper stop '2'": EagerConfig(**dict(paper, max_paths_per_prompt=4, stop_branching_at="2", theta=0.5,
                                             initial_threshold=0.5)),
        "paper M=4 default T": EagerConfig.paper(max_new_tokens=32, max_paths_per_prompt=4, backend="cpu"),
    }


def main():
    model, tok = load_default_model(dtype=torch.float32)
    hf = TransformersEngine(model, tok)
    v = VllmEngine(default_model_dir(), dtype="float32", max_num_seqs=16, max_model_len=1024,
                   max_num_batched_tokens=2048)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, prompts {PROMPTS}, keys [7, 11, 5]")
    for name, cfg in configs().items():
        a = generate(hf, PROMPTS, cfg, prompt_keys=[7, 11, 5])
        b = generate(v, PROMPTS, cfg, prompt_keys=[7, 11, 5])
        same = [[(p.token_ids, p.branch_steps, p.stage) for p in r.paths] for r in a.results] == \
               [[(p.token_ids, p.branch_steps, p.stage) for p in r.paths] for r in b.results]
        dlp = dent = 0.0
        for ra, rb in zip(a.results, b.results):
            for pa, pb in zip(ra.paths, rb.paths):
                if pa.token_ids != pb.token_ids:
                    continue
                dlp = max(dlp, abs(pa.logprob - pb.logprob))
                dent = max(dent, max((abs(x - y) for x, y in zip(pa.entropies, pb.entropies)), default=0.0))
        print(f"{name:<22} paths {sum(len(r.paths) for r in a.results):>3}  same tree {same!s:<5}  "
              f"max |d logprob| {dlp:.2e}  max |d entropy| {dent:.2e}")
    v.close()


if __name__ == "__main__":
    main()
