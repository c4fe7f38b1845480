"""gigamil.strategy: the training strategy a configuration trains, its contradictions, and the
one spelling of a training (rule train_fold's params, last.pt's resume check)."""

import pytest

from gigamil.config import validate_config
from gigamil.errors import ConfigError
from gigamil.settings import EMConfig, ModelConfig, TrainingConfig
from gigamil.strategy import resolve_strategy, training_signature


def test_strategy_and_the_older_encoder_keys() -> None:
    assert TrainingConfig().strategy == "end_to_end" and TrainingConfig().em == EMConfig()
    assert resolve_strategy({}, {}) == ("end_to_end", ModelConfig())
    # the older spellings of frozen keep working, with or without the strategy
    for model in ({"trainable_blocks": 0}, {"freeze_encoder": True}):
        for strategy in ("end_to_end", "frozen"):
            name, m = resolve_strategy(model, {"strategy": strategy})
            assert name == "frozen" and m.trainable_blocks == 0
    name, m = resolve_strategy({}, {"strategy": "frozen"})
    assert name == "frozen" and m.trainable_blocks == 0  # frozen freezes the whole encoder
    assert resolve_strategy({"trainable_blocks": 2}, {})[1].trainable_blocks == 2
    name, m = resolve_strategy({"trainable_blocks": 2}, {"strategy": "em"})
    assert name == "em" and m.trainable_blocks == 2  # em may fine-tune the top blocks only
    assert TrainingConfig.from_dict({"em": {"rounds": 2}}).em.rounds == 2


