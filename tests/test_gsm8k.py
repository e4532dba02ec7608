"""GSM8K / JSONL suites: the shipped data, gold parsing, the math-verify judge, majority
voting, the bootstrap and paired statistics, the branching analysis, and a tiny end-to-end
run (random Llama, a 3-problem JSONL) with resume and theta tuning. No real model here."""
import json
import threading

import pytest

from eager_kernels.evaluation import analysis
from eager_kernels.evaluation.runner import METHODS, EvalConfig, _majority
from eager_kernels.evaluation.suites import (GSM8K_DIR, GSM8K_FEWSHOT_POOL, build_suite, gold_answer, gsm8k_suite, load_jsonl, solution_for_prompt, vote_key)

from conftest import DigitTokenizer, make_tiny_llama


def _mv():
    return pytest.importorskip("math_verify", reason="math-verify not installed (pip install math-verify)")


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def test_shipped_data_and_splits():
    test = load_jsonl(GSM8K_DIR / "test.jsonl")
    train = load_jsonl(GSM8K_DIR / "train.jsonl")
    assert len(test) == 1319 and len(train) == 108
    assert (GSM8K_DIR / "LICENSE").read_text().startswith("MIT License")
    s = gsm8k_suite(5)
    assert [t.id for t in s.tasks] == list(range(5))
    assert s.tasks[0].question == test[0][0] and s.tasks[0].answer == "18"
    assert len(s.examples) == 2
    tr = gsm8k_suite(split="train", fewshot=GSM8K_FEWSHOT_POOL)
    assert len(tr.tasks) == 100
    shown = {q for q, _ in tr.examples}
    test_q = {q for q, _ in test}
    assert not shown & {t.question for t in tr.tasks}  # tuning problems are never examples
    assert not (shown | {t.question for t in tr.tasks}) & test_q  # nothing from test
    with pytest.raises(ValueError, match="split"):
        gsm8k_suite(3, split="dev")
    with pytest.raises(ValueError, match="1319 problems"):
        gsm8k_suite(2000)
    with pytest.raises(ValueError, match="fewshot"):
        gsm8k_suite(3, fewshot=GSM8K_FEWSHOT_POOL + 1)


@pytest.mark.parametrize("answer,gold", [
    ("So 2+1=<<2+1=3>>3\n#### 3", "3"),
    ("#### 1,450,000", "1450000"),
    ("#### -5", "-5"),
    ("#### 2.5 ", "2.5"),
    ("a #### 7 then #### 8", "8"),
    (42, "42"),
    ("1/2", "1/2"),
])
def test_gold_answer(answer, gold):
    assert gold_answer(answer) == gold


def test_gold_answer_rejects_empty():
    with pytest.raises(ValueError, match="no final answer"):
        gold_answer("work\n####  ")


def test_solution_for_prompt():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"
    assert solution_for_prompt(text) == "Natalia sold 48/2 = 24 clips.\nTotal 48+24 = 72.\nAnswer: 72"


def test_load_jsonl_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"q": "a", "a": "1"}\n{"q": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2 lacks question key 'q' or answer key 'a' \(found \['q'\]\)"):
        load_jsonl(p, "q", "a")
    p.write_text('{"q": "a", "a": "1"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_jsonl(p, "q", "a")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_jsonl(tmp_path / "missing.jsonl")
    p.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        load_jsonl(p)


def test_build_suite_dataset_needs_path():
    with pytest.raises(ValueError, match="--dataset"):
        build_suite(EvalConfig(suite="dataset", prompts=1))
    with pytest.raises(ValueError, match="suite"):
        build_suite(EvalConfig(suite="mmlu", prompts=1))


# ---------------------------------------------------------------------------------------
# Judge and votes
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ok", [
    ("She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18 dollars.\nAnswer: 18", True),
    ("9 * 2 = 18\nAnswer: $18.00", True),
    ("Answer: 18 dollars per day", True),
    ("The final answer is 18", True),
    ("She earns 18 dollars.\n\nAnswer: 9", False),  # the answer line wins over earlier numbers
    ("x = 18\nAnswer: 17", False),
    ("18 is close but 180", False),
    ("The answer is 18 dollars.", True),
    ("\\boxed{18}", True),
    # stated nowhere: not credited, even when a number in the text equals the gold (the
    # pilot's false positive: a path cut at max_new_tokens mid-sentence)
    ("She feeds her 18 chickens. The total amount of feed is the sum of the feed given to", False),
    ("She makes 18 dollars.", False),
    ("no number here", False),
    ("", False),
])
def test_verify_answer(text, ok):
    _mv()
    from eager_kernels.evaluation.suites import verify_answer

    pred, correct = verify_answer("18", text)
    assert correct is ok
    assert (pred is None) == (not ok and "Answer" not in text)


