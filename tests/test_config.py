"""Config resolution: defaults, user file, profile, and clear errors for bad values."""

from pathlib import Path

import pytest

from auditor.config import ConfigError, config_from_dict, load_config


def test_defaults_and_profiles():
    base, quick, standard = load_config(), load_config(profile="quick"), load_config(profile="standard")
    assert base.train.arch == "mlp" and base.profile == "default"
    assert quick.train.epochs < base.train.epochs and quick.profile == "quick"
    assert standard.train.seeds >= 1 and standard.train.epochs >= base.train.epochs


def test_user_file_refines_the_profile(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 7\n[train]\narch = "resnet18"\nepochs = 20\n')
    cfg = load_config(path, profile="quick")
    assert cfg.seed == 7 and cfg.train.arch == "resnet18" and cfg.train.epochs == 20
    assert cfg.dynamics.el2n_epoch == load_config(profile="quick").dynamics.el2n_epoch


def test_round_trip_through_the_stored_dict():
    cfg = load_config(profile="quick")
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text, message", [
    ("[train]\nepochs = 0\n", "'train.epochs' = 0 is too small"),
    ("[train]\narch = \"vgg\"\n", "'train.arch' = 'vgg' is not allowed; use one of: mlp | resnet18 | small_cnn"),
    ("[train]\nepoch = 3\n", "unknown config key 'train.epoch'"),
    ("[train]\nlr = \"fast\"\n", "'train.lr' must be a number"),
    ("[dynamics]\nrecord = [\"sometimes\"]\n", "'dynamics.record'"),
    ("[dynamics]\nel2n_epoch = 99\n", "after the last epoch"),
    ("[candidates]\nfraction = 1.5\n", "between 0 and 1"),
    ("[detectors]\noutlier_c = 0\n", "'detectors.outlier_c' = 0.0 is too small; it must be >= 0.5"),
    ("[detectors]\ncopy_fdr = 1.0\n", "'detectors.copy_fdr' = 1.0 must be below 1"),
    ("[detectors]\ncopy_fdr = 0\n", "'detectors.copy_fdr' = 0.0 is too small"),
    ("[train\n", "not valid TOML"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("|", r"\|")):
        load_config(path)


def test_unknown_profile_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config(profile="huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")


def test_a_config_stored_before_the_outlier_and_quality_keys_still_loads():
    stored = load_config(profile="quick").to_dict()
    for key in ("outlier_c", "image_quality_c", "copy_fdr"):
        del stored["detectors"][key]
    detectors = config_from_dict(stored).detectors
    assert (detectors.outlier_c, detectors.image_quality_c, detectors.copy_fdr) == (4.0, 5.0, 0.05)
