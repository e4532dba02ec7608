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
    # length and the matmuls' blocking follows the row count. batch_deviation: the largest
    # log-probability difference measured (benchmarks/bench_batch_invariance.py, SmolLM2
    # fp32; docs/reproducibility.md).
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

    def _left_padded(self, prompts):
        """Left-padded ids, their mask and position ids counted over real tokens only."""
        G, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((G, P), self._pad_id(), dtype=torch.int64)
        pmask = torch.zeros((G, P), dtype=torch.int64)
        for g, p in enumerate(prompts):
            ids[g, P - len(p):] = torch.tensor(p, dtype=torch.int64)
            pmask[g, P - len(p):] = 1
        ids, pmask = ids.to(self.device), pmask.to(self.device)
        return ids, pmask, (pmask.cumsum(1) - 1).clamp_min(0), any(len(p) < P for p in prompts)

    def _forward_prompts(self, prompts, cache):
        ids, pmask, pos, padded = self._left_padded(prompts)
        extra = {self._keep_kw: 1} if self._keep_kw else {}
        # Without padding no mask is passed: transformers then needs none, and it does not
        # read the mask on the host (with padding it checks mask.all() once per forward, a
        # host sync inside the model that the loop cannot avoid for every attention
        # implementation).
        out = self.model(input_ids=ids, attention_mask=pmask if padded else None, position_ids=pos,
                         use_cache=True, **{self._cache_kw: cache}, **extra)
        return out.logits[:, -1, :], pmask, padded

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        self._cache = _new_cache(self.model)
        logits, pmask, padded = self._forward_prompts(prompts, self._cache)
        # Per row: the attention mask over the cache (None while no row is padded) and the
        # next position (counted over real tokens).
        self._mask = pmask if padded else None
        self._pos = pmask.sum(1)
        self._ones = torch.ones((1, 1), dtype=torch.int64, device=self.device)
        return logits

    def decode(self, tokens):
        R = tokens.shape[0]
        if self._mask is not None:
            self._mask = torch.cat([self._mask, self._ones.expand(R, 1)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self._mask, position_ids=self._pos[:, None],
                         use_cache=True, **{self._cache_kw: self._cache})
        self._pos = self._pos + 1
        return out.logits[:, -1, :]

    def reorder(self, src):
        self._cache.reorder_cache(src)
        self._pos = self._pos[src]
        if self._mask is not None:
            self._mask = self._mask[src]

    def can_extend(self, prompts, *, max_rows, max_new_tokens) -> bool:
        """Whether `extend` can join prompts to the running cache: a DynamicCache whose
        layers are all plain growing layers (no sliding window, no recurrent state)."""
        cache = self._cache
        return cache is not None and all(type(layer).__name__ == "DynamicLayer" and layer.is_initialized
                                         for layer in getattr(cache, "layers", [None]))

    def extend(self, prompts, *, max_rows, max_new_tokens):
        """Prefill `prompts` in a cache of their own, then join it to the running cache as
        rows after the current ones: both are left-padded (zero K/V, masked) to the longer
        length. Returns the prompts' last-token logits [g, V]."""
        if not self.can_extend(prompts, max_rows=max_rows, max_new_tokens=max_new_tokens):
            raise ValueError("extend: the model's cache cannot take new rows (check can_extend first)")
        new_cache = _new_cache(self.model)
        logits, pmask, _ = self._forward_prompts(prompts, new_cache)
        L, P = self._cache.get_seq_length(), new_cache.get_seq_length()
        width = max(L, P)

        def left(x, n):  # n zero positions before dim -2 ([B, H, L, D]) or dim 1 (masks)
            if n == 0:
                return x
            return torch.nn.functional.pad(x, (0, 0, n, 0) if x.dim() == 4 else (n, 0))

        for old, new in zip(self._cache.layers, new_cache.layers):
            old.keys = torch.cat([left(old.keys, width - L), left(new.keys, width - P)])
            old.values = torch.cat([left(old.values, width - L), left(new.values, width - P)])
        mask = self._mask if self._mask is not None else torch.ones((self._pos.shape[0], L), dtype=torch.int64,
                                                                     device=self.device)
        self._mask = torch.cat([left(mask, width - L), left(pmask, width - P)])
        self._pos = torch.cat([self._pos, pmask.sum(1)])
        return logits

    def release(self):
        self._cache = None
        self._mask = self._pos = None
