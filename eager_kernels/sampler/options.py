"""The EAGer settings as options: the one place that says how an EagerConfig field appears
to users (its flag and help text); its type, default and choices come from EagerConfig
and its constants.

Every command-line parser (generate, demo, serve, eval, bench) adds its EAGer options with
add_config_arguments and turns the parsed values back into EagerConfig keyword arguments
with config_kwargs; the server's request model and the evaluation's EvalConfig take their
defaults and choices from `default` and OPTIONS.

    p = argparse.ArgumentParser()
    add_config_arguments(p, ["policy", "max_paths_per_prompt", "temperature"])
    cfg = EagerConfig(**config_kwargs(p.parse_args(["--max-paths", "8"])))
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Iterable, Optional

from ..kernels.checks import BACKENDS
from .config import BUDGET_MODES, DEFAULT, POLICIES, POLICY_DEFAULTS, EagerConfig

# The budget modes an option or a request can ask for: "full" needs a verifier callable,
# which neither a flag nor a JSON body can give.
OPTION_BUDGET_MODES = tuple(m for m in BUDGET_MODES if m != "full")


@dataclass(frozen=True)
class Option:
    """How one EagerConfig field is offered to users."""

    field: str  # the EagerConfig field
    flag: str  # the command-line flag (its argparse dest: the flag without "--", "_" for "-")
    help: str  # what it does; add_config_arguments adds the default
    choices: Optional[tuple] = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


OPTIONS = {o.field: o for o in (
    Option("policy", "--policy", "the EAGer policy: paper (as published: sampling, top-20 entropy) or seed "
           "(greedy, full entropy, pruning)", POLICIES),
    Option("max_new_tokens", "--max-new-tokens", "the most tokens one path generates"),
    Option("max_paths_per_prompt", "--max-paths", "M, the most paths per prompt"),
    Option("temperature", "--temperature", "sampling temperature, 0 = greedy"),
    Option("theta", "--theta", "the floor of the branch threshold, in nats"),
    Option("q", "--q", "the percentile (0..100) of the prompt's entropy history that sets the threshold"),
    Option("seed", "--seed", "the key of the random stream"),
    Option("backend", "--backend", "the ops backend (auto: the fastest that runs here)", BACKENDS),
    Option("budget", "--budget", "init: one pass; adapt: the saved budget to the prompts that hit M; entropy: "
           "split by each prompt's mean entropy", OPTION_BUDGET_MODES),
    Option("stop_branching_at", "--stop-branching-at", 'a path that contains this string branches no more '
           '(e.g. "</think>")'),
    Option("batch_invariant", "--batch-invariant", "each prompt's paths depend only on it, never on the other "
           "prompts of the call (each prompt decodes in engine calls of its own; slower with several prompts, "
           "see docs/reproducibility.md)"),
)}

_FIELDS = {f.name: f for f in fields(EagerConfig)}


def default(field: str, policy: Optional[str] = None):
    """EagerConfig's default of `field`; for a field the policy sets, that of `policy`
    (default: EagerConfig's default policy)."""
    value = _FIELDS[field].default
    if value is MISSING:
        value = _FIELDS[field].default_factory()
    if value is DEFAULT:
        value = POLICY_DEFAULTS[policy or default("policy")][field]
    return value


def _type(field: str):
    """The argparse type of `field`: its annotation, Optional and Union unwrapped (the
    first member: str for a string or a list of strings)."""
    t = typing.get_type_hints(EagerConfig)[field]
    while typing.get_origin(t) is typing.Union:
        t = typing.get_args(t)[0]
    return t


def _help_text(opt: Option, value, own_default: bool) -> str:
    """The option's help with its default (none said for a switch or a None default)."""
    if _FIELDS[opt.field].default is DEFAULT and not own_default:
        per = ", ".join(f"{p} {POLICY_DEFAULTS[p][opt.field]}" for p in POLICIES)
        return f"{opt.help} (default: the policy's, {per})"
    if value is None or isinstance(value, bool):
        return opt.help
    return f"{opt.help} (default {value})"


def add_config_arguments(parser, names: Iterable[str], *, defaults: Optional[dict] = None,
                         help: Optional[dict] = None) -> None:
    """Add the options of the EagerConfig fields `names` to `parser` (an ArgumentParser or
    an argument group). defaults: a command's own default of a field (None: leave it to
    EagerConfig, the policy's where the policy sets it); help: a command's own help text of
    a field, used as given. A bool field is a switch: --flag when its default is False,
    --no-flag when it is True, both when it is None (unset)."""
    defaults, help = defaults or {}, help or {}
    for name in names:
        opt = OPTIONS[name]
        value = defaults.get(name, default(name) if _FIELDS[name].default is not DEFAULT else None)
        text = help.get(name) or _help_text(opt, value, name in defaults)
        if _type(name) is bool:
            _add_switch(parser, opt, value, text)
        else:
            parser.add_argument(opt.flag, dest=opt.dest, type=_type(name), choices=opt.choices, default=value,
                                help=text)


def _add_switch(parser, opt: Option, value, text: str) -> None:
    if value is None:
        parser.add_argument(opt.flag, dest=opt.dest, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif value:
        parser.add_argument("--no-" + opt.flag[2:], dest=opt.dest, action="store_false", help=text)
    else:
        parser.add_argument(opt.flag, dest=opt.dest, action="store_true", help=text)


def config_kwargs(args, names: Optional[Iterable[str]] = None) -> dict:
    """The EagerConfig keyword arguments of a parsed namespace: every option of `names`
    (default: all of OPTIONS) that the namespace holds with a value other than None or ""
    (those mean EagerConfig's default, the policy's where the policy sets it)."""
    out = {}
    for name in OPTIONS if names is None else names:
        value = getattr(args, OPTIONS[name].dest, None)
        if value is not None and value != "":  # --stop-branching-at "": none
            out[name] = value
    return out
