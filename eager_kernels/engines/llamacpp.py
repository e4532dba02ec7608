"""LlamaCppEngine: a GGUF model through llama-cpp-python's low-level API (CPU).

One llama.cpp context with one sequence id per row; the KV layout is chosen per call
(kv_unified=None): one cache shared by all rows for up to UNIFIED_MAX_PROMPTS prompts, one KV
stream per sequence for more:

- prefill: prompt g is sequence g, positions 0..len-1, no padding, logits only for each
  prompt's last token; one llama_decode per prompt (a stream per row) or of all prompts'
  tokens (unified);
- decode: one llama_decode of R tokens (row i: its sequence id, position len(prompt) + step),
  logits for all R rows, returned as a zero-copy torch view of llama's logits buffer;
- reorder: a dropped row's sequence is removed (llama_memory_seq_rm); a forked row's
  sequence is copied to a free id (llama_memory_seq_cp). Rows that stay keep their ids.

Why the choice: in a unified cache every row's attention runs over all the cells in use
(other rows' cells are masked, not skipped), so a step grows with rows x all rows' tokens
and many prompts are far cheaper with a stream per row; but a fork between streams copies
the parent's stream, which costs llama.cpp far more than retagging cells, so a forking
workload of few prompts is far cheaper unified. Flash attention is on in both layouts (as
fast as llama.cpp's "auto" or faster, and faster than off). Chosen by measurement
(`python benchmarks/bench_llamacpp_layout.py`): docs/engines.md, "LlamaCppEngine" (KV
layout, flash attention).

Batch invariance (engines/base.py; the figures: docs/reproducibility.md, "llama.cpp"). In
the default mode batch_invariant = False: in a unified cache a row's cells sit among the
other prompts' cells and its prefill shares a llama_decode with their tokens; with one KV
stream per row two ggml CPU paths still follow the batch. (1) A matmul of one row (n = 1)
runs ggml's vec_dot, of two or more llamafile's sgemm (llamafile_sgemm declines n < 2),
which sums each output in another order (one FMA accumulator and a horizontal sum, against
vec_dot's several accumulators); an output's sum in sgemm does not depend on n or on the
tile it falls in. (2) llama.cpp splits a decode over streams into one ubatch per run of
consecutive sequence ids in batch order (llama_batch_allocr::split_equal, sequential), so
after forks and drops a row can be alone in its ubatch (n = 1 again); a lone query row with
512 or more cells also takes flash attention's split-KV path, whose chunks follow the
thread count. LlamaCppEngine(batch_invariant=True) removes both: a stream per row, each
prompt prefilled in a call of its own (its ubatches, flash-attention tiles and n_kv then
depend on it alone), the rows' sequence ids kept 0..R-1 (reorder copies a kept row's stream
below R' where a drop left a gap) and written in id order, so that a decode is one ubatch
(the logits gathered back to row order), and a one-row decode padded with a dummy row
(sequence 1, position 0, removed after the call). Every step then runs the n >= 2 paths,
and a row's logits are bit-identical alone and in any batch (measured on F32, F16, BF16,
Q8_0 and Q4_1 Llama GGUFs with flash attention on and off, 1 and 2 threads; the types and
CPUs outside that raise, invariance_blocker). EagerConfig(batch_invariant=True) on the
default engine gives each prompt calls of its own instead (one prompt per call).

The batch arrays are numpy arrays owned here (llama_batch points into them), filled with
vectorised writes; no Python loop over rows in a step except over forks and drops.

The engine tokenises and detokenises with the GGUF's vocabulary and renders the GGUF's chat
template with jinja2 (as transformers does), so generate(LlamaCppEngine(path), ["..."], cfg)
needs no tokenizer argument.

Needs the `llamacpp` extra: pip install "eager-kernels[llamacpp]" (builds llama.cpp).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import BatchInvarianceError
from .base import Engine
from .llamacpp_build import AMX_FEATURE

EXTRA_HINT = ('the llama.cpp engine needs the package llama-cpp-python: pip install "eager-kernels[llamacpp]" '
              '(it builds llama.cpp from source, several minutes on 2 cores; see docs/install.md)')

_KV_ELEMENT_BYTES = 2  # llama.cpp's default K and V cache type is F16
_CELL_ROUND = 256
UNIFIED_MAX_PROMPTS = 4  # kv_unified=None: one shared cache up to this many prompts per call


def import_llama_cpp():
    """The low-level module llama_cpp.llama_cpp, or an ImportError naming the extra."""
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as e:
        from ..errors import MissingExtraError

        raise MissingExtraError("llama-cpp-python", "llamacpp",
                                "the llama.cpp engine (it builds llama.cpp from source, several minutes on "
                                "2 cores; see docs/install.md)") from e
    return lib


_BACKEND = {}


def _backend(lib, verbose: bool):
    """llama_backend_init once per process; llama.cpp's log silenced unless verbose."""
    if "init" not in _BACKEND:
        lib.llama_backend_init()
        _BACKEND["init"] = True
    if not verbose and "quiet" not in _BACKEND:
        @lib.llama_log_callback
        def _quiet(level, text, user_data):  # drop llama.cpp's log lines
            return None

        _BACKEND["quiet"] = _quiet  # kept alive: llama.cpp holds the pointer
        lib.llama_log_set(_quiet, ctypes.c_void_p(0))


