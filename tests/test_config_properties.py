"""Property-based: any JSON a user can write as a config, and any --set override, is either a valid Config or a
one-line ConfigError; never another exception, never a config that fails later."""

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
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


# --- the app and the CLI follow one rule set (issue 23) --------------------------------------------------------


def _form_value(f):
    """Values of the setting's own type (what a form field or a --set override can carry): nine in ten in a
    range most settings take, so that whole configs are accepted often enough to compare; the rest anywhere."""
    s = f.setting
    if s.choices:
        valid, other = st.sampled_from(s.choices), st.text(max_size=6)
    elif s.type == "bool":
        valid = other = st.booleans()
    elif s.type == "int":
        valid, other = st.integers(324, 5000), st.integers(-3, 400)
    else:
        valid = st.floats(1e-5, 1.0)
        other = st.floats(-1.0, 20.0) | st.sampled_from([0.0, -0.0, 2.0, float("nan"), float("inf")])
    if s.optional:
        valid = valid | st.none()
    return st.integers(0, 9).flatmap(lambda i: other if i == 0 else valid)


def _form_values():
    from openllm.app.schema import TRAIN_FIELDS

    return st.fixed_dictionaries({f.name: _form_value(f) for f in TRAIN_FIELDS})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=_form_values())
def test_the_app_and_the_cli_accept_and_refuse_the_same_configs(values):
    import json

    from openllm.app.forms import CORPUS_EMBEDDED, FormError, parse_train_form
    from openllm.app.schema import TRAIN_FIELDS, field_for_key

    # the app: the Train tab's values, as its Start button sends them
    try:
        app = parse_train_form(
            {**values, "preset": "tiny", "model_size": "tiny", "run_name": "r", "corpus_kind": CORPUS_EMBEDDED}
        ).config
        app_error = None
    except FormError as exc:
        app, app_error = None, exc
    # the CLI: the same settings as --set overrides of the same preset, checked as quickstart checks them (the
    # app also trains the run's tokenizer)
    items = [f"{f.key}={json.dumps(values[f.name])}" for f in TRAIN_FIELDS]
    try:
        cli = apply_overrides(load_config("tiny"), items).validate(new_tokenizer=True)
        cli_error = None
    except ConfigError as exc:
        cli, cli_error = None, exc
    event("accepted" if cli is not None else "refused")
    assert (app is None) == (cli is None), (values, app_error, cli_error)
    if isinstance(app_error, FormError) and isinstance(app_error.__cause__, ConfigError):
        # a rule (not the parsing of a number): the app names the field the config names, with its reason
        f = field_for_key(cli_error.key)
        assert app_error.field == (f.label if f else "Settings")
        assert str(app_error) == (f"{f.label}: {cli_error.reason}" if f else f"Settings: {cli_error}")
    elif app is not None:  # the same config, but for what the app derives from the run's length and names
        a, c = app.to_dict(), cli.to_dict()
        for d in (a, c):
            d.pop("name")
            d["train"].pop("log_every")
        assert a == c
