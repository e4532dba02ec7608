"""The sampler's checks of the token ids it is given (prompts, EOS, stop ids)."""
from __future__ import annotations

from typing import Sequence


def check_token_ids(prompts: Sequence[Sequence[int]], vocab_size: int, what: str = "input_ids") -> None:
    """Every id in [0, vocab_size), else a ValueError naming the argument, the sequence and the id."""
    for i, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            where = f" of prompt {i}" if what == "input_ids" else ""
            raise ValueError(f"{what}: token id {bad[0]}{where} is outside the model's vocabulary "
                             f"(ids 0..{vocab_size - 1}); was it tokenised for another model?")
