"""Ray Data scale-out (eager_kernels.sampler.ray, eager_kernels.evaluation.ray) on a tiny model: the same results as in
process, with 1 and 2 workers, both policies and a budget stage; resume after an
interruption; the evaluation with --ray writes the same records.

Ray starts once per session (num_cpus=2, no dashboard, a small object store); the tests
that need it skip without ray. Ray start and actor start (each actor imports torch and
transformers) cost tens of seconds on this machine: those tests are slow; their fast
counterparts run the same actor classes in this process, without Ray.
"""
import json
import os
import shutil

import pytest
import torch

import numpy as np

pytest.importorskip("transformers")

from eager_kernels import EagerConfig, generate  # noqa: E402
from eager_kernels.evaluation import ray as eval_ray  # noqa: E402
from eager_kernels.sampler import ray as dist  # noqa: E402

from conftest import float32_tolerance, llama_logit_bound, llama_reduction_terms, make_tiny_llama  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB, EOS = 160, 3
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35, 36, 37], [1, 40, 41, 42], [1, 50]]


class TinyFactory:
    """(model, tokenizer) for the actors: the same tiny random Llama in every process."""

    def __init__(self, head_scale=25.0, tokenizer=None):
        self.head_scale, self.tokenizer = head_scale, tokenizer

    def __call__(self):
        torch.set_num_threads(1)
        return make_tiny_llama(VOCAB, EOS, head_scale=self.head_scale, silence_eos=True), self.tokenizer


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'eager-kernels[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'eager-kernels[ray]')")
    root = os.path.dirname(HERE)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([HERE, root]), "TRITON_INTERPRET": "1"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


def _cfg(policy, **kw):
    if policy == "seed":
        base = dict(max_new_tokens=6, max_paths_per_prompt=4, prune_to=4, temperature=0.8, backend="torch")
        base.update(kw)
        return EagerConfig.seed_policy(**base)
    base = dict(max_new_tokens=6, max_paths_per_prompt=3, theta=0.5, initial_threshold=0.5, q=50.0,
                entropy_top_k=20, temperature=0.6, backend="torch")
    base.update(kw)
    return EagerConfig.paper(**base)


def _in_process(cfg):
    model, _ = TinyFactory()()
    out = generate(model, PROMPTS, cfg)
    return [[(p.stage, p.token_ids, p.branch_steps) for p in r.paths] for r in out.results], out


def _from_ray(out_dir):
    return [[(p["stage"], p["token_ids"], p["branch_steps"]) for p in r["paths"]] for r in dist.load_results(out_dir)]


def _batch(rows):
    return {"key": np.array([k for k, _, _ in rows]), "prompt": np.array([json.dumps(p) for _, p, _ in rows]),
            "cap": np.array([c for _, _, c in rows])}


def test_stage_actor_in_process(tmp_path):
    """The actor of the pipeline without Ray: two batches in any order give generate()'s
    paths; part files are whole (a torn temporary file is ignored)."""
    cfg = _cfg("paper")
    want, _ = _in_process(cfg)
    actor = dist._StageActor(TinyFactory(), cfg, "init", str(tmp_path), 1, None)
    rows = [(k, p, cfg.max_paths_per_prompt) for k, p in enumerate(PROMPTS)]
    out = actor(_batch(rows[3:]))
    assert out["key"].tolist() == [3, 4] and out["tokens"][0] > 0
    actor(_batch(rows[:3]))
    (tmp_path / "init" / ".part-x.jsonl.tmp").write_text('{"key": 9, "to')
    assert _from_ray(tmp_path) == want
    assert {r["key"] for r in dist._read_parts(tmp_path / "init")} == set(range(5))


def test_eval_actor_in_process():
    """The evaluation actor without Ray: a chunk of tasks gives the in-process records."""
    from conftest import DigitTokenizer

    from eager_kernels.evaluation import EvalConfig, Evaluator
    from eager_kernels.evaluation.runner import label

    cfg = EvalConfig(prompts=3, max_paths=3, max_new_tokens=4, theta=0.5, q=50.0, batch_size=3, backend="torch",
                     model_name="tiny")
    factory = TinyFactory(head_scale=8.0, tokenizer=DigitTokenizer())
    model, tok = factory()
    ev = Evaluator(model, tok, cfg, eval_ray._memory_store(), progress=False, log=lambda *a: None)
    ev.run("eager_init")
    tol = _record_tolerance(model, cfg)
    actor = eval_ray._EvalActor(factory, cfg, 1)
    lab = label("eager_init")
    out = actor({"spec": [json.dumps(dict(ids=[2, 0], method="eager_init", theta=None, label=lab, extras=None,
                                          init=[]))]})
    got = {r["prompt_id"]: r for r in json.loads(out["records"][0])}
    assert sorted(got) == [0, 2]
    for i in (0, 2):
        _assert_same(_strip(got[i]), _strip(ev.store.get(ev.key(lab, i))), tol)