@pytest.mark.parametrize(
    ("model", "strategy", "message"),
    [
        ({"trainable_blocks": 2}, "frozen", "strategy: frozen contradicts model.trainable_blocks"),
        ({"trainable_blocks": 0}, "em", "em fine-tunes the encoder but model.trainable_blocks: 0"),
        ({"freeze_encoder": True}, "em", "but model.freeze_encoder: true freezes it"),
        ({"encoder": "identity"}, "em", "model.encoder: identity has none"),
        ({"freeze_encoder": True, "trainable_blocks": 1}, "end_to_end", "contradicts"),
    ],
)
def test_contradictory_strategies_are_config_errors(model, strategy, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_strategy(model, {"strategy": strategy})
    cfg = {"cohorts": {"a": {"sheet": "a.csv"}}, "model": model, "training": {"strategy": strategy}}
    with pytest.raises(ConfigError, match=message):  # validation says so before any job runs
        validate_config(cfg)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"warmup_epochs": 2, "schedule": "onecycle"}, "onecycle warms up itself"),
        ({"warmup_epochs": 5, "epochs": 5}, r"warmup_epochs \(5\) must be below training.epochs"),
        ({"warmup_epochs": 1, "strategy": "em"}, "strategy em trains in rounds of its own"),
    ],
)
def test_warmup_epochs_contradictions_are_config_errors(training, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_strategy({}, training)
    assert resolve_strategy({}, {"warmup_epochs": 2})[0] == "end_to_end"


def test_recalibrate_every_under_em_is_a_config_error() -> None:
    """EMTrainer calibrates the encoder's statistics once, before round 1: recalibrate_every was
    accepted under em and changed nothing (the same model.pt, yet a retraining param)."""
    training = {"strategy": "em", "recalibrate_every": 1}
    with pytest.raises(ConfigError, match="strategy em trains in rounds of its own"):
        resolve_strategy({}, training)
    cfg = {"cohorts": {"a": {"sheet": "a.csv"}}, "training": training}
    with pytest.raises(ConfigError, match="set recalibrate_every: 0"):  # before any job runs
        validate_config(cfg)
    for strategy in ("end_to_end", "frozen"):
        assert resolve_strategy({}, {**training, "strategy": strategy})[0] == strategy


def test_bag_mixing_under_batch_statistics_is_a_config_error() -> None:
    """ConcatBag chunks each part on its own: under batchnorm: train a mixed-in part of one
    patch stopped training with torch's 'Expected more than 1 value per channel'."""
    with pytest.raises(ConfigError, match="bag_mixing needs model.batchnorm frozen or groupnorm"):
        resolve_strategy({"batchnorm": "train"}, {"bag_mixing": 0.5})
    assert resolve_strategy({"batchnorm": "frozen"}, {"bag_mixing": 0.5})[0] == "end_to_end"
    assert resolve_strategy({"batchnorm": "train"}, {"bag_mixing": 0})[0] == "end_to_end"
    # no encoder runs on the mixed bags (EM's head rounds): allowed
    training = {"bag_mixing": 0.5, "strategy": "em"}
    assert resolve_strategy({"batchnorm": "train", "weights": "x.pt"}, training)[0] == "em"


@pytest.mark.parametrize(
    "model, training",
    [
        ({"batchnorm": "train"}, {"strategy": "frozen"}),
        ({"batchnorm": "train", "weights": "x.pt", "feature_cache": True}, {"strategy": "frozen"}),
        ({"batchnorm": "train", "trainable_blocks": 0}, {}),
        ({"batchnorm": "train", "freeze_encoder": True}, {}),
    ],
)
def test_bag_mixing_under_batch_statistics_is_refused_for_a_frozen_encoder(model, training) -> None:
    """A frozen encoder under batchnorm: train reads the patch stores (batch statistics are never
    cached), so it encodes each mixed-in part on its own: validated, then a part of one 8-px
    patch stopped training with torch's 'Expected more than 1 value per channel'."""
    cfg = {"cohorts": {"a": {"sheet": "a.csv"}}, "model": model}
    cfg["training"] = {**training, "bag_mixing": 0.5}
    with pytest.raises(ConfigError, match="under strategy frozen the encoder encodes each"):
        validate_config(cfg)
    assert validate_config({**cfg, "training": training})["training"]["bag_mixing"] == 0


def test_training_signature_spells_a_frozen_encoder_one_way() -> None:
    model = {"encoder": "resnet18", "weights": None, "freeze_encoder": True, "batchnorm": "train"}
    training = TrainingConfig.from_dict({"max_instances_per_forward_pass": 64})
    spelt, sig = training_signature(model, training, frozen=True, cached=True)
    assert spelt["freeze_encoder"] is False and spelt["trainable_blocks"] == 0
    assert model["freeze_encoder"] is True  # the caller's dict is left as it was
    assert sig["strategy"] == "frozen" and "augment" not in sig  # not applied to features
    assert sig["max_instances_per_forward_pass"] == 64  # batch statistics: chunks matter
    spelt, sig = training_signature({**model, "batchnorm": "frozen"}, training, False, False)
    assert spelt["freeze_encoder"] is True and "trainable_blocks" not in spelt
    assert "strategy" not in sig and sig["augment"] == training.augment.to_dict()
    assert "max_instances_per_forward_pass" not in sig


def test_a_frozen_encoder_may_be_spelt_with_both_older_keys() -> None:
    model = {"freeze_encoder": True, "trainable_blocks": 0}
    name, m = resolve_strategy(model, {})
    assert name == "frozen" and m.trainable_blocks == 0


def test_weight_averaging_under_em_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="strategy em trains in rounds of its own: set ema_d"):
        resolve_strategy({}, {"strategy": "em", "ema_decay": 0.99})


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"strategy": "frozen"}, "a frozen encoder learns nothing"),
        ({"strategy": "em"}, "em has training.em.encoder_lr"),
    ],
)
@pytest.mark.parametrize("key", [{"encoder_lr": 1e-5}, {"head_first_epochs": 2}])
def test_how_the_encoder_learns_under_another_strategy_is_a_config_error(
    training, message, key
) -> None:
    with pytest.raises(ConfigError, match=f"training.{next(iter(key))}.*{message}"):
        resolve_strategy({}, {**training, **key})
    with pytest.raises(ConfigError, match=next(iter(key))):  # the older spelling of frozen too
        resolve_strategy({"trainable_blocks": 0}, key)
    assert resolve_strategy({}, key)[0] == "end_to_end"


def test_head_first_epochs_must_leave_the_encoder_epochs() -> None:
    with pytest.raises(ConfigError, match=r"head_first_epochs \(4\) must be below.*e.g. to 2"):
        resolve_strategy({}, {"head_first_epochs": 4, "epochs": 4})
