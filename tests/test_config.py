import json

import pytest

from openllm.config import Config, ConfigError, ModelConfig, apply_overrides, load_config, parse_overrides, preset_names


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


@pytest.mark.parametrize(
    "model, message",
    [
        ({"d_model": 100, "n_heads": 3}, "model.d_model (100) is not divisible by model.n_heads (3)"),
        ({"n_heads": 8, "n_kv_heads": 3}, "model.n_kv_heads (3) must divide model.n_heads (8)"),
        ({"n_layers": 0}, "model.n_layers must be a positive integer, got 0"),
        ({"vocab_size": -5}, "model.vocab_size must be a positive integer, got -5"),
        ({"d_model": 64.5}, "model.d_model must be a positive integer, got 64.5"),
        ({"max_seq_len": 0}, "model.max_seq_len must be a positive integer, got 0"),
    ],
)
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


@pytest.mark.parametrize(
    "train, message",
    [
        ({"lr": 0}, "train.lr must be a positive number, got 0"),
        ({"lr": -1e-3}, "train.lr must be a positive number"),
        ({"max_steps": 1.5}, "train.max_steps must be a positive integer, got 1.5"),
        ({"schedule": "linear"}, "train.schedule must be one of cosine, wsd, constant"),
        ({"seq_len": 4096}, "train.seq_len (4096) exceeds model.max_seq_len (1024)"),
    ],
)
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


# --- overrides (--set section.key=value) -------------------------------------------------------------------


def test_parse_overrides_types_values_by_field():
    got = parse_overrides(
        [
            "train.lr=1",
            "train.schedule=wsd",
            "model.n_kv_heads=null",
            "model.tie_embeddings=false",
            'train.precision="bf16"',
            "model.n_layers=2",
            "model.n_layers=3",
            "data.val_fraction=0.05",
        ]
    )
    assert got == {
        "train": {"lr": 1.0, "schedule": "wsd", "precision": "bf16"},
        "model": {"n_kv_heads": None, "tie_embeddings": False, "n_layers": 3},
        "data": {"val_fraction": 0.05},
    }
    assert isinstance(got["train"]["lr"], float) and isinstance(got["model"]["n_layers"], int)
    assert parse_overrides([]) == {}


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lrr=1e-3", "config override 'train.lrr=1e-3': unknown key train.lrr (did you mean train.lr?)"),
        ("lr=1e-3", "unknown key lr (did you mean train.lr?)"),
        ("model.lr=1e-3", "unknown key model.lr (did you mean train.lr?)"),
        ("model.n_head=4", "unknown key model.n_head (did you mean model.n_heads?)"),
        ("trian.max_steps=5", "unknown key trian.max_steps (did you mean train.max_steps?)"),
        (
            "train.learning_rate=1e-3",
            "unknown key train.learning_rate (train keys: micro_batch_size, grad_accum_steps,",
        ),
        ("x.y=1", "unknown key x.y (sections: model, train, data; e.g. train.lr)"),
    ],
)
def test_bad_override_key_names_the_nearest(item, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides([item])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr=abc", "config override 'train.lr=abc': train.lr takes a number, got 'abc'"),
        ("model.n_layers=2.5", "model.n_layers takes an integer, got '2.5'"),
        ("model.n_layers=true", "model.n_layers takes an integer, got 'true'"),
        ("model.n_layers=", "model.n_layers takes an integer, got ''"),
        ("train.seq_len=long", "train.seq_len takes an integer or null, got 'long'"),
        ("model.tie_embeddings=yes", "model.tie_embeddings takes true or false, got 'yes'"),
        ("train.schedule=1", "train.schedule takes text, got '1'"),
        ("train.lr", "config override 'train.lr': expected SECTION.KEY=VALUE, e.g. train.lr=3e-4"),
    ],
)
def test_bad_override_value_type(item, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides([item])
    assert str(e.value) == message or str(e.value).endswith(message)


def test_apply_overrides_validates_the_result():
    cfg = load_config("tiny")
    assert apply_overrides(cfg, []) is cfg and apply_overrides(cfg, None) is cfg
    small = apply_overrides(cfg, ["model.n_layers=2", "train.lr=1e-3"])
    assert (small.model.n_layers, small.train.lr, small.name) == (2, 1e-3, "tiny")
    assert cfg.model.n_layers != 2  # the original is left alone
    with pytest.raises(ConfigError, match=r"^train.lr must be a positive number, got 0.0$"):
        apply_overrides(cfg, ["train.lr=0"])
    with pytest.raises(ConfigError, match=r"model.d_model \(192\) is not divisible by model.n_heads \(5\)"):
        apply_overrides(cfg, ["model.n_heads=5"])
    assert load_config(small) is small  # a Config passes through load_config (quickstart --set)


def test_every_setting_is_described_once_and_errors_name_their_setting():
    from openllm.config import override_keys, setting, settings

    assert [s.key for s in settings()] == override_keys()
    assert all(s.label and s.type in ("int", "float", "bool", "str") for s in settings())
    assert setting("train.optimizer").choices == ("adamw", "muon")  # what validate accepts is what a form offers
    cfg = load_config("tiny")
    assert (cfg.seq_len, cfg.replace(train={"seq_len": None}).seq_len) == (128, cfg.model.max_seq_len)
    with pytest.raises(ConfigError) as e:
        cfg.replace(train={"lr": 0})
    assert (e.value.key, e.value.reason) == ("train.lr", "must be greater than 0, got 0")
    with pytest.raises(ConfigError, match="model.vocab_size .300. is too small to train a tokenizer.*at least 324"):
        cfg.replace(model={"vocab_size": 300}).validate(new_tokenizer=True)


# --- absurd values are refused before anything is built (issue 24) -----------------------------------------


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.seed=18446744073709551616", "train.seed"),  # 2^64: torch and numpy take 64-bit seeds
        ("model.n_layers=2000000", "model.n_layers"),
        ("model.d_model=1000000000000000000000000000001", "model.d_model"),
        ("model.vocab_size=4000000000000", "model.vocab_size"),
        ("model.max_seq_len=1000000000000", "model.max_seq_len"),
        ("train.grad_accum_steps=100000000000000000000", "train.grad_accum_steps"),  # past int64: OverflowError
    ],
)
def test_absurd_sizes_are_refused_by_validation(item, key):
    import time

    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_config("tiny"), [item])
    assert info.value.key == key
    assert time.monotonic() - start < 5  # refused arithmetically, not after building a model