@pytest.mark.slow
def test_ray_smoke_one_worker(ray_session, tmp_path):
    """One worker, the paper policy with the adapt budget: the same paths as generate()."""
    cfg = _cfg("paper", budget="adapt", max_paths_per_prompt=2)
    want, out = _in_process(cfg)
    stats = dist.generate_ray(TinyFactory(), PROMPTS, cfg, tmp_path, workers=1, num_cpus=1, batch_size=2)
    assert _from_ray(tmp_path) == want
    assert (tmp_path / "init" / dist.DONE).exists() and (tmp_path / "allocation.json").exists()
    assert stats["init"]["prompts"] == len(PROMPTS)
    if any(p.stage == "adapt" for r in out.results for p in r.paths):
        assert (tmp_path / "adapt" / dist.DONE).exists()


@pytest.mark.slow
@pytest.mark.parametrize("policy,budget", [("paper", "full"), ("seed", "init"), ("paper", "entropy")])
def test_ray_two_workers_equal_in_process(ray_session, tmp_path, policy, budget):
    cfg = _cfg(policy, budget=budget, **({"verifier": _even_key} if budget == "full" else {}))
    want, _ = _in_process(cfg)
    dist.generate_ray(TinyFactory(), PROMPTS, cfg, tmp_path, workers=2, num_cpus=0.5, batch_size=1)
    assert _from_ray(tmp_path) == want


def _even_key(key, path):
    return key % 2 == 0


@pytest.mark.slow
def test_ray_resume_after_interruption(ray_session, tmp_path):
    """A run killed mid-stage: finished parts are kept, only the rest is recomputed; a
    finished stage is skipped; a JSONL prompt file works the same."""
    cfg = _cfg("paper", budget="adapt", max_paths_per_prompt=2)
    want, _ = _in_process(cfg)
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"input_ids": p}) + "\n" for p in PROMPTS))
    full = tmp_path / "full"
    dist.generate_ray(TinyFactory(), str(src), cfg, full, workers=1, batch_size=2)
    # Simulate an interruption in stage 1: keep one part, no done marker, no later stage.
    cut = tmp_path / "cut"
    parts = sorted((full / "init").glob("part-*.jsonl"))
    assert len(parts) == 3
    (cut / "init").mkdir(parents=True)
    shutil.copy(parts[0], cut / "init" / parts[0].name)
    (cut / "init" / ".part-torn.jsonl.tmp").write_text('{"key": 0, "tor')  # a torn write is ignored
    stats = dist.generate_ray(TinyFactory(), str(src), cfg, cut, workers=1, batch_size=2)
    n_first = len(parts[0].read_text().splitlines())
    assert stats["init"]["resumed"] == n_first and stats["init"]["prompts"] == len(PROMPTS) - n_first
    assert _from_ray(cut) == want
    again = dist.generate_ray(TinyFactory(), str(src), cfg, cut, workers=1, batch_size=2)
    assert all(s.get("skipped") for s in again.values())


# ---------------------------------------------------------------------------------------
# The evaluation on Ray
# ---------------------------------------------------------------------------------------


def _strip(rec):
    """A record without what depends on the batching: its batches (ids, wall time, call
    totals)."""
    return {k: v for k, v in rec.items() if k != "batches"}


def _record_tolerance(model, cfg):
    """The absolute tolerance of each float field of an evaluation record (runner._path_record)
    where a prompt's batch differs: its logits in a padded batch may differ from its logits
    alone in the last bits (conftest.float32_tolerance of the forward's reductions, prompts of
    at most 41 tokens (DigitTokenizer) + max_new_tokens, the magnitude conftest's logit bound).
    logprob: over max_new_tokens steps; score (logprob per token): no more; entropies are
    stored to 3 decimals: one step's tolerance plus the rounding step 1e-3; pass_rate
    (counts): exact."""
    n_terms = llama_reduction_terms(model.config, 41 + cfg.max_new_tokens)
    magnitude = llama_logit_bound(model)
    logprob = float32_tolerance(n_terms, magnitude, cfg.max_new_tokens)
    return {"logprob": logprob, "score": logprob, "entropies": float32_tolerance(n_terms, magnitude) + 1e-3}


