"""TransformersEngine: a transformers causal LM and its DynamicCache behind the engine protocol."""
from __future__ import annotations

import inspect

import torch

from .base import Engine


def _forward_kwargs(model):
    """The names this transformers version uses for the cache and the last-logits option."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    if "logits_to_keep" in params:
        keep_kw = "logits_to_keep"
    elif "num_logits_to_keep" in params:
        keep_kw = "num_logits_to_keep"
    else:
        keep_kw = None
    return cache_kw, keep_kw


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of K and V one token of one row takes in every layer."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * int(head_dim) * elem


def _model_eos(model) -> list:
    """The model's EOS ids: its generation_config's, else its config's."""
    src = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if src is None:
        src = getattr(model.config, "eos_token_id", None)
    if src is None:
        return []
    return [int(x) for x in ([src] if isinstance(src, int) else src)]


class TransformersEngine(Engine):
    """A transformers causal LM on any device: left-padded prefill with position ids counted
    over real tokens, one forward of R single tokens per step, the cache reordered with one
    index_select per layer (DynamicCache.reorder_cache)."""

    kv_copies = 2  # the dynamic cache is copied when it grows or is reordered
    name = "transformers"
    # A row's logits move with its batch: left padding changes the attention's reduction
    # length and the matmuls' blocking follows the row count. Largest log-probability
    # difference measured (benchmarks/bench_batch_invariance.py, SmolLM2 fp32 CPU, 4 and
    # 12 prompts x 8 rows against each alone: 7.04e-5 and 7.13e-5; docs/reproducibility.md).
    batch_invariant = False
    batch_deviation = 7.13e-5

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.device = param.device
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
        self.eos_token_ids = _model_eos(model)
        self.kv_bytes_per_token = kv_bytes_per_token(model.config, param.dtype)
        self._cache_kw, self._keep_kw = _forward_kwargs(model)
        self._cache = None

    def _pad_id(self) -> int:
        for src in (getattr(self.tokenizer, "pad_token_id", None), getattr(self.model.config, "pad_token_id", None)):
            if isinstance(src, int):
                return src
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        device = self.device
        G, P = len(prompts), max(len(p) for p in prompts)
        # Left-padded prompts, positions counted over real tokens only.
        ids = torch.full((G, P), self._pad_id(), dtype=torch.int64)
        pmask = torch.zeros((G, P), dtype=torch.int64)
        for g, p in enumerate(prompts):
            ids[g, P - len(p):] = torch.tensor(p, dtype=torch.int64)
            pmask[g, P - len(p):] = 1
        ids, pmask = ids.to(device), pmask.to(device)
        self._pmask = pmask
        self._real_len = pmask.sum(1)
        pos = (pmask.cumsum(1) - 1).clamp_min(0)
        # Without padding no mask is passed: transformers then needs none, and it does not
        # read the mask on the host (with padding it checks mask.all() once per forward, a
        # host sync inside the model that the loop cannot avoid for every attention
        # implementation).
        self._padded = any(len(p) < P for p in prompts)
        self._rows = torch.arange(G, device=device)  # the prompt of each row
        self._steps = 0
        self._ones = torch.ones((1, 1), dtype=torch.int64, device=device)
        self._cache = _new_cache(self.model)
        extra = {self._keep_kw: 1} if self._keep_kw else {}
        out = self.model(input_ids=ids, attention_mask=pmask if self._padded else None, position_ids=pos,
                         use_cache=True, **{self._cache_kw: self._cache}, **extra)
        return out.logits[:, -1, :]

    def decode(self, tokens):
        R = tokens.shape[0]
        rows = self._rows
        step_mask = torch.cat([self._pmask[rows], self._ones.expand(R, self._steps + 1)], dim=1) if self._padded else None
        step_pos = (self._real_len[rows] + self._steps)[:, None]
        out = self.model(input_ids=tokens[:, None], attention_mask=step_mask, position_ids=step_pos,
                         use_cache=True, **{self._cache_kw: self._cache})
        self._steps += 1
        return out.logits[:, -1, :]

    def reorder(self, src):
        self._cache.reorder_cache(src)
        self._rows = self._rows[src]

    def release(self):
        self._cache = None
        self._pmask = self._real_len = self._rows = None
