"""eager_generate: EAGer as a transformers `custom_generate` callable.

    out = model.generate(**tok(prompts, return_tensors="pt", padding=True),
                         custom_generate=eager_kernels.hf.eager_generate,
                         eager_config=EagerConfig.paper(max_paths_per_prompt=8),
                         max_new_tokens=64, return_dict_in_generate=True)

transformers' generate() prepares the inputs (input_ids, attention mask, the generation
config with the model's defaults and this call's flags) and hands them to the callable; the
decoding itself is eager_kernels.generate() with the EagerConfig, so the paths are the same
token for token. What generate() prepared that EAGer cannot honour is refused with a clear
error, never ignored.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..sampler import EagerConfig, EagerOutput, Metrics

try:  # transformers is an optional dependency; the output type needs it at import time
    from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerationMixin
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError("eager_kernels.hf needs transformers (pip install 'eager-kernels[sampler]')") from exc

# GenerationConfig fields this loop takes from generate() (or that change nothing in it).
_TAKEN = {
    "max_new_tokens", "max_length", "eos_token_id", "pad_token_id", "bos_token_id",
    "decoder_start_token_id", "return_dict_in_generate", "use_cache", "transformers_version",
    "_from_model_config", "compile_config", "disable_compile", "do_sample", "temperature",
}
# Fields whose meaning is "off" at these values even when they differ from the model's.
_NEUTRAL = {
    "num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "top_k": 0, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "diversity_penalty": 0.0, "guidance_scale": 1.0, "output_scores": False,
    "output_logits": False, "output_attentions": False, "output_hidden_states": False,
    "renormalize_logits": False, "remove_invalid_values": False, "token_healing": False,
    "min_length": 0, "min_new_tokens": 0, "length_penalty": 1.0, "early_stopping": False,
}
_SAMPLING_FLAGS = {"top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}
_MODEL_INPUTS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep", "num_logits_to_keep", "cache",
                 "past_key_values", "cache_position"}


@dataclass
class EagerGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' GenerateDecoderOnlyOutput with the EAGer fields.

    Attributes:
        sequences: int64 [paths, prompt_length + longest path], every path of every prompt
            (grouped by prompt, in the order of `eager.results[i].paths`): the prompt row as
            given to generate() (left padding included), then the path's tokens, then
            pad_token_id.
        prompt_index: int64 [paths], the input row (prompt) each path belongs to.
        logprob: float64 [paths], each path's cumulative log-probability (model
            distribution at T = 1).
        num_tokens: int64 [paths], tokens each path generated (EOS included).
        entropies: float32 [paths, longest path], the entropy (as configured) of the
            distribution each token came from; NaN past a path's end.
        branch_steps: list (one per path) of the steps where the path's lineage branched.
        finished: list (one per path) of "eos" or "length".
        answer_index: int64 [prompts], the row of `sequences` holding each prompt's chosen
            answer (the highest log-probability per token).
        metrics: the call's Metrics (tokens, forwards, branch events, timings).
        eager: the full EagerOutput (results per prompt with Path objects, the config).
        scores, logits, attentions, hidden_states, cache: always None (the tree has no
            per-row score tuple; refused as options).
    """

    prompt_index: Optional[torch.LongTensor] = None
    logprob: Optional[torch.Tensor] = None
    num_tokens: Optional[torch.LongTensor] = None
    entropies: Optional[torch.Tensor] = None
    branch_steps: Optional[list] = None
    finished: Optional[list] = None
    answer_index: Optional[torch.LongTensor] = None
    metrics: Optional[Metrics] = None
    eager: Optional[EagerOutput] = None


def _generate_frame_locals() -> Optional[dict]:
    """The locals of the GenerationMixin.generate() call that is running this callable, or
    None when eager_generate is called directly. transformers does not pass `streamer`,
    `assistant_model` or the caller's own processor lists to custom_generate callables; they
    are read here only to refuse them instead of ignoring them."""
    target = inspect.unwrap(GenerationMixin.generate).__code__
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_code is target:
            return dict(frame.f_locals)
        frame = frame.f_back
    return None


