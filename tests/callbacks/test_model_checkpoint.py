"""lightning_mf's ModelCheckpoint: last.ckpt holds the weights training ended with, also when the step budget is not a
multiple of the checkpoint interval (Lightning's keeps the last interval's)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_mf.callbacks import ModelCheckpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _fit(root: Path, max_steps: int) -> tuple[BoringModel, dict]:
    L.seed_everything(0)
    model = BoringModel()
    callback = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, accelerator="cpu", devices=1,
    )
    trainer.fit(model)
    return model, torch.load(root / "last.ckpt", map_location="cpu", weights_only=False)


def test_last_checkpoint_holds_the_final_weights_when_the_budget_is_not_a_multiple_of_the_interval(tmp_path: Path) -> None:
    model, last = _fit(tmp_path, max_steps=5)
    assert last["global_step"] == 5
    for name, value in model.state_dict().items():
        torch.testing.assert_close(last["state_dict"][name], value, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]  # the interval's checkpoints unchanged


def test_a_budget_on_the_interval_is_saved_once(tmp_path: Path) -> None:
    _, last = _fit(tmp_path, max_steps=6)
    assert last["global_step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"]


def test_save_last_link_is_refused() -> None:
    with pytest.raises(ValueError, match="save_last: link"):
        ModelCheckpoint(save_last="link")


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_keeps_its_final_weights(config: Path) -> None:
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    checkpoints = [c["class_path"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints == ["lightning_mf.callbacks.ModelCheckpoint"], f"{config}: {checkpoints}"
