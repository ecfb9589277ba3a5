import pytest

from fedcomp.config import ConfigError, ExperimentConfig, apply_overrides, config_from_dict, dump_config, load_config
from tests.simulated import SIMULATIONS


def test_defaults_are_valid():
    cfg = config_from_dict({})
    assert cfg.model.name == "lenet5_caffe" and cfg.data.dataset == "mnist5k" and cfg.uplink.name == "identity"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"federation": {"bogus": 1}}, "unknown config key 'federation.bogus'"),
        ({"nosuch": {}}, "unknown config key 'nosuch'"),
        ({"federation": {"rounds": "3"}}, "'federation.rounds': expected an integer"),
        ({"federation": {"rounds": 2.5}}, "'federation.rounds': expected an integer"),
        ({"federation": {"rounds": True}}, "'federation.rounds': expected an integer"),
        ({"federation": {"rounds": 0}}, "'federation.rounds': expected an integer >= 1"),
        ({"federation": {"fraction_train": 1.5}}, "'federation.fraction_train'"),
        ({"federation": {"num_clients": 3, "min_train_clients": 4}}, "'federation.min_train_clients'"),
        ({"client": {"lr": -1.0}}, "'client.lr'"),
        ({"client": {"optimizer": "lbfgs"}}, "'client.optimizer': expected one of ['sgd', 'adam']"),
        ({"data": {"alpha": 0}}, "'data.alpha'"),
        ({"data": {"partition": "weird"}}, "'data.partition'"),
        ({"data": {"dataset": "imagenet"}}, "'data.dataset': unknown name 'imagenet'"),
        ({"model": {"name": "gpt"}}, "'model.name': unknown name 'gpt'"),
        ({"uplink": {"name": "zip"}}, "'uplink.name': unknown name 'zip'"),
        ({"uplink": {"name": "identity", "density": 0.1}}, "unknown config key 'uplink.density'"),
        ({"federation": 3}, "'federation': expected a table"),
        ({"simulation": {"num_gpus": -1}}, "'simulation.num_gpus'"),
        ({"faults": {"client_raise_rate": 2}}, "'faults.client_raise_rate'"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert fragment in str(info.value)


def test_int_is_accepted_where_a_float_is_expected():
    assert config_from_dict({"client": {"lr": 1}}).client.lr == 1.0


def test_overrides_use_toml_values():
    data = apply_overrides({}, ["federation.rounds=7", "client.lr=0.5", 'name="x"', "data.partition=dirichlet"])
    assert data == {"federation": {"rounds": 7}, "client": {"lr": 0.5}, "name": "x", "data": {"partition": "dirichlet"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["rounds"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "a"}, ["name.x=1"])


def test_dump_and_load_round_trip(tmp_path):
    cfg = config_from_dict(
        {"name": "rt", "federation": {"rounds": 3}, "data": {"partition": "dirichlet", "alpha": 0.1}}
    )
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert load_config(path, ["federation.rounds=9"]).federation.rounds == 9


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_demo_config_loads():
    cfg = load_config(SIMULATIONS / "demo.toml")
    assert isinstance(cfg, ExperimentConfig) and cfg.federation.num_clients == 10


def test_a_folder_never_shadows_a_packaged_config_and_is_never_read_as_one(tmp_path, monkeypatch):
    """docs/deployment.md runs ``config="deploy"`` from the repository root, where the deploy/ folder is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "mine").mkdir()
    assert load_config("deploy").name == "deploy"  # the packaged config, not the folder
    with pytest.raises(ConfigError, match=r"'mine' is a folder, not a config file.*deploy"):
        load_config("mine")


@pytest.mark.parametrize(
    ("data", "suggestion"),
    [
        ({"uplink": {"name": "srup"}}, "did you mean 'surp'"),
        ({"federation": {"round": 3}}, "did you mean 'rounds'"),
        ({"strategy": {"name": "fedavgm", "server_momentun": 0.5}}, "did you mean 'server_momentum'"),
        ({"strategy": {"name": "fedadma"}}, "did you mean 'fedadam'"),
        ({"model": {"name": "lenet5_cafe"}}, "did you mean 'lenet5_caffe'"),
    ],
)
def test_a_mistyped_name_or_key_gets_a_suggestion(data, suggestion):
    with pytest.raises(ConfigError, match=suggestion):
        config_from_dict(data)


def test_a_mistyped_packaged_config_gets_a_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        load_config("dmeo")
