"""The fork / drop / permutation script that the engine tests replay on an engine
(tests/test_engines.py for every engine, tests/test_vllm_engine.py for vLLM)."""
import torch

# (reorder or None, tokens for the rows after it): forks (repeated index), drops (omitted
# index), permutations, and a fork of a fork; rows start as two prompts, at most 6 rows
REORDER_SCRIPT = [(None, [10, 11]), ([0, 0, 1, 1, 1], [12, 13, 14, 15, 16]), ([4, 1, 2], [17, 18, 19]),
                  ([2, 2, 0, 1, 0, 2], [20, 21, 22, 23, 24, 25]), ([5, 3], [26, 27])]


def replay_reorder_script(engine, seqs):
    """Prefill `seqs` (two prompts), replay REORDER_SCRIPT, release the engine; return each
    final row's token sequence and the last step's logits (a copy)."""
    seqs = [list(s) for s in seqs]
    logits = engine.prefill(seqs, max_rows=6, max_new_tokens=5)
    try:
        for src, toks in REORDER_SCRIPT:
            if src is not None:
                engine.reorder(torch.tensor(src))
                seqs = [list(seqs[i]) for i in src]
            logits = engine.decode(torch.tensor(toks)).clone()
            for s, t in zip(seqs, toks):
                s.append(t)
    finally:
        engine.release()
    return seqs, logits
