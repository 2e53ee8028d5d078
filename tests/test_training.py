"""The teacher's masked-diffusion objective and the saved-teacher format."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch

from distill.data.sources import PathsDataModule, SourceDataModule
from distill.objectives.masked_diffusion import MaskedDiffusionObjective, mask_tokens
from teachers import TransformerDenoiser, load_teacher, save_teacher


def tiny_objective(vocab_size: int, seq_len: int, **kwargs) -> MaskedDiffusionObjective:
    network = partial(TransformerDenoiser, n_layer=1, n_head=2, d_model=32)
    optimizer = partial(torch.optim.AdamW, lr=1e-2)
    return MaskedDiffusionObjective(network, optimizer, vocab_size, seq_len, warmup_steps=5, **kwargs)


def val_loss(objective, datamodule) -> float:
    losses = [objective.loss(b, torch.Generator().manual_seed(i)).item() for i, b in enumerate(datamodule.val_dataloader())]
    return sum(losses) / len(losses)


def test_mask_tokens_masks_only_answer_positions_at_ratio_t():
    tokens = torch.zeros(4000, 10, dtype=torch.long)
    answer = torch.zeros(1, 10, dtype=torch.bool)
    answer[:, 2:] = True
    xt, noise, t = mask_tokens(tokens, answer.expand_as(tokens), mask_id=7, generator=torch.Generator().manual_seed(0))
    assert not noise[:, :2].any() and torch.equal(xt == 7, noise)
    assert noise[:, 2:].float().mean().item() == pytest.approx(t.mean().item(), abs=0.01)
    assert sorted(t.squeeze(1).tolist())[::1000] == pytest.approx([0.001 + 0.999 * k / 4 for k in range(4)], abs=1e-3)




@pytest.mark.parametrize("make_data", [
    lambda: SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8, batch_size=64, val_size=256),
    lambda: PathsDataModule(nodes=6, successors=2, answer_len=4, batch_size=64, val_size=256),
])
def test_training_loss_falls_on_a_short_fit(make_data):
    torch.manual_seed(0)
    datamodule = make_data()
    objective = tiny_objective(datamodule.vocab_size, datamodule.seq_len)
    before = val_loss(objective, datamodule)
    trainer = L.Trainer(max_steps=200, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(objective, datamodule=datamodule)
    after = val_loss(objective, datamodule)
    assert after < before - 0.2


def test_validation_with_no_samples_logs_only_the_loss():
    datamodule = SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8, batch_size=16, val_size=32)
    objective = tiny_objective(datamodule.vocab_size, datamodule.seq_len, val_samples=0)
    trainer = L.Trainer(max_steps=2, val_check_interval=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(objective, datamodule=datamodule)
    assert "val/loss" in trainer.callback_metrics and "val/gen_nll" not in trainer.callback_metrics


def test_saved_teacher_round_trips_exactly(tmp_path):
    net = TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16, absolute_positions=True)
    save_teacher(net, tmp_path / "t", data={"kind": "hidden_markov", "seed": 0})
    loaded = load_teacher(tmp_path / "t")
    tokens = torch.randint(0, 7, (3, 8))
    with torch.no_grad():  # same kernels on both sides
        assert torch.equal(net.eval()(tokens), loaded(tokens))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert loaded.data_spec == {"kind": "hidden_markov", "seed": 0}
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(FileExistsError, match="already exists"):
        save_teacher(net, tmp_path / "t", data={})


def test_corrupt_or_truncated_teacher_is_named(tmp_path):
    net = TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16)
    path = save_teacher(net, tmp_path / "t", data={})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_teacher(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_teacher(path)
    with pytest.raises(FileNotFoundError, match="is not a saved teacher"):
        load_teacher(tmp_path / "nowhere")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    net = TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16)

    def broken_dumps(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError, match="disk full"):
        save_teacher(net, tmp_path / "t", data={})
    assert list(tmp_path.iterdir()) == []
