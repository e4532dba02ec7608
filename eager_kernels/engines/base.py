"""The engine protocol: everything the EAGer decode loop needs from an inference stack.

The loop (eager_kernels/sampler/decode.py) holds the path table, the policies and the ops;
an engine holds the model, its KV cache and (optionally) its tokenizer. One stage of the
loop calls, in this order:

    engine.prefill(prompts, max_rows=..., max_new_tokens=...)  -> logits [G, V]
    repeat:  engine.reorder(src)            (only when the rows changed)
             engine.decode(tokens)           -> logits [R, V]
    engine.release()

Rows: after prefill, row g is prompt g. reorder(src) makes new row i a copy of old row
src[i] (src: int64 tensor on engine.device): a repeated index forks a row (both copies share
its history), an omitted one drops it. decode(tokens) appends tokens[i] to row i and returns
the next-token logits of every row. All rows advance together: after k decode calls every
row holds its prompt plus k tokens. Left padding, positions and cache layout are the
engine's business.

The logits returned by prefill and decode may be views of the engine's own buffers: they
are valid until the next call on the engine (the loop uses them within one step).

Batch invariance. An engine states whether the logits it returns for a row depend on the
other rows of the call (other prompts, their number, their lengths, the cache layout they
cause):

    batch_invariant = True   the logits of a row are bit-identical whatever else shares the
                             call (batch-invariant kernels, or one isolated call per prompt
                             done inside the engine);
    batch_invariant = False  they may move (the matmul's path for the batch size, padding,
                             the attention's reduction over a shared cache); batch_deviation
                             then gives the largest |difference| of a row's log-probabilities
                             measured between the row decoded alone and in a batch
                             (benchmarks/bench_batch_invariance.py), or None if unmeasured.

The loop reads batch_invariant. With EagerConfig(batch_invariant=True) on an engine that is
not batch-invariant it runs each prompt's rows in engine calls of their own (prefill,
decode and reorder of one prompt, then release, then the next prompt), so the batch a row
sees is a function of its prompt alone; a prompt alone must then give the same logits after
any earlier calls on the engine (release() leaves no state a later prefill can see, other
than sizes). An engine with batch_invariant = True keeps all prompts in one batch in that
mode: a new engine that has batch-invariant kernels sets it, and passes the conformance
suite's invariance test (tests/test_engines.py) with it.
"""
from __future__ import annotations

import abc
from typing import Optional, Sequence

import torch


class Engine(abc.ABC):
    """An inference stack as the EAGer loop sees it (see the module docstring).

    Attributes every engine sets:
        vocab_size: width V of the logits.
        device: where the logits (and the loop's path table) live.
        eos_token_ids: the model's own end-of-sequence ids (the loop adds the tokenizer's).
        kv_bytes_per_token: bytes of K and V one token of one row takes in all layers.
        kv_copies: how many times the cache may be held at once at its peak (2 for a cache
            that is copied when it grows or is reordered, 1 for one allocated in place).
        tokenizer: None, or an object with the subset of the transformers tokenizer interface
            that generate() uses: encode(text, add_special_tokens=False) -> ids,
            decode(ids, skip_special_tokens=True) -> str, __call__(text)["input_ids"],
            apply_chat_template(messages, add_generation_prompt=True, tokenize=True),
            chat_template, eos_token_id, pad_token_id. chat_token_ids(tokenizer, messages)
            (below) turns a chat into token ids with it.
        batch_invariant: whether a row's logits are bit-identical whatever other rows share
            the call (default False; module docstring, "Batch invariance").
        batch_deviation: for an engine that is not batch-invariant, the largest measured
            |difference| of a row's log-probabilities alone against in a batch (None:
            not measured).
    """

    vocab_size: int
    device: torch.device
    eos_token_ids: list
    kv_bytes_per_token: int
    kv_copies: int = 1
    tokenizer = None
    name: str = "engine"
    batch_invariant: bool = False  # see the module docstring, "Batch invariance"
    batch_deviation: Optional[float] = None

    @abc.abstractmethod
    def prefill(self, prompts: Sequence[Sequence[int]], *, max_rows: int, max_new_tokens: int) -> torch.Tensor:
        """Run the prompts (lists of token ids, any lengths); return the logits of each
        prompt's last token [G, V]. max_rows (the most rows the stage will hold at once)
        and max_new_tokens let the engine size its cache; an engine that cannot hold them
        raises ValueError here, before any decoding."""

    @abc.abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens[i] (int64 [R] on self.device) to row i; return logits [R, V]."""

    @abc.abstractmethod
    def reorder(self, src: torch.Tensor) -> None:
        """New row i = old row src[i] (int64 [R'] on self.device)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Free the stage's cache (the engine stays usable for another prefill)."""

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # Optional: prompts joining a running batch (the scheduler's continuous batching). An
    # engine without them makes a new request wait until the running rows have finished.

    def can_extend(self, prompts: Sequence[Sequence[int]], *, max_rows: int, max_new_tokens: int) -> bool:
        """Whether extend(prompts) fits now, with max_rows rows in all afterwards."""
        return False

    def extend(self, prompts: Sequence[Sequence[int]], *, max_rows: int, max_new_tokens: int) -> torch.Tensor:
        """Prefill `prompts` as new rows after the current ones, keeping the current rows'
        cache; return the logits of each prompt's last token [g, V]. May overwrite the
        logits the last decode returned (the caller copies them first)."""
        raise NotImplementedError(f"{type(self).__name__} cannot add rows to a running batch")


def chat_token_ids(tokenizer, messages) -> list:
    """`messages` (a list of {"role", "content"} dicts) through the tokenizer's chat template
    with the generation prompt appended, as a flat list of ints: the one place that unwraps
    what apply_chat_template(..., tokenize=True) returns (a list of ids, a batch of one list,
    or a BatchEncoding whose "input_ids" holds either, as transformers 5 returns). An error of
    the template (e.g. a ValueError for a role it refuses) reaches the caller unchanged."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys") and "input_ids" in ids:
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


def union_token_ids(sources) -> list:
    """The ids of `sources` (each None, an int or a list of ints) in first-seen order, each
    once: e.g. EOS ids from a tokenizer and a generation config (chat models often end a
    turn with a second id). Here in the engines layer, not with the sampler's token checks
    (sampler/tokens.py), because an engine uses it too (vllm_engine.py)."""
    ids = []
    for src in sources:
        if src is None:
            continue
        for x in ([src] if isinstance(src, int) else src):
            if int(x) not in ids:
                ids.append(int(x))
    return ids