def _baseline_config(model):
    """The generation config generate() builds from the model's defaults alone (no flags)."""
    try:
        return model._prepare_generation_config(None)[0]
    except Exception:  # noqa: BLE001 - a private helper; fall back to the model's own config
        return model.generation_config


def _refuse(name: str, why: str):
    raise ValueError(f"eager_generate: {name} is not supported ({why})")


def _check_options(model, generation_config, cfg: EagerConfig, caller: Optional[dict], logits_processor,
                   stopping_criteria, model_kwargs: dict, streamer) -> None:
    if caller is not None:
        if caller.get("assistant_model") is not None:
            _refuse("assistant_model", "EAGer runs one model; assisted decoding would change the paths")
        if caller.get("streamer") is not None:
            _refuse("streamer", "the paths of a tree are only known at the end of the call")
        if caller.get("prefix_allowed_tokens_fn") is not None:
            _refuse("prefix_allowed_tokens_fn", "EAGer samples from the model's raw distribution")
        if caller.get("negative_prompt_ids") is not None:
            _refuse("negative_prompt_ids", "EAGer samples from the model's raw distribution")
        if caller.get("synced_gpus"):
            _refuse("synced_gpus", "the tree loop runs on one device")
        user_processors = caller.get("logits_processor") or []
        user_criteria = caller.get("stopping_criteria") or []
    else:  # a direct call: every processor it got is its caller's; the length/EOS criteria are taken over
        user_processors = list(logits_processor or [])
        user_criteria = [c for c in (stopping_criteria or [])
                         if type(c).__name__ not in ("MaxLengthCriteria", "EosTokenCriteria")]
        if streamer is not None:
            _refuse("streamer", "the paths of a tree are only known at the end of the call")
    if len(user_processors):
        _refuse("logits_processor", "EAGer samples from the model's raw distribution; to record entropies "
                "during an ordinary generate() use eager_kernels.hf.EntropyMonitor instead")
    if len(user_criteria):
        _refuse("stopping_criteria", "paths end at EOS or max_new_tokens; use EagerConfig.stop_branching_at "
                "to stop branching")

    # What this call asked for: the flags passed to generate() (read from its frame), and any
    # value that differs from the model's own defaults (a generation_config= object).
    base = _baseline_config(model)
    settings = generation_config.to_dict()
    explicit = set((caller or {}).get("kwargs") or {}) & set(settings)
    asked = {name for name, value in settings.items() if value != getattr(base, name, None)} | explicit
    passed = {}
    for name in sorted(asked):
        value = settings[name]
        if value is None or name.startswith("_") or name in _TAKEN or (name in _NEUTRAL and value == _NEUTRAL[name]):
            continue
        passed[name] = value
    for name, value in passed.items():
        if name in ("num_beams", "num_beam_groups", "early_stopping", "length_penalty", "diversity_penalty"):
            _refuse(f"{name}={value!r}", "beam search; EAGer's tree is set by eager_config=EagerConfig(...)")
        if name == "num_return_sequences":
            _refuse(f"num_return_sequences={value!r}", "EAGer returns up to max_paths_per_prompt paths per "
                    "prompt: set EagerConfig(max_paths_per_prompt=...)")
        if name in _SAMPLING_FLAGS:
            _refuse(f"{name}={value!r}", "EAGer samples from the full distribution at EagerConfig.temperature")
        if name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            _refuse(f"{name}={value!r}", "the output carries each path's entropies and log-probability instead")
        _refuse(f"{name}={value!r}", "EAGer's settings come from eager_config=EagerConfig(...)")

    # do_sample / temperature passed to this call must agree with the config.
    if "do_sample" in asked and generation_config.do_sample is not None:
        if bool(generation_config.do_sample) != (cfg.temperature > 0):
            raise ValueError(
                f"eager_generate: do_sample={generation_config.do_sample} contradicts the EagerConfig "
                f"(temperature={cfg.temperature}: {'sampling' if cfg.temperature > 0 else 'greedy'}); set "
                f"EagerConfig(temperature=...) instead")
    if "temperature" in asked:
        if generation_config.temperature is not None and float(generation_config.temperature) != float(cfg.temperature):
            raise ValueError(
                f"eager_generate: temperature={generation_config.temperature} contradicts the EagerConfig "
                f"(temperature={cfg.temperature}); set EagerConfig(temperature=...) instead")

    if generation_config.use_cache is False:
        _refuse("use_cache=False", "the EAGer loop always decodes from a KV cache")
    for key in model_kwargs:
        if key not in _MODEL_INPUTS:
            _refuse(f"model input {key!r}", "the EAGer loop feeds input_ids and the attention mask only")
    for key in ("cache", "past_key_values"):
        cache = model_kwargs.get(key)
        if cache is not None and (getattr(cache, "_is_user_defined", False) or cache.get_seq_length() > 0):
            _refuse(f"a prefilled {key}", "EAGer starts each call from the prompts")


