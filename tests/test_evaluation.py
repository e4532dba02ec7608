"""The evaluation harness: task suite, answer extractor, JSONL resume, and a tiny end-to-end
run on a randomly initialised Llama built from a config (no download, no speed checks)."""
import json
import os

import pytest

from eager_kernels.evaluation import (METHODS, EvalConfig, ResultStore, extract_answer, find_numbers, is_correct, make_tasks, tree_tokens)
from eager_kernels.evaluation.tasks import INSTRUCTION, KINDS

from conftest import DigitTokenizer, make_tiny_llama

# ---------------------------------------------------------------------------------------
# Task suite
# ---------------------------------------------------------------------------------------


def _recompute(task) -> int:
    import re

    q = task.question[: -len(INSTRUCTION) - 1]
    nums = [int(x) for x in re.findall(r"\d+", q)]
    a, b = nums
    return {"add": a + b, "sub": a - b, "mul": a * b, "larger": max(a, b), "smaller": min(a, b)}[task.kind]


def test_suite_deterministic_and_large():
    a, b = make_tasks(), make_tasks()
    assert len(a) >= 100
    assert a == b
    assert make_tasks(100, seed=1) != a
    assert make_tasks(30) == a[:30]  # prefixes are stable


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_suite_answers_unique_balanced(seed):
    tasks = make_tasks(300, seed=seed)
    assert len({t.question for t in tasks}) == len(tasks)
    assert [t.id for t in tasks] == list(range(300))
    for t in tasks:
        assert t.question.endswith(INSTRUCTION)
        assert t.answer == _recompute(t)
        assert is_correct(f"Answer: {t.answer}", t.answer)
    assert {t.kind for t in tasks} == set(KINDS)
    assert any(t.answer < 0 for t in tasks)  # subtraction gives negative answers too


def test_suite_rejects_empty():
    with pytest.raises(ValueError):
        make_tasks(0)


# ---------------------------------------------------------------------------------------
# Extractor
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("Answer: 42.", 42),
    ("Answer: 42", 42),
    ("answer : 42", 42),
    ("**Answer:** 56", 56),
    ("Answer: -5", -5),
    ("Answer: \u221212", -12),
    ("The result is -5", -5),
    ("10-5", 5),  # a minus after a digit is an operator
    ("Answer: 17", 17),
    ("The answer is 17", 17),
    ("7 * 8 = 56\n\nThe answer is: 54", 54),  # no marker: the last number
    ("23 + 45 = 68. Answer: 68", 68),
    ("Answer: 12, no wait. Answer: 13 and then 14", 13),  # the first number after the last marker
    ("Answer: none. 9", 9),  # nothing after the last marker: the last number
    ("1,234 apples", 1234),
    ("47,74", 74),  # not a thousands group: two numbers
    ("$42", 42),
    ("42kg", 42),
    ("42.0", 42),
    ("3.5", 3.5),
    ("x7", None),  # glued to a word
    ("v2.5", None),
    ("no number here", None),
    ("", None),
    (None, None),
])
def test_extract(text, expected):
    got = extract_answer(text)
    assert got == expected and type(got) is type(expected)


def test_extract_strict():
    assert not is_correct("17", 7)
    assert not is_correct("Answer: 17", 7)
    assert not is_correct("Answer: 70", 7)
    assert not is_correct("Answer: 7.5", 7)
    assert not is_correct("Answer: -7", 7)
    assert not is_correct("no answer", 7)
    assert is_correct("Answer: 7", 7)
    assert is_correct("Answer: -7", -7)
    assert not is_correct("Answer: 7", -7)
    assert find_numbers("17 and 7, -3 and 1,000 or 2.50") == [17, 7, -3, 1000, 2.5]


def test_tree_tokens():
    assert tree_tokens([]) == 0
    assert tree_tokens([[1, 2, 3], [1, 2, 4], [5]]) == 5
    assert tree_tokens([[1, 2], [1, 2]]) == 2


# ---------------------------------------------------------------------------------------
# JSONL store and resume
# ---------------------------------------------------------------------------------------


