"""The private names of Lightning that ssal.lightning_adapter uses exist on the installed
Lightning, with the signatures the adapter calls them with. A Lightning upgrade that renames or
changes one fails here, not silently in a run."""

import inspect

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

from ssal.lightning_adapter import PRIVATE_NAMES, attached_trainer, bar_settings

METHODS = {  # the parameters each private method is called with, after self
    "_should_skip_saving_checkpoint": ["trainer"],
    "_should_save_on_train_epoch_end": ["trainer"],
    "_monitor_candidates": ["trainer"],
    "_save_last_checkpoint": ["trainer", "monitor_candidates"],
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_checkpoint_methods_keep_their_signatures(name):
    method = getattr(ModelCheckpoint, name)
    assert callable(method)
    assert list(inspect.signature(method).parameters)[1:] == METHODS[name]


def test_every_private_name_is_checked():
    methods = set(PRIVATE_NAMES[ModelCheckpoint])
    assert methods == set(METHODS)


def test_bar_settings_make_the_same_bar_again():
    tqdm = TQDMProgressBar(refresh_rate=7, process_position=2, leave=True)
    assert TQDMProgressBar(**bar_settings(tqdm)).__dict__.keys() == tqdm.__dict__.keys()
    assert bar_settings(tqdm) == {"refresh_rate": 7, "process_position": 2, "leave": True}
    rich = RichProgressBar(refresh_rate=3, leave=True, console_kwargs={"width": 80})
    again = RichProgressBar(**bar_settings(rich))
    assert bar_settings(again) == bar_settings(rich)
    assert bar_settings(rich)["leave"] is True and bar_settings(rich)["console_kwargs"] == {
        "width": 80
    }
    # the attributes are the constructor's own arguments, not left-overs of an older release
    for cls in (TQDMProgressBar, RichProgressBar):
        params = inspect.signature(cls).parameters
        assert set(bar_settings(cls())) <= set(params)


def test_attached_trainer_is_none_until_a_trainer_holds_the_module():
    module = L.LightningModule()
    assert attached_trainer(module) is None
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False)
    module.trainer = trainer
    assert attached_trainer(module) is trainer
