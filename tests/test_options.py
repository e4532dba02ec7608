"""The EAGer settings defined once (sampler/options.py): every parser, the server's request
model and EvalConfig take their names, defaults and choices from it; EagerConfig's errors
name the field at fault (errors.ConfigError)."""
import argparse

import pytest

from eager_kernels.engines.select import ENGINES
from eager_kernels.errors import ConfigError
from eager_kernels.kernels.checks import BACKENDS
from eager_kernels.sampler import EagerConfig
from eager_kernels.sampler.config import POLICIES, POLICY_DEFAULTS
from eager_kernels.sampler.options import OPTIONS, add_config_arguments, config_kwargs, default


def _parser(names, **kw):
    p = argparse.ArgumentParser()
    add_config_arguments(p, names, **kw)
    return p


def test_defaults_come_from_eager_config():
    assert default("max_new_tokens") == EagerConfig().max_new_tokens
    assert default("temperature") == POLICY_DEFAULTS["paper"]["temperature"]
    assert default("q", "seed") == POLICY_DEFAULTS["seed"]["q"]
    args = _parser(list(OPTIONS)).parse_args([])
    # left alone, every option gives EagerConfig's own defaults
    assert EagerConfig(**config_kwargs(args)) == EagerConfig()


def test_round_trip_and_command_defaults():
    p = _parser(["policy", "max_new_tokens", "max_paths_per_prompt", "temperature", "budget", "stop_branching_at",
                 "batch_invariant"], defaults=dict(policy="seed", max_new_tokens=64))
    args = p.parse_args(["--max-paths", "4", "--temperature", "0.5", "--budget", "adapt", "--batch-invariant"])
    cfg = EagerConfig(**config_kwargs(args))
    assert (cfg.policy, cfg.max_new_tokens, cfg.max_paths_per_prompt, cfg.temperature, cfg.budget,
            cfg.batch_invariant) == ("seed", 64, 4, 0.5, "adapt", True)
    assert cfg.theta == POLICY_DEFAULTS["seed"]["theta"]  # not an option here: the policy's
    assert EagerConfig(**config_kwargs(p.parse_args(["--stop-branching-at", ""]))).stop_branching_at is None
    with pytest.raises(SystemExit):
        p.parse_args(["--budget", "full"])  # needs a verifier: not an option


def test_switches():
    assert _parser(["batch_invariant"]).parse_args(["--batch-invariant"]).batch_invariant is True
    on = _parser(["batch_invariant"], defaults=dict(batch_invariant=True))
    assert on.parse_args([]).batch_invariant is True and on.parse_args(["--no-batch-invariant"]).batch_invariant is False
    unset = _parser(["batch_invariant"], defaults=dict(batch_invariant=None))
    assert unset.parse_args([]).batch_invariant is None


def _choices(parser, flag):
    return next(a.choices for a in parser._actions if flag in a.option_strings)


def test_every_parser_shares_the_choices():
    from eager_kernels.__main__ import build_parser as main_parser
    from eager_kernels.evaluation import build_parser as eval_parser
    from eager_kernels.serve import build_parser as serve_parser

    sub = next(a for a in main_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for p in (sub["generate"], sub["demo"], eval_parser(), serve_parser()):
        assert tuple(_choices(p, "--engine")) == ENGINES
        assert tuple(_choices(p, "--backend")) == BACKENDS
    for p in (sub["generate"], serve_parser()):
        assert tuple(_choices(p, "--policy")) == POLICIES


def test_eval_and_server_defaults():
    from eager_kernels.evaluation import EvalConfig
    from eager_kernels.serve import Settings

    e = EvalConfig()
    assert (e.temperature, e.theta, e.q) == tuple(default(f, "paper") for f in ("temperature", "theta", "q"))
    assert (e.seed, e.backend, e.batch_invariant) == (default("seed"), default("backend"), default("batch_invariant"))
    s = Settings()
    assert (s.policy, s.backend) == (default("policy"), default("backend"))


@pytest.mark.parametrize("kw, field, message", [
    (dict(max_paths_per_prompt=0), "max_paths_per_prompt", "max_paths_per_prompt: expected a positive int, got 0"),
    (dict(q=150), "q", "q: expected a percentile in [0, 100], got 150"),
    (dict(policy="greedy"), "policy", "policy: expected one of ('paper', 'seed'), got 'greedy'"),
    (dict(budget="full"), "verifier", "budget='full' needs verifier=callable(prompt_index, path) -> bool"),
    (dict(num_branches=65), "num_branches", "num_branches: at most 64 (the width of the fused top-k)"),
])
def test_config_error_names_its_field(kw, field, message):
    with pytest.raises(ConfigError) as exc:
        EagerConfig(**kw)
    assert exc.value.field == field and str(exc.value) == message
    assert isinstance(exc.value, ValueError)


def test_server_param_from_the_field(monkeypatch):
    """An error EagerConfig raises for a request names the request's own field as `param`."""
    from eager_kernels.serve import protocol

    class Tok:
        def __call__(self, text):
            return {"input_ids": [1, 2]}

    def refuse(field):
        def make(**kw):
            raise ConfigError(field, f"{field}: refused")
        return make

    body = {"prompt": "hi", "max_tokens": 2, "seed": 1}
    for field, param in (("max_paths_per_prompt", "eager.max_paths"), ("initial_threshold", "eager.theta"),
                         ("q", "eager.q"), ("max_new_tokens", "max_tokens"), ("prune_to", "eager.prune_to")):
        monkeypatch.setattr(protocol, "EagerConfig", refuse(field))
        with pytest.raises(protocol.APIError) as exc:
            protocol.parse(body, "completion", Tok(), protocol.Settings())
        assert exc.value.param == param and exc.value.message == f"eager: {field}: refused"
