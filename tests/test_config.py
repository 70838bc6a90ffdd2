import json

import pytest

from openllm.config import Config, ConfigError, ModelConfig, load_config, preset_names


def write(tmp_path, data):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(data))
    return p


def test_presets_load_and_validate():
    assert {"tiny", "small", "medium", "large"} <= set(preset_names())
    for name in ("tiny", "small", "medium", "large"):
        cfg = load_config(name)
        assert cfg.name == name


def test_round_trip(tmp_path):
    cfg = load_config("small")
    p = tmp_path / "c.json"
    cfg.save(p)
    assert load_config(p) == cfg


@pytest.mark.parametrize("model, message", [
    ({"d_model": 100, "n_heads": 3}, "model.d_model (100) is not divisible by model.n_heads (3)"),
    ({"n_heads": 8, "n_kv_heads": 3}, "model.n_kv_heads (3) must divide model.n_heads (8)"),
    ({"n_layers": 0}, "model.n_layers must be a positive integer, got 0"),
    ({"vocab_size": -5}, "model.vocab_size must be a positive integer, got -5"),
    ({"d_model": 64.5}, "model.d_model must be a positive integer, got 64.5"),
    ({"max_seq_len": 0}, "model.max_seq_len must be a positive integer, got 0"),
])
def test_bad_model_fields(tmp_path, model, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"model": model}))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key model.n_head \(did you mean 'n_heads'\?\)"):
        load_config(write(tmp_path, {"model": {"n_head": 8}}))
    with pytest.raises(ConfigError, match=r"unknown key train.learning_rate"):
        load_config(write(tmp_path, {"train": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match=r"unknown key modle \(did you mean 'model'\?\)"):
        load_config(write(tmp_path, {"modle": {}}))


@pytest.mark.parametrize("train, message", [
    ({"lr": 0}, "train.lr must be a positive number, got 0"),
    ({"lr": -1e-3}, "train.lr must be a positive number"),
    ({"max_steps": 1.5}, "train.max_steps must be a positive integer, got 1.5"),
    ({"schedule": "linear"}, "train.schedule must be one of cosine, wsd, constant"),
    ({"seq_len": 4096}, "train.seq_len (4096) exceeds model.max_seq_len (1024)"),
])
def test_bad_train_fields(tmp_path, train, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"train": train}))
    assert message in str(e.value)


def test_not_json_and_missing(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"unknown preset 'tinny' \(did you mean 'tiny'\?\)"):
        load_config("tinny")


def test_replace_validates():
    cfg = load_config("tiny")
    assert cfg.replace(train={"max_steps": 7}).train.max_steps == 7
    with pytest.raises(ConfigError):
        cfg.replace(model={"n_heads": 5})


def test_default_d_ff_and_kv_heads():
    m = ModelConfig(d_model=512, n_heads=8)
    assert m.n_kv_heads == 8 and m.d_ff == 1408
    assert Config().validate()