def test_parameter_ceiling_is_arithmetic():
    from openllm.config import parameter_count
    from openllm.model import param_report

    for name in preset_names():
        m = load_config(name).model
        assert parameter_count(m) == param_report(m)["params"]
    untied = apply_overrides(load_config("tiny"), ["model.tie_embeddings=false", "model.n_kv_heads=2"]).model
    assert parameter_count(untied) == param_report(untied)["params"]
    with pytest.raises(ConfigError, match="parameters"):
        apply_overrides(load_config("tiny"), ["model.d_model=65536", "model.n_heads=64", "model.n_layers=1000"])


@pytest.mark.parametrize(
    "text",
    ["9" * 5000, "[" * 100000 + "]" * 100000, '{"a": ' * 50000 + "1" + "}" * 50000, "1e999999"],
)
def test_override_values_json_cannot_parse_are_refused(text):
    with pytest.raises(ConfigError, match="train.lr"):
        parse_overrides([f"train.lr={text}"])


def test_deeply_nested_config_file_is_refused(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('{"model": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ConfigError, match="deep.json"):
        load_config(p)
    p.write_text('{"train": {"seed": ' + "7" * 5000 + "}}")
    with pytest.raises(ConfigError, match="deep.json"):
        load_config(p)


# --- recipes (issue 25): the speedrun's recipe is the presets' default; one switch restores the classic one ---


@pytest.mark.parametrize("name", ["small", "medium", "large"])
def test_gpu_presets_train_with_the_speedrun_recipe(name):
    cfg = load_config(name)
    t, m = cfg.train, cfg.model
    assert (t.recipe, t.optimizer, t.schedule, t.decay_fraction, t.min_lr) == ("speedrun", "muon", "wsd", 0.4, 0.0)
    assert (m.tie_embeddings, m.zero_init_proj) == (False, True)
    assert t.check_every == 5 and t.compile is None  # compile unset: on CUDA, off on CPU


@pytest.mark.parametrize("name", ["small", "medium", "large"])
def test_one_switch_restores_the_classic_recipe_and_its_learning_rate(name):
    cfg = load_config(name)
    classic = apply_overrides(cfg, ["train.recipe=classic"])
    t, m = classic.train, classic.model
    assert (t.optimizer, t.schedule, t.min_lr, m.tie_embeddings, m.zero_init_proj) == (
        "adamw",
        "cosine",
        None,
        True,
        False,
    )
    assert t.lr == pytest.approx(cfg.train.lr / 3)  # AdamW's rate over every parameter, as before the recipe
    back = apply_overrides(classic, ["train.recipe=speedrun"])
    assert back.to_dict() == cfg.to_dict()
    # settings given beside the switch win, whichever section comes first
    mixed = cfg.replace(model={"tie_embeddings": False}, train={"recipe": "classic", "lr": 1e-3})
    assert (mixed.train.optimizer, mixed.train.lr, mixed.model.tie_embeddings) == ("adamw", 1e-3, False)


def test_a_config_file_naming_a_recipe_gets_what_the_recipe_sets(tmp_path):
    path = tmp_path / "c.json"
    model = {"d_model": 64, "n_layers": 2, "n_heads": 2}
    path.write_text(json.dumps({"model": model, "train": {"recipe": "speedrun"}}))
    cfg = load_config(path)
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.model.tie_embeddings) == ("muon", "wsd", False)
    assert cfg.train.lr == pytest.approx(3 * 3e-4)
    plain = Config()  # no recipe named: the dataclass defaults, which are the classic recipe's
    assert (plain.train.recipe, plain.train.optimizer, plain.model.tie_embeddings) == ("classic", "adamw", True)
    with pytest.raises(ConfigError, match="train.recipe"):
        apply_overrides(plain, ["train.recipe=fastest"])
