"""EagerConfig (what generate() does) and the result types (what it returns)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from ..errors import ConfigError

POLICIES = ("paper", "seed")


class _PolicyDefault:
    """Marks a field whose value comes from the policy (None is a real value for some)."""

    def __repr__(self):
        return "DEFAULT"


DEFAULT = _PolicyDefault()
BUDGET_MODES = ("init", "adapt", "full", "entropy")

# Per-policy defaults of the fields left as None (docs/sampler.md#two-policies: "paper" follows
# arXiv:2510.11170, "seed" is a practitioner variant).
POLICY_DEFAULTS = {
    "paper": dict(temperature=0.6, entropy_top_k=20, theta=2.2, q=99.0, initial_threshold=2.2,
                  num_branches=2, branch_divisor=None, prune_to=None),
    "seed": dict(temperature=0.0, entropy_top_k=None, theta=0.0, q=80.0, initial_threshold=5.0,
                 num_branches=3, branch_divisor=10, prune_to=32),
}


@dataclass
class EagerConfig:
    """How generate() explores paths. Fields left at DEFAULT take the default of `policy`
    (written as paper / seed below) when the config is created.

    Attributes:
        policy: "paper" (EAGer as published: sampling, top-K entropy, one extra path per
            branch, at most M paths per prompt counting finished ones) or "seed" (the
            practitioner variant: greedy, full entropy, up to `num_branches` children per
            branch, pruning to the `prune_to` best paths). Default "paper".
        max_new_tokens: the most tokens one path generates (EOS included). Default 256.
        max_paths_per_prompt: M, the most paths a prompt may hold at once (paper: counting
            finished paths; seed: the survivors of pruning, finished ones included).
            Default 32.
        temperature: sampling temperature, 0 = greedy. Default paper 0.6 / seed 0.0.
        entropy_top_k: K of the top-K renormalised entropy, or None for the full-vocabulary
            entropy. Default paper 20 / seed None.
        theta: the floor of the threshold, in nats. Default paper 2.2 / seed 0.0.
        q: the percentile (0..100) of the prompt's entropy history. Default paper 99 /
            seed 80.
        initial_threshold: the threshold while the history is empty. Default paper 2.2
            (= theta) / seed 5.0.
        num_branches: children of a branching row, the row's own continuation included
            (they take the row's top-n tokens). Default paper 2 (top-1 continues, top-2
            opens one new path) / seed 3.
        branch_divisor: seed policy only: a row that has already branched b times opens
            n = min(num_branches, branch_divisor // (1 + b)) children. Default paper None /
            seed 10.
        prune_to: after each step keep only this many paths per prompt, the ones with the
            highest cumulative log-probability (finished paths compete too); None = no
            pruning. Default paper None / seed 32.
        stop_branching_at: a string (or list of strings) such as "</think>": once a path
            contains it, that path no longer branches. Matched on token ids, as the
            tokenizer encodes the string alone and after a space (needs the tokenizer).
            Default None.
        stop_branching_ids: the same as token-id sequences, for callers without a
            tokenizer. Default None.
        eos_token_id: the id(s) that end a path; None = the tokenizer's, else the model's
            generation_config. Default None.
        seed: key of the counter-based random stream (the same draws on every backend).
            Default 0.
        backend: the ops backend: "auto", "torch", "cpu" or "triton". Default "auto".
        budget: "init" (EAGer-init: one pass), "adapt" (EAGer-adapt: the saved budget goes
            to prompts that hit M, at most 3M extra each, as fresh trees), "full" (full
            EAGer: to prompts whose paths the `verifier` all rejects, at most M extra each)
            or "entropy" (the saved budget split by each prompt's mean entropy). Default
            "init".
        verifier: for budget="full": verifier(prompt_index, path) -> bool (True = right).
            Default None.
        adapt_factor: EAGer-adapt's cap of extra paths per prompt, in units of M. Default 3.
        memory_limit_bytes: the KV cache estimate (max rows x (prompt + max_new_tokens))
            must fit in this many bytes, else generate() raises EagerMemoryError before
            running. None = half the physical memory on CPU, 90% of the free memory on CUDA.
            Default None.
        batch_invariant: a prompt's tree (tokens, branch steps, log-probabilities to the
            last bit) depends only on the prompt, its key, this config and the engine's
            settings, never on the other prompts of the call. On an engine whose
            `batch_invariant` attribute is False (both shipped engines: a row's logits
            move in the last bits with the rest of the batch) each prompt then decodes in
            engine calls of its own, one prompt after the other; on an engine that is
            batch-invariant already nothing changes. Costs throughput: see
            docs/reproducibility.md. Default False.
    """

    policy: str = "paper"
    max_new_tokens: int = 256
    max_paths_per_prompt: int = 32
    temperature: float = DEFAULT
    entropy_top_k: Optional[int] = DEFAULT
    theta: float = DEFAULT
    q: float = DEFAULT
    initial_threshold: float = DEFAULT
    num_branches: int = DEFAULT
    branch_divisor: Optional[int] = DEFAULT
    prune_to: Optional[int] = DEFAULT
    stop_branching_at: Union[str, Sequence[str], None] = None
    stop_branching_ids: Optional[Sequence[Sequence[int]]] = None
    eos_token_id: Union[int, Sequence[int], None] = None
    seed: int = 0
    backend: str = "auto"
    budget: str = "init"
    verifier: Optional[Callable] = field(default=None, repr=False)
    adapt_factor: int = 3
    memory_limit_bytes: Optional[int] = None
    batch_invariant: bool = False

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"policy: expected one of {POLICIES}, got {self.policy!r}")
        for name, value in POLICY_DEFAULTS[self.policy].items():
            if getattr(self, name) is DEFAULT:
                setattr(self, name, value)
        self.validate()

    @classmethod
    def paper(cls, **overrides) -> "EagerConfig":
        """EAGer as published (T = 0.6, top-20 entropy, theta 2.2, q 99, M = 32)."""
        return cls(policy="paper", **overrides)

    @classmethod
    def seed_policy(cls, **overrides) -> "EagerConfig":
        """The practitioner variant (greedy, full entropy, q 80, initial 5.0, prune to 32)."""
        return cls(policy="seed", **overrides)

    def replace(self, **changes) -> "EagerConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def positive_int(name, value, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"{name}: expected a positive int, got {value!r}")

        positive_int("max_new_tokens", self.max_new_tokens)
        positive_int("max_paths_per_prompt", self.max_paths_per_prompt)
        positive_int("num_branches", self.num_branches)
        positive_int("entropy_top_k", self.entropy_top_k, allow_none=True)
        positive_int("prune_to", self.prune_to, allow_none=True)
        positive_int("branch_divisor", self.branch_divisor, allow_none=True)
        positive_int("adapt_factor", self.adapt_factor)
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ConfigError("temperature", f"temperature: expected a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.q, (int, float)) and 0 <= self.q <= 100):
            raise ConfigError("q", f"q: expected a percentile in [0, 100], got {self.q!r}")
        if self.budget not in BUDGET_MODES:
            raise ConfigError("budget", f"budget: expected one of {BUDGET_MODES}, got {self.budget!r}")
        if self.budget == "full" and self.verifier is None:
            raise ConfigError("verifier", "budget='full' needs verifier=callable(prompt_index, path) -> bool")
        if not isinstance(self.batch_invariant, bool):
            raise ConfigError("batch_invariant",
                              f"batch_invariant: expected True or False, got {self.batch_invariant!r}")
        if self.num_branches > 64:
            raise ConfigError("num_branches", "num_branches: at most 64 (the width of the fused top-k)")

    @property
    def candidates_k(self) -> int:
        """The k of eager_step's candidates: enough for every child of a branch."""
        return max(2, self.num_branches)


@dataclass
class Path:
    """One explored path (generated tokens only)."""

    token_ids: list
    logprob: float  # cumulative log-probability (raw model distribution, T = 1)
    entropies: list  # the entropy (as configured) of the distribution each token came from
    branch_steps: list  # steps (0-based token positions) where this path's lineage branched
    finished: str  # "eos" or "length"
    prompt_index: int
    stage: str = "init"  # the budget stage that generated it
    text: Optional[str] = None
    # per token, as the loop saw it: the branch threshold in force at that step (the row
    # branched where its entropy exceeded it, while the prompt had room) and the token's
    # log-probability (raw model distribution, T = 1; they add up to `logprob`)
    thresholds: list = field(default_factory=list)
    token_logprobs: list = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def score(self) -> float:
        """The answer criterion: cumulative log-probability per generated token."""
        return self.logprob / max(1, len(self.token_ids))


@dataclass
class PromptResult:
    paths: list
    answer: Optional[Path]
    branch_events: int = 0  # rows of this prompt that opened new paths (all stages)

    @property
    def mean_entropy(self) -> float:
        values = [e for p in self.paths for e in p.entropies]
        return sum(values) / len(values) if values else 0.0


@dataclass
class Metrics:
    """Counters of one generate() call (all stages together)."""

    tokens_generated: int = 0  # tokens appended to any path (prompt and padding excluded)
    forward_passes: int = 0  # model forwards (prefill included)
    branch_events: int = 0  # rows that opened new paths
    paths_per_prompt: list = field(default_factory=list)  # paths returned per prompt
    max_active_per_prompt: list = field(default_factory=list)  # peak rows a prompt held
    decode_rows: int = 0  # sum over decode forwards of the rows they ran
    steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stages: list = field(default_factory=list)  # budget stages run

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["total_s"] = self.total_s
        return d


@dataclass
class EagerOutput:
    results: list  # one PromptResult per prompt
    metrics: Metrics
    config: EagerConfig = field(repr=False, default=None)
    prompt_ids: Optional[list] = field(repr=False, default=None)  # each prompt's token ids
    tokenizer: object = field(repr=False, default=None)  # the one generate() used, if any

    def to_html(self, path=None, *, title: Optional[str] = None) -> str:
        """The tree of every prompt as one self-contained HTML page (eager_kernels.viz.to_html):
        tokens coloured by entropy, branch points, thresholds, the answer path. Written to
        `path` when given; the page is returned either way."""
        from ..viz import to_html

        return to_html(self, path, title=title)

    def plot(self, path, **kwargs):
        """Entropy along each path against position, branch points and the threshold, one
        panel per prompt, as an image file (eager_kernels.viz.plot_entropy; matplotlib)."""
        from ..viz import plot_entropy

        return plot_entropy(self, path, **kwargs)