def test_store_roundtrip_and_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultStore(path)
    s.add([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with open(path, "a") as f:
        f.write('{"key": "c", "v"')  # killed mid-write
    s2 = ResultStore(path)
    assert set(s2.records) == {"a", "b"} and s2.skipped_lines == 1
    s2.add([{"key": "c", "v": 3}])
    s3 = ResultStore(path)
    assert set(s3.records) == {"a", "b", "c"} and s3.records["c"]["v"] == 3


# ---------------------------------------------------------------------------------------
# End to end on a tiny random Llama
# ---------------------------------------------------------------------------------------

VOCAB = 160
EOS = 3


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    return make_tiny_llama(VOCAB, EOS, head_scale=8.0)  # varied entropies: EAGer branches sometimes


def _run(tiny, out, **kw):
    from eager_kernels.evaluation import run_eval

    cfg = EvalConfig(prompts=3, max_paths=3, max_new_tokens=4, theta=0.5, q=50.0, batch_size=2,
                     backend="torch", model_name="tiny")
    return run_eval(tiny, DigitTokenizer(), cfg, out, progress=False, log=lambda *a: None, **kw)


def test_end_to_end_and_resume(tiny, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from eager_kernels import sampler
    import eager_kernels.evaluation.runner as runner

    res = _run(tiny, tmp_path, theta_sweep=[0.5, 100.0])
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == list(METHODS)
    for name, r in rows.items():
        assert r["prompts"] == 3, name
        assert 0 <= r["pass_rate"] <= r["pass_at_k"] <= 1
        assert r["tokens"] > 0 and r["wall_s"] >= 0
    assert rows["greedy"]["sequences"] == 3
    assert rows["parallel"]["sequences"] == 9
    assert rows["parallel"]["tokens"] <= 9 * 4
    assert rows["eager_init"]["sequences"] <= 9
    assert rows["seed"]["sequences"] <= 9
    # adapt / full contain init: at least its paths and tokens.
    for m in ("eager_adapt", "eager_full"):
        assert rows[m]["sequences"] >= rows["eager_init"]["sequences"]
        assert rows[m]["tokens"] >= rows["eager_init"]["tokens"]
    # theta huge: no branching, one path per prompt
    never = dict(res["sweep"]["eager_init"])[100.0]
    assert never["sequences"] == 3 and never["branch_events"] == 0
    for f in ("plot", "sweep_plot", "summary_md", "jsonl"):
        assert os.path.getsize(res["files"][f]) > 0
    # Records: per (method, prompt), the per-prompt tree tokens add up to the call totals
    # for every method without pruning.
    recs = [json.loads(line) for line in open(res["files"]["jsonl"])]
    assert len({r["key"] for r in recs}) == len(recs)
    for m in ("greedy", "parallel", "eager_init", "eager_adapt", "eager_full"):
        mine = [r for r in recs if r["method"] == m]
        assert sum(r["tokens"] for r in mine) == rows[m]["tokens"], m
        assert sum(r["branch_events"] for r in mine) == rows[m]["branch_events"], m
        for r in mine:
            assert r["pass_at_k"] == any(p["correct"] for p in r["paths"])
            assert all(p["correct"] == (p["pred"] == r["answer"]) for p in r["paths"])

    # Resume: a second run recomputes nothing.
    calls = []
    real = sampler.generate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr("eager_kernels.sampler.generate", counting)
    res2 = _run(tiny, tmp_path, theta_sweep=[0.5, 100.0])
    assert calls == []
    assert res2["rows"] == res["rows"]

    # Interrupted: drop the last records of two methods (and tear a line); only those rerun.
    lines = open(res["files"]["jsonl"]).read().splitlines()
    drop = {f"{res['run']}/parallel/2", f"{res['run']}/eager_adapt/2"}
    kept = [ln for ln in lines if json.loads(ln)["key"] not in drop]
    with open(res["files"]["jsonl"], "w") as f:
        f.write("\n".join(kept) + "\n" + '{"key": "torn')
    res3 = _run(tiny, tmp_path, theta_sweep=[0.5, 100.0])
    assert 1 <= len(calls) <= 2  # parallel's last batch; adapt's prompt 2 if it had extra paths
    rows3 = {r["method"]: r for r in res3["rows"]}
    assert all(r["prompts"] == 3 for r in rows3.values())
    assert rows3["greedy"] == rows["greedy"]
    store = ResultStore(res["files"]["jsonl"])
    assert all(k in store for k in drop)


def test_other_config_not_reused(tiny, tmp_path):
    a = _run(tiny, tmp_path, methods=["greedy", "eager_init"], plot=False)
    from eager_kernels.evaluation import run_eval

    cfg = EvalConfig(prompts=3, max_paths=2, max_new_tokens=4, theta=0.5, q=50.0, batch_size=2,
                     backend="torch", model_name="tiny")
    b = run_eval(tiny, DigitTokenizer(), cfg, tmp_path, methods=["greedy", "eager_init"], plot=False,
                 progress=False, log=lambda *a: None)
    assert a["run"] != b["run"]
    assert all(r["prompts"] == 3 for r in b["rows"])


def test_cli_parser():
    from eager_kernels.evaluation import build_parser

    a = build_parser().parse_args(["--prompts", "5", "--methods", "greedy,seed", "--theta-sweep", "1.5,2",
                                   "--max-paths", "4", "--q", "95"])
    assert a.prompts == 5 and a.methods == ["greedy", "seed"] and a.theta_sweep == [1.5, 2.0]
    assert a.max_paths == 4 and a.q == 95.0 and a.out == "eval_results"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--methods", "nope"])


def test_run_hash_covers_prompts():
    from eager_kernels.evaluation import Evaluator

    class Other(DigitTokenizer):
        def __call__(self, text):
            return {"input_ids": [2] + super().__call__(text)["input_ids"][1:]}

    cfg = EvalConfig(prompts=3, model_name="tiny")
    a = Evaluator(None, DigitTokenizer(), cfg, None, progress=False)
    b = Evaluator(None, Other(), cfg, None, progress=False)
    c = Evaluator(None, DigitTokenizer(), EvalConfig(prompts=3, model_name="tiny", theta=9.0), None)
    assert a.hash != b.hash
    assert a.hash == c.hash  # theta is in the method label, not the run hash


# ---------------------------------------------------------------------------------------
# Batch size, batch-invariant mode and resume
# ---------------------------------------------------------------------------------------

INV_METHODS = ["greedy", "parallel", "eager_init", "eager_adapt", "seed"]


def _run_bs(tiny, out, batch_size, invariant, methods=INV_METHODS):
    from eager_kernels.evaluation import run_eval

    cfg = EvalConfig(prompts=5, max_paths=3, max_new_tokens=5, theta=0.5, q=50.0, batch_size=batch_size,
                     backend="torch", model_name="tiny", batch_invariant=invariant)
    return run_eval(tiny, DigitTokenizer(), cfg, out, methods=methods, plot=False, progress=False,
                    log=lambda *a: None)


def _records(res):
    """The records by key, without their batches (call ids, call totals, wall time)."""
    recs = [json.loads(line) for line in open(res["files"]["jsonl"])]
    return {r["key"]: {k: v for k, v in r.items() if k != "batches"} for r in recs}


def test_batch_invariant_records_do_not_depend_on_batch_size(tiny, tmp_path, monkeypatch):
    """batch_invariant: batch sizes 2 and 3 write the same records (floats to the last bit)
    under the same run hash; a run resumed with batch size 1 recomputes only what is
    missing and still writes the same records."""
    from eager_kernels import sampler

    a = _run_bs(tiny, tmp_path / "a", 2, True)
    b = _run_bs(tiny, tmp_path / "b", 3, True)
    assert a["run"] == b["run"]
    ra, rb = _records(a), _records(b)
    assert len(ra) == 5 * len(INV_METHODS)
    assert sum(r["branch_events"] for r in ra.values()) > 0
    assert ra == rb
    assert all(r["run"] == {"family": r["run"]["family"], "batch_invariant": True, "batch_size": None}
               for r in ra.values())
    # resume with another batch size: drop three records, only their calls rerun
    path = tmp_path / "a" / "results.jsonl"
    lines = path.read_text().splitlines()
    drop = {f"{a['run']}/greedy/4", f"{a['run']}/eager_init/1", f"{a['run']}/seed/0"}
    path.write_text("\n".join(ln for ln in lines if json.loads(ln)["key"] not in drop) + "\n")
    calls = []
    real = sampler.generate

    def counting(model, ids, *args, **kw):
        calls.append(len(ids))
        return real(model, ids, *args, **kw)

    monkeypatch.setattr("eager_kernels.sampler.generate", counting)
    c = _run_bs(tiny, tmp_path / "a", 1, True)
    assert c["run"] == a["run"]
    assert sorted(calls) == [1, 1, 1]
    assert _records(c) == ra


def test_default_mode_refuses_another_batch_size(tiny, tmp_path):
    """Default mode: a run's records depend on its batches, so continuing them with another
    batch size is refused with a message naming --batch-size; the same batch size resumes,
    and the batch-invariant mode is a separate run next to them."""
    from eager_kernels.evaluation.runner import BatchSizeConflict

    a = _run_bs(tiny, tmp_path, 2, False, methods=["greedy", "eager_init"])
    assert all(r["run"]["batch_size"] == 2 and not r["run"]["batch_invariant"] for r in _records(a).values())
    with pytest.raises(BatchSizeConflict, match=r"--batch-size: .*results.jsonl holds 10 records of this "
                                                r"configuration made with --batch-size 2; .* continuing with "
                                                r"--batch-size 3 would mix .*--batch-invariant"):
        _run_bs(tiny, tmp_path, 3, False, methods=["greedy"])
    again = _run_bs(tiny, tmp_path, 2, False, methods=["greedy", "eager_init"])
    assert again["run"] == a["run"] and again["rows"] == a["rows"]
    inv = _run_bs(tiny, tmp_path, 3, True, methods=["greedy"])
    assert inv["run"] != a["run"] and inv["rows"][0]["prompts"] == 5


def test_run_hash_and_batch_size():
    from dataclasses import asdict
    import hashlib

    cfg = EvalConfig(prompts=3, model_name="tiny", batch_size=4)
    # the default mode's hash is the one of runs made before the mode existed
    d = asdict(cfg)
    d.pop("batch_invariant")
    d.update(prompts_fingerprint="fp", keys="per-prompt")
    d.pop("backend")
    d.pop("theta")
    assert cfg.run_hash("fp") == hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    assert cfg.run_hash("fp") != EvalConfig(prompts=3, model_name="tiny", batch_size=2).run_hash("fp")
    inv = [EvalConfig(prompts=3, model_name="tiny", batch_size=n, batch_invariant=True) for n in (2, 4)]
    assert inv[0].run_hash("fp") == inv[1].run_hash("fp") != cfg.run_hash("fp")
    assert inv[0].run_hash("fp") != inv[0].run_hash("other prompts")
    assert inv[0].run_family("fp") == cfg.run_family("fp") != cfg.run_family("other prompts")


def test_cli_batch_invariant_option():
    from eager_kernels.evaluation import build_parser
    from eager_kernels.evaluation.cli import resolve_batch_invariant

    p = build_parser()
    assert p.parse_args(["--batch-invariant"]).batch_invariant is True
    assert p.parse_args(["--no-batch-invariant"]).batch_invariant is False
    assert p.parse_args([]).batch_invariant is None
    assert resolve_batch_invariant(p.parse_args([]), "llamacpp") is False  # in process: off
    assert resolve_batch_invariant(p.parse_args(["--ray"]), "llamacpp") is True  # on Ray on llama.cpp: on
    assert resolve_batch_invariant(p.parse_args(["--ray"]), "transformers") is False  # costly there
    assert resolve_batch_invariant(p.parse_args(["--ray", "--no-batch-invariant"]), "llamacpp") is False
    assert resolve_batch_invariant(p.parse_args(["--batch-invariant"]), "transformers") is True