def test_verify_answer_unanchored():
    _mv()
    from eager_kernels.evaluation.suites import verify_answer

    text = "She feeds her 18 chickens. The total amount of feed is the sum of the feed given to"
    assert verify_answer("18", text, anchored=False)[1]  # why the judge is anchored
    assert not verify_answer("18", text)[1]


def test_verify_answer_large_and_off_main_thread():
    _mv()
    from eager_kernels.evaluation.suites import verify_answer

    assert verify_answer("1450000", "Answer: 1,450,000")[1]
    got = []
    th = threading.Thread(target=lambda: got.append(verify_answer("18", "so\nAnswer: 18")))
    th.start()
    th.join()
    assert got and got[0][1] is True  # signal-based timeouts would raise off the main thread


def test_vote_key_and_majority():
    assert vote_key("72") == vote_key("72.0") == vote_key("72.00") != vote_key("7")
    assert vote_key("72,000") == vote_key("72000")
    assert vote_key(None) is None and vote_key("x+1") == "x+1" and vote_key(2.5) == "2.5"

    def p(pred, score, correct=False):
        return {"pred": pred, "score": score, "correct": correct}

    assert _majority([p(None, 0), p(None, 1)]) is None
    # two votes for 5 beat one better-scored 7
    assert _majority([p("5", -3, True), p("7", -1), p("5.0", -2, True)])["score"] == -2
    # a tie goes to the answer holding the best-scored path
    assert _majority([p("5", -3), p("7", -1, True)])["pred"] == "7"


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------

def test_bootstrap_ci():
    assert analysis.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    vals = [0, 1] * 20
    lo, hi = analysis.bootstrap_ci(vals)
    assert lo < 0.5 < hi and 0.25 < lo and hi < 0.75
    assert analysis.bootstrap_ci(vals) == (lo, hi)  # seeded
    with pytest.raises(ValueError, match="non-empty"):
        analysis.bootstrap_ci([])


def test_sign_test():
    assert analysis.sign_test(0, 0) == 1.0
    assert analysis.sign_test(5, 0) == pytest.approx(2 / 32)
    assert analysis.sign_test(3, 3) == 1.0
    assert analysis.sign_test(1, 9) == pytest.approx(2 * 11 / 1024)


def test_paired():
    a = [{"prompt_id": i, "tokens": 10, "pass_at_k": i < 3} for i in range(6)]
    b = [{"prompt_id": i, "tokens": 40, "pass_at_k": i in (0, 5)} for i in range(6)] + \
        [{"prompt_id": 9, "tokens": 1, "pass_at_k": True}]  # only in b: not paired
    r = analysis.paired(a, b)
    assert r["problems"] == 6 and r["tokens_a"] == 60 and r["tokens_b"] == 240
    assert r["tokens_ratio"] == 0.25 and r["tokens_ratio_ci"] == (0.25, 0.25)
    assert r["a_only"] == 2 and r["b_only"] == 1 and r["both"] == 1
    assert r["pass_at_k_diff"] == pytest.approx(1 / 6)
    lo, hi = r["pass_at_k_diff_ci"]
    assert lo <= 1 / 6 <= hi
    assert analysis.paired(a, [])["problems"] == 0