def _assert_same(got, want, tol, where="record"):
    """Equal structure, strings, ints and flags; each float within tol[its field] (others
    exact: _record_tolerance)."""
    field = where.rsplit(".", 1)[-1].split("[")[0]
    if isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=0, abs=tol.get(field, 0.0)), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            _assert_same(got[k], want[k], tol, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_same(a, b, tol, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.slow
def test_eval_ray_records_equal_in_process(ray_session, tmp_path):
    from conftest import DigitTokenizer

    from eager_kernels.evaluation import EvalConfig, run_eval

    cfg = EvalConfig(prompts=4, max_paths=3, max_new_tokens=4, theta=0.5, q=50.0, batch_size=2, backend="torch",
                     model_name="tiny")
    methods = ["greedy", "parallel", "eager_init", "eager_adapt", "eager_full", "seed"]
    factory = TinyFactory(head_scale=8.0, tokenizer=DigitTokenizer())
    model, tok = factory()
    tol = _record_tolerance(model, cfg)
    quiet = dict(progress=False, log=lambda *a: None, plot=False, methods=methods)
    base = run_eval(model, tok, cfg, tmp_path / "local", **quiet)
    local = sorted((json.loads(x) for x in open(base["files"]["jsonl"])), key=lambda r: r["key"])
    for workers in (1, 2):
        res = run_eval(model, tok, cfg, tmp_path / f"ray{workers}",
                       ray=dict(model_factory=factory, workers=workers, num_cpus=0.5), **quiet)
        recs = sorted((json.loads(x) for x in open(res["files"]["jsonl"])), key=lambda r: r["key"])
        _assert_same([_strip(r) for r in recs], [_strip(r) for r in local], tol, f"workers={workers}")
        assert [r["tokens"] for r in res["rows"]] == [r["tokens"] for r in base["rows"]]
        assert [r["pass_rate"] for r in res["rows"]] == [r["pass_rate"] for r in base["rows"]]
    # resume: drop two records; only they are recomputed
    path = tmp_path / "ray2" / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")
    res = run_eval(model, tok, cfg, tmp_path / "ray2", ray=dict(model_factory=factory, workers=2, num_cpus=0.5),
                   **quiet)
    assert sum(t["prompts"] for t in res["ray_timings"]) == 2
    recs = sorted((json.loads(x) for x in open(res["files"]["jsonl"])), key=lambda r: r["key"])
    _assert_same([_strip(r) for r in recs], [_strip(r) for r in local], tol, "resumed")


def test_cli_ray_options():
    from eager_kernels.evaluation import build_parser

    a = build_parser().parse_args(["--ray", "--workers", "2"])
    assert a.ray == "" and a.workers == 2
    b = build_parser().parse_args(["--ray", "auto", "--worker-gpus", "1"])
    assert b.ray == "auto" and b.worker_gpus == 1.0
    assert build_parser().parse_args([]).ray is None


# ---------------------------------------------------------------------------------------
# Batch invariance: the evaluation command of docs/reproducibility.md on every engine
# ---------------------------------------------------------------------------------------

ISSUE_EVAL = ["--prompts", "6", "--max-paths", "4", "--max-new-tokens", "12", "--theta", "1.0",
              "--methods", "eager_init,eager_adapt,parallel", "--no-plot", "--no-progress", "--threads", "1"]


def _eval_records(folder):
    recs = [json.loads(x) for x in open(folder / "results.jsonl")]
    return {r["key"]: {k: v for k, v in r.items() if k != "batches"} for r in recs}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["llamacpp", "transformers"])
def test_eval_batch_invariant_any_batching(ray_session, tmp_path, engine, capsys):
    """eval --batch-invariant on the default model: batch sizes 4, 2 and 1 in process and
    batch size 2 on Ray with 2 workers write identical records (floats to the last bit; the
    batches field aside: call ids and wall times). On llama.cpp the prompts of a batch share
    engine calls (the engine's batch-invariant mode), elsewhere each decodes alone."""
    if engine == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the `llamacpp` extra)")
    from eager_kernels.evaluation.cli import main
    from eager_kernels.engines.models import default_model_available

    if engine == "transformers" and not default_model_available():
        pytest.skip("the default model is not installed")
    if engine == "llamacpp":
        from eager_kernels.engines.select import load

        eng = load("llamacpp", threads=1, batch_invariant=True)[0]
        assert eng.batch_invariant  # the default GGUF is one the invariant mode holds for
        eng.close()
    runs = {"bs4": ["--batch-size", "4"], "bs2": ["--batch-size", "2"], "bs1": ["--batch-size", "1"],
            "ray2": ["--batch-size", "2", "--ray", "--workers", "2", "--worker-cpus", "0.5"]}
    for name, extra in runs.items():
        assert main(ISSUE_EVAL + ["--engine", engine, "--batch-invariant", "--out", str(tmp_path / name)]
                    + extra) == 0
    recs = {name: _eval_records(tmp_path / name) for name in runs}
    assert len(recs["bs4"]) == 18
    assert recs["bs4"] == recs["bs2"] == recs["bs1"]
    assert recs["bs4"] == recs["ray2"]