def check_build(lib) -> frozenset:
    """The CPU features llama.cpp was compiled with (llama_print_system_info), after
    checking that this CPU has each of them: a build for another CPU (a wheel built
    natively elsewhere and reused from pip's cache or an image) would die of SIGILL on
    its first instruction of a missing set; this raises a RuntimeError that says how to
    rebuild instead. See llamacpp_build.py."""
    from .llamacpp_build import build_features, cpu_flags, missing_instruction_sets

    features = build_features(lib.llama_print_system_info().decode("utf-8", "replace"))
    flags = cpu_flags()
    missing = missing_instruction_sets(features, flags) if flags is not None else []
    if missing:
        raise RuntimeError(
            f"llama.cpp (llama-cpp-python) was built for instruction sets this CPU lacks: {', '.join(missing)} "
            "(a build from another machine?); rebuild it here: pip uninstall -y llama-cpp-python, then "
            "`make install` in a checkout, or CMAKE_ARGS=\"$(python -m eager_kernels.engines.llamacpp_build "
            "cmake-args)\" pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python")
    return features


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"model_path: no file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"model_path: {path} is not a GGUF file (it starts with {magic!r}, expected b'GGUF')")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# The invariant mode (LlamaCppEngine(batch_invariant=True)) is claimed only where it was
# measured bit-identical (docs/reproducibility.md, "llama.cpp"): these tensor types (ggml type
# id -> name), the Llama architecture, an x86-64 CPU, no repacked (extra-buffer) weights.
INVARIANT_TENSOR_TYPES = {0: "F32", 1: "F16", 3: "Q4_1", 8: "Q8_0", 30: "BF16"}
INVARIANT_ARCHITECTURES = ("llama",)
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def gguf_tensor_types(path) -> dict:
    """{tensor name: ggml type id} from a GGUF file's header (its key-value section skipped)."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} (expected 2 or later)")
        at = 24

        def string(at):
            n = struct.unpack_from("<Q", m, at)[0]
            return m[at + 8:at + 8 + n], at + 8 + n

        def skip(vtype, at):
            if vtype == 8:
                return string(at)[1]
            if vtype == 9:
                etype, count = struct.unpack_from("<IQ", m, at)
                at += 12
                if etype in _GGUF_SCALAR:
                    return at + count * _GGUF_SCALAR[etype]
                for _ in range(count):
                    at = skip(etype, at)
                return at
            return at + _GGUF_SCALAR[vtype]

        for _ in range(n_kv):
            at = string(at)[1]
            at = skip(struct.unpack_from("<I", m, at)[0], at + 4)
        types = {}
        for _ in range(n_tensors):
            name, at = string(at)
            n_dims = struct.unpack_from("<I", m, at)[0]
            at += 4 + 8 * n_dims
            types[name.decode("utf-8", "replace")] = struct.unpack_from("<I", m, at)[0]
            at += 12  # type, offset
        return types


def invariance_blocker(path, lib, model, build_features, extra_buffers: bool) -> Optional[str]:
    """Why LlamaCppEngine(batch_invariant=True) cannot claim bit-identical rows for this
    model and build (None: it can): the configurations measured are listed above."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"measured on x86-64 CPUs only (this is {platform.machine()}: other matmul kernels)"
    if extra_buffers and AMX_FEATURE in build_features:
        return "not measured with AMX-repacked weights (pass extra_buffers=False)"
    buf = ctypes.create_string_buffer(64)
    n = lib.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
    arch = buf.value.decode("utf-8", "replace") if n >= 0 else "unknown"
    if arch not in INVARIANT_ARCHITECTURES:
        return f"measured on the Llama architecture only (this GGUF is {arch!r})"
    other = sorted({t for t in gguf_tensor_types(path).values() if t not in INVARIANT_TENSOR_TYPES})
    if other:
        return (f"measured with {', '.join(INVARIANT_TENSOR_TYPES.values())} tensors only (this GGUF also has "
                f"ggml types {other}: other matmul paths, e.g. repacked or tiled by row count)")
    return None