def test_branching_stats():
    def path(steps, prefixes, ents, stage="init"):
        return {"branch_steps": steps, "branch_prefixes": prefixes, "entropies": ents, "tokens": len(ents),
                "finished": "eos", "stage": stage}

    recs = [
        # one event at step 2 (both paths carry it), then one more at step 4 on the second path
        {"n_paths": 3, "paths": [path([2], ["a"], [0.1, 0.2, 3.0]), path([2, 4], ["a", "b"], [0.1, 0.2, 3.0, 0.0, 2.5]),
                                 path([2, 4], ["a", "b"], [0.1, 0.2, 3.0, 0.0, 2.5])]},
        {"n_paths": 1, "paths": [path([], [], [1.0])]},
    ]
    assert sorted(analysis.branch_positions(recs)) == [2, 4]
    b = analysis.branching(recs, max_paths=3, theta=2.2)
    assert b["branch_events"] == 2 and b["problems_at_cap"] == 1 and b["problems_branched"] == 1
    assert b["share_above_theta"] == pytest.approx(5 / 14)
    prof = analysis.entropy_profile(recs)
    assert prof["paths"] == [4, 3, 3, 2, 2]
    assert prof["mean"][0] == pytest.approx((0.1 * 3 + 1.0) / 4)


# ---------------------------------------------------------------------------------------
# End to end on a tiny random Llama with a JSONL dataset
# ---------------------------------------------------------------------------------------

VOCAB = 160
EOS = 3


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    return make_tiny_llama(VOCAB, EOS, head_scale=8.0)


