"""TransformersEngine: a transformers causal LM and its DynamicCache behind the engine protocol.

Batch-invariant mode (TransformersEngine(model, batch_invariant=True)): a row's logits are
bit-identical whatever other rows share the call, so the engine states batch_invariant =
True and EagerConfig(batch_invariant=True) keeps the prompts in one batch. Three things make
a row's computation the one it gets alone:

- prefill and extend run each prompt in a forward of its own (its K/V and last logits are
  those of the prompt alone), then join the caches left-padded;
- a decode pads the batch with dummy rows to a multiple of ROW_MULTIPLE: every op of the
  model (the Linear layers above all: their result for a row depends on the row count
  otherwise, e.g. 1 row against 8 with MKL) sees a row count it also sees alone;
- a decode's attention (an AttentionInterface function selected only during the engine's
  own forwards) takes each run of rows of one length over exactly their valid keys, never
  over the padding (whose length changes the reductions' order).

A probe checks it on the model itself before the engine states it, and again for every
new padded row count and thread count: the model's Linear layers and norms on rows alone
(padded) against the same rows among others at several positions, the attention likewise,
and a decode step end to end; a difference raises BatchInvarianceError naming the op.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect

import torch

from ..errors import BatchInvarianceError
from .base import Engine

ROW_MULTIPLE = 8  # decode batches are padded to a multiple of this many rows (invariant mode)
PROBE_ROWS = (8, 16, 24, 64, 128)  # row counts the constructor probes (others: at their first decode)
_ATTENTION = "eager_kernels_invariant"  # its name in transformers' AttentionInterface
_RUNS = contextvars.ContextVar("eager_kernels_invariant_runs", default=None)  # (start, end, keys) of a decode


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


def _padded_rows(rows: int) -> int:
    return -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE


def _runs(lengths) -> list:
    """(start, end, length) of each run of consecutive rows of one length."""
    runs = []
    for i, n in enumerate(lengths):
        if runs and runs[-1][2] == n:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, n])
    return [tuple(r) for r in runs]


def _left(x: torch.Tensor, n: int) -> torch.Tensor:
    """n zero positions before dim -2 ([B, H, L, D]) or dim 1 (masks)."""
    if n == 0:
        return x
    return torch.nn.functional.pad(x, (0, 0, n, 0) if x.dim() == 4 else (n, 0))


def _run_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """The invariant mode's decode attention (registered in transformers' AttentionInterface):
    query [R', H, 1, D] (R' >= R: dummy rows after the real ones), key/value [R, Hkv, W, D]
    left-padded. Each run (start, end, n) of _RUNS attends over its last n keys only, as
    matmul, softmax, matmul of its rows alone, on one torch thread (_one_thread); the dummy
    rows get zeros. Returns ([R', 1, H, D], None)."""
    runs = _RUNS.get()
    if runs is None or query.shape[2] != 1:
        raise RuntimeError("the batch-invariant attention runs only inside TransformersEngine's decode")
    unsupported = [k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None]
    if unsupported or dropout:
        raise NotImplementedError(f"the batch-invariant attention does not implement {unsupported or 'dropout'}")
    rows, heads, _, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    out = query.new_zeros(rows, 1, heads, dim)
    with _one_thread():
        for a, b, n in runs:
            q = query[a:b].reshape(b - a, kv_heads, group, dim)
            scores = torch.matmul(q, key[a:b, :, width - n:].transpose(-1, -2)) * scale
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            out[a:b, 0] = torch.matmul(probs, value[a:b, :, width - n:]).reshape(b - a, heads, dim)
    return out, None


@contextlib.contextmanager
def _one_thread():
    """One torch thread inside the block (the attention's many small per-run ops: on more
    threads each pays an OpenMP fork and join, several milliseconds apiece on a loaded machine,
    for no gain; and a row's attention is then the same whatever the engine's thread count)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _register_attention() -> None:
    from transformers import AttentionInterface

    if _ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(_ATTENTION, _run_attention)


@functools.cache
def _rows_cache_class():
    """A DynamicCache that stores only the first `rows` rows of an update (None: all): a
    decode's dummy rows never reach it."""
    from transformers import DynamicCache

    class RowsCache(DynamicCache):
        rows = None

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if self.rows is not None and key_states.shape[0] != self.rows:
                key_states, value_states = key_states[: self.rows], value_states[: self.rows]
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    return RowsCache


def _attention_configs(model) -> list:
    """The config objects whose _attn_implementation the model's modules read."""
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


# -- the probe ---------------------------------------------------------------------------------


def _rowwise_modules(model) -> dict:
    """{(kind, shape, dtype): (name, module, count)}: one Linear per weight shape and one norm
    per class and width (the kernel's path depends on the shapes, not on the weights)."""
    found = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, torch.nn.Linear):
            key = ("Linear", tuple(m.weight.shape), m.weight.dtype, m.bias is not None)
        elif type(m).__name__.endswith("Norm") and isinstance(w, torch.Tensor) and w.dim() == 1:
            key = (type(m).__name__, (w.shape[0],), w.dtype, False)
        else:
            continue
        if key in found:
            first, mod, count = found[key]
            found[key] = (first, mod, count + 1)
        else:
            found[key] = (name, m, 1)
    return found


def _describe(key, name, count) -> str:
    kind, shape, dtype, _ = key
    what = f"{kind} {shape[1]} -> {shape[0]}" if kind == "Linear" else f"{kind} of width {shape[0]}"
    others = f", and {count - 1} other(s) of that shape" if count > 1 else ""
    return f"{name} ({what}, {str(dtype).replace('torch.', '')}{others})"


def _probe_rowwise(model, sizes, device, gen) -> None:
    """Each Linear shape and norm of the model: 3 random rows, each alone (padded to
    ROW_MULTIPLE rows with zeros) against the same rows among random others in batches of
    `sizes` rows, at the first, a middle and the last position."""
    for key, (name, mod, count) in _rowwise_modules(model).items():
        width = mod.in_features if isinstance(mod, torch.nn.Linear) else key[1][0]
        dtype = key[2]
        test = torch.randn(3, width, generator=gen).to(device=device, dtype=dtype)
        alone = [mod(torch.cat([test[i:i + 1], test.new_zeros(ROW_MULTIPLE - 1, width)]))[0] for i in range(3)]
        for M in sizes:
            batch = torch.randn(M, width, generator=gen).to(device=device, dtype=dtype)
            where = sorted({0, M // 2, M - 1})
            for i, pos in enumerate(where):
                batch[pos] = test[i]
            out = mod(batch)
            for i, pos in enumerate(where):
                if not torch.equal(out[pos], alone[i]):
                    gap = float((out[pos].double() - alone[i].double()).abs().max())
                    raise BatchInvarianceError(
                        f"batch-invariant mode refused: {_describe(key, name, count)}: a row at position {pos} of "
                        f"{M} rows differs from the row alone (padded to {ROW_MULTIPLE} rows) by up to {gap:.3g}; "
                        f"{torch.get_num_threads()} torch thread(s), device {device}")


def _probe_attention(model, device, dtype, gen) -> None:
    """_run_attention on random rows: every row of runs of several lengths at several
    positions against the row alone."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    lengths = [1, 7, 7, 7, 40, 40, 3, 129, 129, 129, 129, 16, 16] + [300] * 12 + [1100]  # runs of 1 to 12 rows
    R, W = len(lengths), max(lengths) + 5
    q = torch.randn(_padded_rows(R), heads, 1, dim, generator=gen).to(device=device, dtype=dtype)
    k, v = (torch.randn(R, kv_heads, W, dim, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    token = _RUNS.set(_runs(lengths))
    try:
        batch, _ = _run_attention(None, q, k, v)
    finally:
        _RUNS.reset(token)
    for r, n in enumerate(lengths):
        token = _RUNS.set([(0, 1, n)])
        try:
            alone, _ = _run_attention(None, torch.cat([q[r:r + 1], q.new_zeros(ROW_MULTIPLE - 1, *q.shape[1:])]),
                                      k[r:r + 1, :, W - n:].contiguous(), v[r:r + 1, :, W - n:].contiguous())
        finally:
            _RUNS.reset(token)
        if not torch.equal(batch[r], alone[0]):
            raise BatchInvarianceError(
                f"batch-invariant mode refused: the attention over {n} keys (matmul, softmax, matmul; "
                f"{heads} heads, {kv_heads} KV heads, head size {dim}) differs for row {r} of {R} from the row alone; "
                f"{torch.get_num_threads()} torch thread(s), device {device}")


class TransformersEngine(Engine):
    """A transformers causal LM on any device: left-padded prefill with position ids counted
    over real tokens, one forward of R single tokens per step, the cache reordered with one
    index_select per layer (DynamicCache.reorder_cache).

    batch_invariant=True: the batch-invariant mode (module docstring): each prompt prefilled
    alone, decode batches padded to a multiple of ROW_MULTIPLE rows, each row's attention over
    its own keys. The constructor probes the model first (BatchInvarianceError if a row's
    result depends on its batch) and then states batch_invariant = True, batch_deviation = 0.
    The default mode (False) is unchanged.
    """

    kv_copies = 2  # the dynamic cache is copied when it grows or is reordered
    name = "transformers"
    # A row's logits move with its batch: left padding changes the attention's reduction
    # length and the matmuls' blocking follows the row count. batch_deviation: the largest
    # log-probability difference measured (benchmarks/bench_batch_invariance.py, SmolLM2
    # fp32; docs/reproducibility.md).
    batch_invariant = False
    batch_deviation = 7.13e-5

    def __init__(self, model, tokenizer=None, *, batch_invariant: bool = False):
        if not isinstance(batch_invariant, bool):
            raise TypeError(f"batch_invariant: expected True or False, got {batch_invariant!r}")
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
        self._invariant = batch_invariant
        if batch_invariant:
            _register_attention()
            self._attn_configs = _attention_configs(model)
            self._lens = None  # invariant mode: each row's tokens in the cache (host)
            self._probed, self._probed_threads = set(), set()  # (threads, padded rows), threads
            self._probe()
            self.batch_invariant = True
            self.batch_deviation = 0.0

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
        if self._invariant:
            self._check_probed()
            return self._prefill_invariant(prompts)
        self._cache = _new_cache(self.model)
        logits, pmask, padded = self._forward_prompts(prompts, self._cache)
        # Per row: the attention mask over the cache (None while no row is padded) and the
        # next position (counted over real tokens).
        self._mask = pmask if padded else None
        self._pos = pmask.sum(1)
        self._ones = torch.ones((1, 1), dtype=torch.int64, device=self.device)
        return logits

    def decode(self, tokens):
        if self._invariant:
            self._check_probed(_padded_rows(tokens.shape[0]))
            return self._decode_invariant(tokens)
        R = tokens.shape[0]
        if self._mask is not None:
            self._mask = torch.cat([self._mask, self._ones.expand(R, 1)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self._mask, position_ids=self._pos[:, None],
                         use_cache=True, **{self._cache_kw: self._cache})
        self._pos = self._pos + 1
        return out.logits[:, -1, :]

    def reorder(self, src):
        self._cache.reorder_cache(src)
        if self._invariant:
            self._lens = [self._lens[i] for i in src.tolist()]
            return
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
        if self._invariant:
            return self._extend_invariant(prompts)
        new_cache = _new_cache(self.model)
        logits, pmask, _ = self._forward_prompts(prompts, new_cache)
        L, P = self._cache.get_seq_length(), new_cache.get_seq_length()
        width = max(L, P)
        for old, new in zip(self._cache.layers, new_cache.layers):
            old.keys = torch.cat([_left(old.keys, width - L), _left(new.keys, width - P)])
            old.values = torch.cat([_left(old.values, width - L), _left(new.values, width - P)])
        mask = self._mask if self._mask is not None else torch.ones((self._pos.shape[0], L), dtype=torch.int64,
                                                                     device=self.device)
        self._mask = torch.cat([_left(mask, width - L), _left(pmask, width - P)])
        self._pos = torch.cat([self._pos, pmask.sum(1)])
        return logits

    def release(self):
        self._cache = None
        self._mask = self._pos = None
        if self._invariant:
            self._lens = None

    # -- the batch-invariant mode (module docstring) ----------------------------------------------

    def _forward_alone(self, prompt):
        """One prompt in a forward and a cache of its own: (its last logits [1, V], the cache)."""
        try:
            cache = _rows_cache_class()(config=self.model.config)
        except TypeError:  # older transformers
            cache = _rows_cache_class()()
        ids = torch.tensor([list(prompt)], dtype=torch.int64, device=self.device)
        pos = torch.arange(len(prompt), device=self.device)[None]
        extra = {self._keep_kw: 1} if self._keep_kw else {}
        out = self.model(input_ids=ids, position_ids=pos, use_cache=True, **{self._cache_kw: cache}, **extra)
        return out.logits[:, -1, :], cache

    def _join(self, caches) -> None:
        """The running cache (if any) and `caches` as one, its rows then theirs, each
        left-padded (zero K/V, never attended) to the longest."""
        parts = ([self._cache] if self._cache is not None else []) + list(caches)
        if len(parts) > 1:
            widths = [c.get_seq_length() for c in parts]
            width = max(widths)
            for i, layer in enumerate(parts[0].layers):
                layer.keys = torch.cat([_left(c.layers[i].keys, width - w) for c, w in zip(parts, widths)])
                layer.values = torch.cat([_left(c.layers[i].values, width - w) for c, w in zip(parts, widths)])
        self._cache = parts[0]

    def _prefill_invariant(self, prompts):
        self._cache, self._lens = None, []
        return self._extend_invariant(prompts)

    def _extend_invariant(self, prompts):
        logits, caches = zip(*[self._forward_alone(p) for p in prompts])
        self._join(caches)
        self._lens = self._lens + [len(p) for p in prompts]
        return torch.cat(logits)

    @contextlib.contextmanager
    def _invariant_attention(self, runs):
        """The model's attention is _run_attention over `runs` inside the block only."""
        configs = self._attn_configs
        before = [c._attn_implementation_internal for c in configs]
        token = _RUNS.set(runs)
        for c in configs:
            c._attn_implementation_internal = _ATTENTION
        try:
            yield
        finally:
            for c, b in zip(configs, before):
                c._attn_implementation_internal = b
            _RUNS.reset(token)

    def _decode_invariant(self, tokens):
        """One forward of the rows padded to a multiple of ROW_MULTIPLE (dummy rows: the pad
        token at position 0, their K/V never stored), each run of rows of one length
        attending over its own keys."""
        R = tokens.shape[0]
        rows = _padded_rows(R)
        pos = torch.tensor(self._lens + [0] * (rows - R), dtype=torch.int64)[:, None].to(self.device)
        ids = tokens if rows == R else torch.cat([tokens, tokens.new_full((rows - R,), self._pad_id())])
        self._lens = [n + 1 for n in self._lens]
        self._cache.rows = R
        try:
            with self._invariant_attention(_runs(self._lens)):
                out = self.model(input_ids=ids[:, None], position_ids=pos, use_cache=True,
                                 **{self._cache_kw: self._cache})
        finally:
            self._cache.rows = None
        return out.logits[:R, -1, :]

    def _check_probed(self, rows=None) -> None:
        """Probe what this thread count (and, at a decode, this padded row count) has not been
        probed on: at a prefill the whole probe, at a decode the row-wise ops at `rows`."""
        threads = torch.get_num_threads()
        if rows is None:
            if threads not in self._probed_threads:
                self._probe()
            return
        if (threads, rows) not in self._probed:
            with torch.inference_mode():
                _probe_rowwise(self.model, [rows], self.device, torch.Generator().manual_seed(rows))
                if threads not in self._probed_threads:
                    _probe_attention(self.model, self.device, next(self.model.parameters()).dtype,
                                     torch.Generator().manual_seed(1))
            self._probed.add((threads, rows))

    def _probe(self) -> None:
        """The whole probe at the current thread count: the row-wise ops at PROBE_ROWS rows,
        the attention, a decode step end to end (module docstring). Leaves no cache."""
        threads = torch.get_num_threads()
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            _probe_rowwise(self.model, PROBE_ROWS, self.device, gen)
            _probe_attention(self.model, self.device, next(self.model.parameters()).dtype, gen)
            try:
                self._probe_decode(gen)
            except NotImplementedError as e:
                raise BatchInvarianceError(f"batch-invariant mode refused: {e}") from e
            finally:
                self.release()
        self._probed.update((threads, m) for m in PROBE_ROWS)
        self._probed_threads.add(threads)

    def _probe_decode(self, gen) -> None:
        """A prompt alone (prefill, decode) against the same prompt's rows among another
        prompt's (prefilled together, rows interleaved: 10 rows padded to 16) and joined to the
        running batch (extend, then a decode beside rows of other lengths): its logits must be
        equal to the last bit."""
        V = self.vocab_size

        def toks(xs):
            return torch.tensor(xs, dtype=torch.int64, device=self.device)

        p1, p2, noise = (torch.randint(0, V, (n,), generator=gen).tolist() for n in (5, 9, 24))
        t1 = noise.pop()
        alone = [self._prefill_invariant([p1])[0].clone()]
        if not self.can_extend([p1], max_rows=1, max_new_tokens=1):
            raise BatchInvarianceError("batch-invariant mode refused: the model's cache has layers other than plain "
                                       "growing ones (a sliding window or a recurrent state)")
        alone.append(self._decode_invariant(toks([t1]))[0].clone())
        got = [("the prefill of a prompt beside another", self._prefill_invariant([p2, p1])[1], alone[0])]
        src = [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
        self.reorder(toks(src))
        out = self._decode_invariant(toks([t1 if s else noise[i] for i, s in enumerate(src)]))
        got += [("a decode of a prompt's rows among another's", out[r], alone[1]) for r in (5, 9)]
        got.append(("a prompt joining a running batch (extend)", self._extend_invariant([p1])[0], alone[0]))
        self.reorder(toks([0, 10, 1, 2, 10, 5, 3, 4]))
        out = self._decode_invariant(toks([noise[10], t1, noise[11], noise[12], t1] + noise[13:16]))
        got += [("the first decode of a joined prompt", out[r], alone[1]) for r in (1, 4)]
        for what, row, want in got:
            if not torch.equal(row, want):
                gap = float((row.double() - want.double()).abs().max())
                raise BatchInvarianceError(
                    f"batch-invariant mode refused: {what}: logits differ from the prompt alone by up to {gap:.3g} "
                    f"although the model's Linear layers, norms and attention passed the probe (another op of the "
                    f"model depends on the batch); {torch.get_num_threads()} torch thread(s), device {self.device}")
