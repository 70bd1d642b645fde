"""The course's 12 optimizers, simple to complex, and the registry that names them.

The registry is the one list: the plan, the estimator, the CLI choices and the
test tables all read OPTIMIZERS (a coverage test checks it).
"""

from __future__ import annotations

import inspect

from memtrain.errors import ConfigError
from memtrain.optim.adam import Adam, NAdam, RAdam
from memtrain.optim.adaptive import AdaDelta, AdaGrad, RMSProp
from memtrain.optim.base import Optimizer, Slot
from memtrain.optim.lookahead import Lookahead
from memtrain.optim.novograd import NovoGrad
from memtrain.optim.rprop import Rprop
from memtrain.optim.sgd import SGD, Momentum, Nesterov

OPTIMIZERS = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adadelta": AdaDelta,
    "adam": Adam,
    "nadam": NAdam,
    "radam": RAdam,
    "rprop": Rprop,
    "novograd": NovoGrad,
    "lookahead": Lookahead,
}
LOOKAHEAD_DEFAULT_INNER = "adam"  # the Lookahead paper's usual partner


def make_optimizer(name: str, **hyper) -> Optimizer:
    """`make_optimizer("adam", lr=1e-3)`; "lookahead:sgd" wraps SGD; the
    wrapper's own k and alpha are passed as lookahead_k and lookahead_alpha,
    everything else goes to the inner optimizer."""
    key = str(name).strip().lower()
    base, _, inner_name = key.partition(":")
    if base not in OPTIMIZERS:
        raise ConfigError(f"optimizer: unknown {name!r}; expected one of {', '.join(OPTIMIZERS)} "
                         f"(or lookahead:<inner>)")
    if base == "lookahead":
        inner_name = inner_name or LOOKAHEAD_DEFAULT_INNER
        la = {k: hyper.pop(f"lookahead_{k}") for k in ("k", "alpha") if f"lookahead_{k}" in hyper}
        return Lookahead(make_optimizer(inner_name, **hyper), **la)
    if inner_name:
        raise ConfigError(f"optimizer: only lookahead takes an inner optimizer, got {name!r}")
    cls = OPTIMIZERS[base]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown hyper-parameter of {base}; expected one of {', '.join(accepted)}")
    return cls(**hyper)


__all__ = ["OPTIMIZERS", "Optimizer", "Slot", "make_optimizer"]
