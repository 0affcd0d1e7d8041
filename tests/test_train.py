"""QLoRA training on the tiny model: learning, adapter format, manifest, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunebook import data, job, models, train
from tunebook.errors import TunebookError

from conftest import write_job


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    card = job.load_job_card(write_job(tmp_path_factory.mktemp("job"), per_label=4))
    kept, _ = data.clean(*data.load_examples(card))
    return card, data.split(kept, card, test_fraction=0.25, val_fraction=0.25)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_training_lowers_validation_loss_and_saves_a_peft_adapter(tiny_job, tiny_model, tmp_path, quantization):
    # nf4 also guards the bitsandbytes CPU repacking bug: the untrained validation pass runs in eval mode
    # right before training, which without the workaround leaves the loss flat.
    card, splits = tiny_job
    splits = {**splits, "val": splits["train"]}  # on the tiny random model only memorisation is measurable
    config = train.TrainConfig(quantization=quantization, max_steps=12, batch_size=8, learning_rate=5e-3, lora_r=8, warmup_ratio=0)
    result = train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", dataset_hash="abc123")
    assert result.val_loss_after < result.val_loss_before - 0.5
    assert result.log_history[0] == {"step": 0, "eval_loss": result.val_loss_before}
    assert [e["step"] for e in result.log_history if "eval_loss" in e][:2] == [0, 3]  # four evaluations over 12 steps
    names = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", train.MANIFEST} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)


def test_manifest_records_lineage(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    config = train.TrainConfig(quantization="none", max_steps=1, batch_size=4)
    train.train_adapter(card, splits, tiny_model, config, tmp_path / "adapter", dataset_hash="abc123")
    manifest = train.read_manifest(tmp_path / "adapter")
    assert manifest["dataset_hash"] == "abc123"
    assert manifest["job"] == card.name and manifest["choices"] == card.label_names
    assert manifest["job_card_sha256"] == job.card_hash(card)
    assert manifest["base_model"] == models.model_identity(tiny_model)
    assert len(manifest["base_model"]["sha256"]) == 64
    assert manifest["config"]["max_steps"] == 1 and manifest["config"]["seed"] == 0
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert manifest["wall_time_s"] > 0 and manifest["peak_memory_mb"] > 0
    assert manifest["train_examples"] == len(splits["train"])
    json.dumps(manifest)


def test_existing_adapter_is_never_overwritten(tiny_job, tiny_model, tmp_path):
    card, splits = tiny_job
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(TunebookError, match="never overwritten"):
        train.train_adapter(card, splits, tiny_model, train.TrainConfig(max_steps=1), tmp_path / "adapter", "h")


@pytest.mark.parametrize(
    ("change", "message"),
    [({"quantization": "int3"}, "QUANTIZATION must be one of nf4, none"), ({"lora_r": 0}, "LORA_R must be positive"),
     ({"learning_rate": 0}, "LEARNING_RATE must be positive"), ({"epochs": 0, "max_steps": -1}, "set EPOCHS > 0")],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(TunebookError, match=message):
        train.TrainConfig(**change).check()