class _Batch:
    """A llama_batch whose arrays are numpy arrays of `capacity` entries (one sequence id
    per token): fill token/pos/seq/out[:n], then call .struct(n)."""

    def __init__(self, lib, capacity: int):
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.out = np.zeros(capacity, dtype=np.int8)
        # seq_id is an array of pointers, one per token, each to that token's ids: point
        # entry i at seq[i] once, so that writing seq[:n] fills the batch.
        self.seq_ptrs = (self.seq.ctypes.data + 4 * np.arange(capacity, dtype=np.uint64)).astype(np.uint64)
        self._lib = lib
        P = ctypes.POINTER
        self._b = lib.llama_batch()
        self._b.token = self.token.ctypes.data_as(P(lib.llama_token))
        self._b.embd = ctypes.cast(None, P(ctypes.c_float))
        self._b.pos = self.pos.ctypes.data_as(P(lib.llama_pos))
        self._b.n_seq_id = self.n_seq_id.ctypes.data_as(P(ctypes.c_int32))
        self._b.seq_id = ctypes.cast(self.seq_ptrs.ctypes.data, P(P(lib.llama_seq_id)))
        self._b.logits = self.out.ctypes.data_as(P(ctypes.c_int8))

    def struct(self, n: int):
        self._b.n_tokens = n
        return self._b


class _LlamaTokenizer:
    """The GGUF's vocabulary with the subset of the transformers tokenizer interface that
    generate() uses."""

    def __init__(self, engine: "LlamaCppEngine"):
        self._e = engine
        lib, vocab = engine._lib, engine._vocab
        eos = lib.llama_vocab_eos(vocab)
        self.eos_token_id = int(eos) if eos >= 0 else None
        self.pad_token_id = None
        self.bos_token_id = int(lib.llama_vocab_bos(vocab))
        tmpl = lib.llama_model_chat_template(engine._model, None)
        self.chat_template = tmpl.decode("utf-8") if tmpl else None
        self._jinja = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list:
        lib = self._e._lib
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lib.llama_token * cap)()
        n = lib.llama_tokenize(self._e._vocab, data, len(data), buf, cap, add_special_tokens, True)
        if n < 0:  # the buffer was too small: -n tokens
            cap = -n
            buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(self._e._vocab, data, len(data), buf, cap, add_special_tokens, True)
        return list(buf[:n])

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens=True)}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        lib = self._e._lib
        ids = [int(t) for t in ids]
        if not ids:
            return ""
        arr = (lib.llama_token * len(ids))(*ids)
        cap = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = lib.llama_detokenize(self._e._vocab, arr, len(ids), buf, cap, skip_special_tokens,
                                     not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n
        raise RuntimeError("llama_detokenize failed")

    def _piece(self, token: int) -> str:
        return self.decode([token], skip_special_tokens=False) if token >= 0 else ""

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True):
        """The GGUF's chat template (tokenizer.chat_template) rendered with jinja2 the way
        transformers renders it, then tokenised without adding special tokens."""
        if not self.chat_template:
            raise ValueError("chat template: this GGUF file has none (tokenizer.chat_template); pass "
                             "chat_template=False to generate() to feed the prompt text as is")
        if self._jinja is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._jinja = env.from_string(self.chat_template)
        text = self._jinja.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                  bos_token=self._piece(self.bos_token_id),
                                  eos_token=self._piece(self.eos_token_id if self.eos_token_id is not None else -1))
        return self.encode(text, add_special_tokens=False) if tokenize else text


