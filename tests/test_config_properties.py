"""Property-based: any JSON a user can write as a config, and any --set override, is either a valid Config or a
one-line ConfigError; never another exception, never a config that fails later."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openllm.config import Config, ConfigError, ModelConfig, TrainConfig, apply_overrides, load_config

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
pytestmark = pytest.mark.slow  # a few hundred examples each: seconds, not milliseconds

MODEL_KEYS = list(ModelConfig.__dataclass_fields__)
TRAIN_KEYS = list(TrainConfig.__dataclass_fields__)


def _section(keys):
    return st.dictionaries(st.sampled_from(keys), JSON, max_size=4)


def _check(make):
    try:
        cfg = make()
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, msg
        return
    assert isinstance(cfg, Config)
    Config.from_dict(cfg.to_dict())  # what was accepted stays valid through a save/load round trip
    m, t = cfg.model, cfg.train
    assert m.d_model % m.n_heads == 0 and m.n_heads % (m.n_kv_heads or m.n_heads) == 0
    assert t.lr > 0 and math.isfinite(t.lr) and (t.min_lr is None or t.min_lr <= t.lr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=_section(MODEL_KEYS), train=_section(TRAIN_KEYS), extra=st.dictionaries(st.text(max_size=6), JSON, max_size=2)
)
def test_any_json_config_is_valid_or_one_config_error(model, train, extra):
    _check(lambda: Config.from_dict({"model": model, "train": train, **extra}))


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from([f"model.{k}" for k in MODEL_KEYS] + [f"train.{k}" for k in TRAIN_KEYS]) | st.text(max_size=12),
    value=st.text(max_size=12),
)
def test_any_override_is_valid_or_one_config_error(key, value):
    base = load_config("tiny")
    _check(lambda: apply_overrides(base, [f"{key}={value}"]))