@pytest.fixture()
def dataset(tmp_path):
    p = tmp_path / "qa.jsonl"
    rows = [{"problem": f"What is {i} + {i}?", "solution": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(1, 4)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _cfg(dataset, **kw):
    base = dict(prompts=3, max_paths=3, max_new_tokens=4, theta=0.5, q=50.0, batch_size=2, backend="torch",
                model_name="tiny", suite="dataset", dataset=str(dataset), question_key="problem",
                answer_key="solution", fewshot=0)
    base.update(kw)
    return EvalConfig(**base)


def test_end_to_end_dataset_and_resume(tiny, dataset, tmp_path, monkeypatch):
    _mv()
    pytest.importorskip("matplotlib")
    from eager_kernels import sampler
    from eager_kernels.evaluation import run_eval

    out = tmp_path / "out"
    res = run_eval(tiny, DigitTokenizer(), _cfg(dataset), out, progress=False, log=lambda *a: None)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == list(METHODS)
    for name, r in rows.items():
        assert r["prompts"] == 3
        for k in analysis.ACC_KEYS:
            lo, hi = r[k + "_ci"]
            assert 0 <= lo <= r[k] <= hi <= 1, (name, k)
    recs = [json.loads(line) for line in open(res["files"]["jsonl"])]
    for r in recs:
        assert r["answer"] == str(2 * (r["prompt_id"] + 1))
        assert r["pass_at_k"] == any(p["correct"] for p in r["paths"])
        if r["majority_pred"] is None:
            assert not r["majority_correct"]
        for p in r["paths"]:
            assert len(p["entropies"]) == p["tokens"]
            assert len(p["branch_steps"]) == len(p["branch_prefixes"]) == p["branches"]
    assert res["paired"]["problems"] == 3
    assert res["paired"]["tokens_a"] == rows["eager_init"]["tokens"]
    assert res["paired"]["tokens_b"] == rows["parallel"]["tokens"]
    assert res["branching"]["greedy"]["branch_events"] == 0
    ev_events = sum(len(set(zip(p["branch_steps"], p["branch_prefixes"]))) > 0 for r in recs
                    if r["method"] == "eager_init" for p in r["paths"])
    assert (res["branching"]["eager_init"]["branch_events"] > 0) == (ev_events > 0)
    text = open(res["files"]["summary_md"]).read()
    assert "Pass@k [95% CI]" in text and "eager_init vs parallel" in text and "Where branching" in text
    for f in ("plot", "branching_plot", "summary_json"):
        assert (out / res["files"][f].split("/")[-1]).stat().st_size > 0

    calls = []
    real = sampler.generate
    monkeypatch.setattr("eager_kernels.sampler.generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    res2 = run_eval(tiny, DigitTokenizer(), _cfg(dataset), out, progress=False, log=lambda *a: None, plot=False)
    assert calls == [] and res2["rows"] == res["rows"]
    # Other gold answers (same questions): a different run, nothing reused.
    other = dataset.parent / "qa2.jsonl"
    other.write_text(dataset.read_text().replace("#### 2", "#### 9"))
    res3 = run_eval(tiny, DigitTokenizer(), _cfg(other), out, methods=["greedy"], progress=False,
                    log=lambda *a: None, plot=False)
    assert res3["run"] != res["run"] and calls


def test_tune_theta(tiny, dataset, tmp_path):
    _mv()
    from eager_kernels.evaluation.cli import choose_theta, run_tune

    res = run_tune(tiny, DigitTokenizer(), _cfg(dataset), tmp_path, [0.5, 100.0], plot=False,
                   progress=False, log=lambda *a: None)
    tune = json.loads(open(res["files"]["tune"]).read())
    pts = dict(res["sweep"]["eager_init"])
    assert tune["theta"] in (0.5, 100.0) and pts[100.0]["branch_events"] == 0
    best = max(r["pass_at_k"] for r in pts.values())
    assert pts[tune["theta"]]["pass_at_k"] == best
    with pytest.raises(ValueError, match="train"):
        run_tune(tiny, DigitTokenizer(), EvalConfig(suite="gsm8k", split="test", prompts=2), tmp_path, [1.0])
    with pytest.raises(ValueError, match="at most 100"):
        run_tune(tiny, DigitTokenizer(), _cfg(dataset, prompts=101), tmp_path, [1.0])
    row = {"prompts": 1, "pass_at_k": 0.0, "tokens": 5}
    assert choose_theta(row, [(1.0, dict(row, tokens=9)), (2.0, row), (3.0, row)])["theta"] == 3.0
    assert choose_theta(row, [(1.0, dict(row, pass_at_k=0.5, tokens=90)), (2.0, row)])["theta"] == 1.0


def test_gsm8k_prompt_has_examples_and_instruction():
    from eager_kernels.evaluation.suites import GSM8K_INSTRUCTION

    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, msgs, add_generation_prompt, tokenize):
            self.msgs = msgs
            return [1, 2, 3]

    tok = ChatTok()
    s = gsm8k_suite(1)
    assert s.prompt_ids(tok, s.tasks[0]) == [1, 2, 3]
    roles = [m["role"] for m in tok.msgs]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert all(m["content"].endswith(GSM8K_INSTRUCTION) for m in tok.msgs if m["role"] == "user")
    assert tok.msgs[1]["content"].endswith("Answer: 72") and "<<" not in tok.msgs[1]["content"]
    assert tok.msgs[-1]["content"].startswith(s.tasks[0].question)


def test_cli_options(tmp_path, capsys, monkeypatch):
    """Bad options and data fail with exit 2 (or a usage error) before any model loads."""
    from eager_kernels.engines import models
    from eager_kernels.evaluation import build_parser, main

    def no_model(*a, **k):
        raise AssertionError("the model must not load for invalid options")

    monkeypatch.setattr(models, "load_default_model", no_model)
    monkeypatch.setattr(models, "load_model", no_model)

    a = build_parser().parse_args(["--suite", "gsm8k", "--split", "train", "--fewshot", "3"])
    assert a.suite == "gsm8k" and a.split == "train" and a.fewshot == 3
    assert a.max_new_tokens is None and a.prompts is None  # suite defaults resolved in main
    with pytest.raises(SystemExit):
        main(["--suite", "gsm8k", "--dataset", str(tmp_path / "x.jsonl")])
    def exits_2(argv, needle):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("eager-kernels eval: error:") and needle in err, err

    exits_2(["--dataset", str(tmp_path / "missing.jsonl")], "no file")
    with pytest.raises(SystemExit):
        main(["--tune-theta", "1,2"])  # arithmetic cannot be tuned
    exits_2(["--suite", "gsm8k", "--prompts", "5000"], "1319 problems")
    exits_2(["--suite", "gsm8k", "--tune-theta", "1,2", "--prompts", "101"], "at most 100")
    ds = tmp_path / "big.jsonl"
    ds.write_text("".join(json.dumps({"question": f"q{i}", "answer": "#### 1"}) + "\n" for i in range(101)))
    exits_2(["--dataset", str(ds), "--tune-theta", "1,2", "--prompts", "101"], "at most 100")