class LlamaCppEngine(Engine):
    """A GGUF model run by llama.cpp (llama-cpp-python's low-level API), CPU.

    Args:
        model_path: a .gguf file (models.default_gguf_path() for the default model).
        n_ctx: KV cells: per row (one stream per row), or shared by all rows (unified
            cache). None: sized at each prefill to what the stage can need (per row: the
            longest prompt + max_new_tokens; shared: the prompts + most rows x
            max_new_tokens), at most the model's training context per row.
        n_threads: CPU threads for llama.cpp (default: the CPUs this process may use).
        kv_unified: True: one KV cache shared by all rows (a fork retags cells, copies
            nothing; every row's attention runs over every row's cells); False: one stream
            per row (a fork copies the parent's stream; attention per row over its own
            cells); None (default): unified for calls of at most UNIFIED_MAX_PROMPTS
            prompts, streams for more (see the module docstring for the measurements).
        verbose: let llama.cpp print its log to stderr.
        extra_buffers: llama.cpp's extra weight buffer types (weights repacked for the
            CPU's matmul kernels, AMX among them; llama_model_params.use_extra_bufts).
            None (default): on, except with a llama.cpp built with AMX, whose repacked
            weights can die of SIGILL on the first decode (llamacpp_build.py).
        batch_invariant: True: a row's logits are bit-identical whatever else shares the
            call (module docstring, "Batch invariance"): one KV stream per row (kv_unified
            must be None or False), each prompt prefilled in a call of its own, and a decode
            of one row padded with a dummy row. Only where measured (a Llama GGUF of F32,
            F16, BF16, Q8_0 or Q4_1 tensors on an x86-64 CPU, repacked weights not in play);
            elsewhere a ValueError says why. Then batch_invariant = True and
            batch_deviation = 0.0 on the instance, and EagerConfig(batch_invariant=True)
            keeps the prompts in one batch. Default False.

    batch_invariant is False in the default mode (every layout); batch_deviation is then
    the largest log-probability difference measured (module docstring, "Batch invariance").
    """

    kv_copies = 1  # the context's cells are allocated once
    name = "llamacpp"
    batch_invariant = False
    batch_deviation = 0.36  # 4 prompts x 8 rows in the unified cache against each alone (docs/reproducibility.md)

    def __init__(self, model_path, *, n_ctx: Optional[int] = None, n_threads: Optional[int] = None,
                 kv_unified: Optional[bool] = None, verbose: bool = False,
                 extra_buffers: Optional[bool] = None, batch_invariant: bool = False):
        lib = import_llama_cpp()
        path = Path(model_path).expanduser()
        _check_gguf(path)
        if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1):
            raise ValueError(f"n_ctx: expected a positive int or None, got {n_ctx!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads: expected a positive int or None, got {n_threads!r}")
        if kv_unified is not None and not isinstance(kv_unified, bool):
            raise ValueError(f"kv_unified: expected a bool or None, got {kv_unified!r}")
        if extra_buffers is not None and not isinstance(extra_buffers, bool):
            raise ValueError(f"extra_buffers: expected a bool or None, got {extra_buffers!r}")
        if not isinstance(batch_invariant, bool):
            raise ValueError(f"batch_invariant: expected True or False, got {batch_invariant!r}")
        if batch_invariant and kv_unified:
            raise ValueError("batch_invariant=True needs a KV stream per row: pass kv_unified=None or False "
                             "(in a shared cache a row's cells sit among the other rows' cells)")
        self.kv_unified = False if batch_invariant else kv_unified
        _backend(lib, verbose)
        self.build_features = check_build(lib)
        if extra_buffers is None:
            extra_buffers = AMX_FEATURE not in self.build_features
        self.extra_buffers = extra_buffers
        self._lib = lib
        self.path = path
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = extra_buffers
        self._model = lib.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not self._model:
            raise ValueError(f"model_path: llama.cpp could not load {path} (an unsupported architecture or a "
                             "damaged file; pass verbose=True to see llama.cpp's log)")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self._vocab))
        self.device = torch.device("cpu")
        self.n_ctx = n_ctx
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self._model))
        if n_threads is None:
            n_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.n_threads = n_threads
        layers = int(lib.llama_model_n_layer(self._model))
        heads = int(lib.llama_model_n_head(self._model))
        kv_heads = int(lib.llama_model_n_head_kv(self._model))
        head_dim = int(lib.llama_model_n_embd(self._model)) // max(1, heads)
        self.kv_bytes_per_token = 2 * layers * kv_heads * head_dim * _KV_ELEMENT_BYTES
        self.tokenizer = _LlamaTokenizer(self)
        eos = [self.tokenizer.eos_token_id, int(lib.llama_vocab_eot(self._vocab))]
        self.eos_token_ids = sorted({int(e) for e in eos if e is not None and e >= 0})
        self._invariant = batch_invariant  # the invariant mode's bookkeeping (module docstring)
        bos = self.tokenizer.bos_token_id
        self._pad_token = bos if 0 <= bos < self.vocab_size else 0
        self._ctx = None
        self._ctx_shape = (0, 0, 0)  # (cells, sequences, batch)
        self._unified = True  # the layout of the context (and of the current call)
        self._flash_attn = None  # llama_flash_attn_type override for benchmarks/bench_llamacpp_layout.py
        self._batch = None
        self.last_decode_s = 0.0  # time inside llama_decode, summed over the last stage
        self.decode_calls = 0
        if batch_invariant:
            why = invariance_blocker(path, lib, self._model, self.build_features, extra_buffers)
            if why is not None:
                self.close()
                raise BatchInvarianceError(f"batch_invariant=True: {why}; use EagerConfig(batch_invariant=True) with "
                                           "batch_invariant=False here instead (each prompt in calls of its own)")
            self.batch_invariant = True
            self.batch_deviation = 0.0

    # -- context ------------------------------------------------------------------------

    def _ensure_context(self, cells: int, seqs: int, batch: int, unified: bool) -> None:
        have = self._ctx_shape if unified == self._unified else (0, 0, 0)  # another layout: sized anew
        if self._ctx is not None and have[0] >= cells and have[1] >= seqs and have[2] >= batch:
            return
        self._free_context()
        lib = self._lib
        self._unified = unified
        cells, seqs, batch = max(cells, have[0]), max(seqs, have[1]), max(batch, have[2])
        p = lib.llama_context_default_params()
        # unified: `cells` shared by all sequences; else `cells` per sequence (n_seq_max streams)
        p.n_ctx = cells if unified else cells * seqs
        p.n_batch = batch
        p.n_ubatch = min(batch, 512)
        p.n_seq_max = seqs
        p.n_threads = p.n_threads_batch = self.n_threads
        p.kv_unified = unified
        # Flash attention on: as fast as llama.cpp's "auto" or faster in both layouts, and
        # faster than off (module docstring; the figures: docs/engines.md).
        p.flash_attn_type = 1 if self._flash_attn is None else self._flash_attn
        p.no_perf = True
        ctx = lib.llama_init_from_model(self._model, p)
        if not ctx:
            raise MemoryError(f"llama.cpp could not create a context of {cells} cells x {seqs} sequences")
        self._ctx = ctx
        self._mem = lib.llama_get_memory(ctx)
        n = int(lib.llama_n_ctx(ctx))
        self._ctx_shape = (n if unified else n // seqs, seqs, batch)
        self._batch = _Batch(lib, batch)

    def _free_context(self) -> None:
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
            self._ctx = None
            self._batch = None

    def close(self) -> None:
        """Free the context and the model (the engine cannot be used afterwards)."""
        self._free_context()
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- the protocol -------------------------------------------------------------------

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        lens = np.array([len(p) for p in prompts], dtype=np.int64)
        G, T = len(prompts), int(max_new_tokens)
        longest = int(lens.max()) + T
        limit = self.n_ctx if self.n_ctx is not None else self.n_ctx_train
        if longest > limit:
            raise ValueError(
                f"max_new_tokens: the longest prompt ({int(lens.max())} tokens) plus max_new_tokens ({T}) is "
                f"{longest} tokens, more than the context of {limit} tokens "
                f"({'n_ctx' if self.n_ctx is not None else 'the model is trained for'}); shorten the prompt, lower "
                f"max_new_tokens{' or raise n_ctx' if self.n_ctx is not None else ''}")
        slots = int(self._lib.llama_max_parallel_sequences())
        rows = max(int(max_rows), G)
        if rows > slots:
            raise ValueError(
                f"max_paths_per_prompt: this configuration can hold {rows} rows at once (prompts x min(M, "
                f"prune_to)) but llama.cpp has {slots} sequence slots; lower max_paths_per_prompt or prune_to, "
                f"or pass fewer prompts per call")
        total = int(lens.sum())
        unified = self.kv_unified if self.kv_unified is not None else G <= UNIFIED_MAX_PROMPTS
        if unified:
            # Cells in use at any step: the prompts (shared by their forks) plus at most
            # max_new_tokens per live row; a margin for the cache's own granularity.
            need = total + rows * T + rows
            cells = self.n_ctx if self.n_ctx is not None else _round_up(need, _CELL_ROUND)
            if total > cells:
                raise ValueError(f"n_ctx: the prompts take {total} tokens together, more than n_ctx = {cells}")
        else:  # one stream per row: the longest row (checked above against n_ctx)
            cells = self.n_ctx if self.n_ctx is not None else _round_up(longest + 1, _CELL_ROUND)
        # unified: all prompts in one llama_decode; a stream per row: one llama_decode per
        # prompt (llama.cpp splits a batch over several streams into equal-length ubatches,
        # which made one call for 8 GSM8K prompts many times slower than eight)
        per_prompt = not unified and G > 1
        seqs = max(rows, 2) if self._invariant else rows  # invariant: a one-row decode pads to 2 rows
        self._ensure_context(cells, seqs, max(int(lens.max()) if per_prompt else total, seqs), unified)
        lib = self._lib
        lib.llama_memory_clear(self._mem, True)
        b = self._batch
        if per_prompt:
            first = torch.empty((G, self.vocab_size), dtype=torch.float32)
            for g, p in enumerate(prompts):
                n = int(lens[g])
                b.token[:n] = np.asarray(p, dtype=np.int32)
                b.pos[:n] = np.arange(n)
                b.seq[:n] = g
                b.out[:n] = 0
                b.out[n - 1] = 1
                self._call_decode(n)
                first[g] = self._logits(1)[0]
        else:
            b.token[:total] = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
            b.pos[:total] = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            b.seq[:total] = np.repeat(np.arange(G, dtype=np.int32), lens)
            b.out[:total] = 0
            b.out[np.cumsum(lens) - 1] = 1
            self._call_decode(total)
            first = self._logits(G)
        self._pos = lens.astype(np.int32)  # each row's next position
        self._seq = np.arange(G, dtype=np.int32)  # the sequence id of each row
        self._free = list(range(self._ctx_shape[1] - 1, G - 1, -1))  # free ids, popped from the end
        self._prompt_cells = total  # prompt tokens prefilled since the context was cleared
        self._stage_tokens = T
        self.last_decode_s = 0.0
        self.decode_calls = 0
        return first

    def decode(self, tokens):
        R = int(tokens.shape[0])
        b = self._batch
        b.token[:R] = tokens.numpy()
        b.pos[:R] = self._pos
        b.seq[:R] = self._seq
        b.out[:R] = 1
        if self._invariant:
            return self._decode_invariant(R)
        self._call_decode(R)
        self._pos = self._pos + 1
        return self._logits(R)

    def _decode_invariant(self, R: int) -> torch.Tensor:
        """The decode of the invariant mode (tokens, positions and ids written to the batch
        in row order): the rows' sequence ids are 0..R-1 (reorder keeps them so), written in
        the order of their ids, so that llama.cpp's split of a batch over streams (one
        ubatch per run of consecutive ids, llama_batch_allocr::split_equal) makes one ubatch
        of all rows; one row is padded with a dummy row (sequence 1, position 0, removed
        after the call). A ubatch of one row would take ggml's n = 1 matmul path (vec_dot:
        another summation order than llamafile's sgemm, which takes n >= 2) and, from 512
        cells, flash attention's split-KV path (module docstring)."""
        b, seq = self._batch, self._seq
        order = None if np.array_equal(seq, np.arange(R)) else np.argsort(seq, kind="stable")
        if order is not None:
            b.token[:R], b.pos[:R], b.seq[:R] = b.token[:R][order], b.pos[:R][order], b.seq[:R][order]
        n = R
        if R == 1:
            b.token[1], b.pos[1], b.seq[1], b.out[1] = self._pad_token, 0, 1, 1
            n = 2
        self._call_decode(n)
        if R == 1:
            self._lib.llama_memory_seq_rm(self._mem, 1, -1, -1)
        self._pos = self._pos + 1
        logits = self._logits(R)
        return logits if order is None else logits[torch.from_numpy(seq.astype(np.int64))]

    def can_extend(self, prompts, *, max_rows, max_new_tokens) -> bool:
        """Whether `extend(prompts)` fits the context made at the last prefill: sequence
        slots for max_rows rows, a batch that holds them, and cells for the prompts and
        max_new_tokens per row (unified: all prompts since the prefill, counted whole)."""
        if self._ctx is None or self._seq is None:
            return False
        cells, seqs, batch = self._ctx_shape
        lens = [len(p) for p in prompts]
        if max_rows > seqs or max_rows > batch or len(prompts) > len(self._free):
            return False
        if max(lens) > batch if not self._unified else sum(lens) > batch:
            return False
        T = max(int(max_new_tokens), self._stage_tokens)
        if self._unified:
            return self._prompt_cells + sum(lens) + max_rows * T + max_rows <= cells
        return max(lens) + T + 1 <= cells

    def extend(self, prompts, *, max_rows, max_new_tokens):
        """Prefill `prompts` into free sequences of the running context, as rows after the
        current ones; returns their last tokens' logits [g, V]. The logits of the previous
        decode are overwritten (copy them first)."""
        if not self.can_extend(prompts, max_rows=max_rows, max_new_tokens=max_new_tokens):
            raise ValueError("extend: the prompts do not fit the running context (check can_extend first)")
        seqs = [self._free.pop() for _ in prompts]
        try:
            first = self._prefill_into(prompts, seqs)
        except BaseException:  # the running rows stay as they were
            for s in seqs:
                self._lib.llama_memory_seq_rm(self._mem, int(s), -1, -1)
                self._free.append(int(s))
            raise
        lens = np.array([len(p) for p in prompts], dtype=np.int64)
        self._prompt_cells += int(lens.sum())
        self._stage_tokens = max(self._stage_tokens, int(max_new_tokens))
        self._seq = np.concatenate([self._seq, np.asarray(seqs, dtype=np.int32)])
        self._pos = np.concatenate([self._pos, lens.astype(np.int32)])
        return first

    def _prefill_into(self, prompts, seqs) -> torch.Tensor:
        """The prompts decoded into sequences `seqs` (of the running context); their
        last tokens' logits [g, V], copied."""
        b = self._batch
        lens = np.array([len(p) for p in prompts], dtype=np.int64)
        G = len(prompts)
        if self._unified:
            total = int(lens.sum())
            b.token[:total] = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
            b.pos[:total] = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            b.seq[:total] = np.repeat(np.asarray(seqs, dtype=np.int32), lens)
            b.out[:total] = 0
            b.out[np.cumsum(lens) - 1] = 1
            self._call_decode(total)
            first = self._logits(G).clone()
        else:
            first = torch.empty((G, self.vocab_size), dtype=torch.float32)
            for g, p in enumerate(prompts):
                n = int(lens[g])
                b.token[:n] = np.asarray(p, dtype=np.int32)
                b.pos[:n] = np.arange(n)
                b.seq[:n] = seqs[g]
                b.out[:n] = 0
                b.out[n - 1] = 1
                self._call_decode(n)
                first[g] = self._logits(1)[0]
        return first

    def reorder(self, src):
        lib, mem = self._lib, self._mem
        src = src.numpy()
        old = self._seq
        kept = np.zeros(old.shape[0], dtype=bool)
        kept[src] = True
        for s in old[~kept]:
            lib.llama_memory_seq_rm(mem, int(s), -1, -1)
            self._free.append(int(s))
        first = np.zeros(src.shape[0], dtype=bool)
        first[np.unique(src, return_index=True)[1]] = True
        new = old[src].copy()
        if self._invariant:
            self._compact_ids(new, first)
        else:
            for i in np.flatnonzero(~first):  # forks: a second (third...) row of the same parent
                if not self._free:
                    raise RuntimeError("LlamaCppEngine: more rows than the context's sequence slots")
                dst = self._free.pop()
                lib.llama_memory_seq_cp(mem, int(new[i]), dst, -1, -1)
                new[i] = dst
        self._seq = new
        self._pos = self._pos[src]

    def _compact_ids(self, new, first) -> None:
        """reorder()'s ids in the invariant mode: the R' new rows' sequence ids (`new`, in
        place; `first`: a parent's first row) become 0..R'-1 again. A kept row keeps its id
        if below R', else its stream is copied to a free id below R' (llama_memory_seq_cp
        between streams, done at the next decode) and removed; each fork copies its parent's
        stream to a free id below R'. Every copy reads a stream that was live before the
        call and writes one that was free, so the queued copies do not depend on their order."""
        lib, mem = self._lib, self._mem
        R = int(new.shape[0])
        held = set(int(s) for s in new[first] if s < R)
        free = [i for i in range(R) if i not in held]  # ids below R' for forks and moves, ascending
        moved = []
        for i in range(R):
            if not first[i] or new[i] >= R:  # a fork, or a kept row above R'
                dst = free.pop(0)
                lib.llama_memory_seq_cp(mem, int(new[i]), dst, -1, -1)
                if first[i]:
                    moved.append(int(new[i]))
                new[i] = dst
        for s in moved:
            lib.llama_memory_seq_rm(mem, s, -1, -1)
        self._free = list(range(self._ctx_shape[1] - 1, R - 1, -1))

    def release(self):
        if self._ctx is not None:
            self._lib.llama_memory_clear(self._mem, True)
        self._pos = self._seq = None

    # -- internals ----------------------------------------------------------------------

    def _call_decode(self, n: int) -> None:
        import time

        t0 = time.perf_counter()
        rc = self._lib.llama_decode(self._ctx, self._batch.struct(n))
        self.last_decode_s += time.perf_counter() - t0
        self.decode_calls += 1
        if rc == 1:
            where = "cells" if self._unified else "cells per row"
            raise RuntimeError(f"llama_decode: no room in the KV cache ({self._ctx_shape[0]} {where}) for {n} more "
                               "tokens; raise n_ctx (or leave it None to size it per call)")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def _logits(self, rows: int) -> torch.Tensor:
        """A zero-copy [rows, V] view of llama's logits buffer (valid until the next decode)."""
        ptr = self._lib.llama_get_logits(self._ctx)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(rows, self.vocab_size)))