def _max_new_tokens(model, generation_config, base, prompt_len: int, cfg: EagerConfig) -> int:
    """The call's max_new_tokens (or max_length minus the prompt), else the model generation
    config's, else the EagerConfig's."""
    if generation_config.max_new_tokens is not None:
        return int(generation_config.max_new_tokens)
    max_length = generation_config.max_length
    if max_length is None:
        return cfg.max_new_tokens
    if getattr(model.generation_config, "max_length", None) is None and getattr(base, "max_length", None) is not None:
        # Nothing set a length: generate() added the prompt length to the global default
        # (capped at the model's positions); that default is not a request.
        default = base.max_length + prompt_len
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None:
            default = min(default, limit)
        if max_length == default:
            return cfg.max_new_tokens
    n = int(max_length) - prompt_len
    if n < 1:
        raise ValueError(f"eager_generate: max_length={max_length} leaves no room after the prompt "
                         f"({prompt_len} tokens); pass max_new_tokens")
    return n


def _eos_list(value) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    return [int(value)] if isinstance(value, int) else [int(x) for x in value]


def eager_generate(model, input_ids: torch.LongTensor, logits_processor=None, stopping_criteria=None,
                   generation_config=None, synced_gpus: bool = False, streamer=None, *,
                   eager_config: Optional[EagerConfig] = None, eager_tokenizer=None, **model_kwargs: Any):
    """EAGer for `model.generate(custom_generate=eager_generate, ...)`.

    Args (what generate() passes, plus two of this package's):
        eager_config: the EagerConfig, the one source of EAGer's settings (policy,
            temperature, theta, q, M, seed, ...). Default EagerConfig() (the paper policy).
        eager_tokenizer: optional; fills each Path.text in `.eager` and tokenizes
            EagerConfig.stop_branching_at strings (transformers does not forward its own
            `tokenizer=` to custom_generate callables).
    From generate() it takes max_new_tokens (overriding the config's; a max_length passed to
    the call counts too), eos_token_id (unless the EagerConfig sets one), pad_token_id (to
    pad `sequences`) and the attention mask of left-padded batches. It raises ValueError
    for what it cannot honour: beam search, num_return_sequences, an assistant model, a
    streamer, logits processors / stopping criteria passed to the call, sampling flags
    passed to the call that contradict the config (do_sample, temperature) or that EAGer
    does not have (top_k, top_p, min_p, ...), output_scores/logits/attentions/hidden_states.
    Values coming from the model's own generation config are no contradiction. (Through the
    callable, generate() has already fed a streamer the prompt when the error is raised; the
    custom_generate/ folder form refuses it before.)

    Returns an EagerGenerateOutput (a GenerateDecoderOnlyOutput) when
    return_dict_in_generate is set, else the `sequences` tensor alone.
    """
    cfg = eager_config if eager_config is not None else EagerConfig()
    if not isinstance(cfg, EagerConfig):
        raise TypeError(f"eager_config: expected an EagerConfig, got {type(cfg).__name__}")
    if generation_config is None:
        generation_config = _baseline_config(model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError("eager_generate: expected input_ids [prompts, length] (inputs_embeds are not supported)")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("eager_generate: encoder-decoder models are not supported (decoder-only causal LMs)")
    caller = _generate_frame_locals()
    _check_options(model, generation_config, cfg, caller, logits_processor, stopping_criteria, model_kwargs,
                   streamer)

    base = _baseline_config(model)
    prompt_len = input_ids.shape[1]
    changes = {"max_new_tokens": _max_new_tokens(model, generation_config, base, prompt_len, cfg)}
    if cfg.eos_token_id is None:
        eos = _eos_list(generation_config.eos_token_id)
        if eos:
            changes["eos_token_id"] = eos
    cfg = cfg.replace(**changes)
    mask = model_kwargs.get("attention_mask")
    if mask is not None and mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")

    from ..sampler import generate as eager_kernels_generate

    out = eager_kernels_generate(model, input_ids, cfg, attention_mask=mask, tokenizer=eager_tokenizer)
    return _to_output(out, input_ids, generation_config)


def _to_output(out: EagerOutput, input_ids: torch.Tensor, generation_config):
    pad = generation_config.pad_token_id
    if pad is None:
        eos = _eos_list(generation_config.eos_token_id) or _eos_list(out.config.eos_token_id) or [0]
        pad = eos[0]
    paths = [p for r in out.results for p in r.paths]
    longest = max((p.num_tokens for p in paths), default=0)
    P = input_ids.shape[1]
    prompts_host = input_ids.cpu()
    seqs = torch.full((len(paths), P + longest), int(pad), dtype=torch.int64)
    ent = torch.full((len(paths), longest), float("nan"), dtype=torch.float32)
    answer_index = []
    row = 0
    for r in out.results:
        for p in r.paths:
            seqs[row, :P] = prompts_host[p.prompt_index]
            seqs[row, P: P + p.num_tokens] = torch.tensor(p.token_ids, dtype=torch.int64)
            ent[row, : p.num_tokens] = torch.tensor(p.entropies, dtype=torch.float32)
            if p is r.answer:
                answer_index.append(row)
            row += 1
    device = input_ids.device
    seqs = seqs.to(device)
    if not generation_config.return_dict_in_generate:
        return seqs
    return EagerGenerateOutput(
        sequences=seqs,
        prompt_index=torch.tensor([p.prompt_index for p in paths], dtype=torch.int64, device=device),
        logprob=torch.tensor([p.logprob for p in paths], dtype=torch.float64, device=device),
        num_tokens=torch.tensor([p.num_tokens for p in paths], dtype=torch.int64, device=device),
        entropies=ent.to(device),
        branch_steps=[list(p.branch_steps) for p in paths],
        finished=[p.finished for p in paths],
        answer_index=torch.tensor(answer_index, dtype=torch.int64, device=device),
        metrics=out.metrics,
        eager=out,
    )


def generate_from_folder(*args, model, **kwargs):
    """The body of custom_generate/generate.py: transformers calls it with `model` and every
    argument of generate() (or, after from_pretrained(..., trust_remote_code=True) on a
    folder that holds custom_generate/, as model.generate(...)). It refuses what generate()
    would otherwise act on before the loop (a streamer receives the prompt first), then runs
    the ordinary generate() preparation with eager_generate as the decoding loop."""
    for name, why in (("streamer", "the paths of a tree are only known at the end of the call"),
                      ("assistant_model", "EAGer runs one model; assisted decoding would change the paths")):
        if kwargs.get(name) is not None:
            _refuse(name, why)
    kwargs.pop("custom_generate", None)
    kwargs.pop("trust_remote_code", None)
    # The class's generate(): `model.generate` may be this very function (from_pretrained
    # binds a folder's custom_generate to the instance).
    return type(model).generate(model, *args, custom_generate=eager_generate, **kwargs)
