"""An HF Trainer training of a tiny BERT built from a config; no torchrepro calls.

The model is built by ``model_init``, after the Trainer's own ``set_seed``, so the plain
script repeats. 24 samples in batches of 4, 12 steps: 2 epochs. SEEN and
PLANT_NOISE_STEP: see seen.py. OUTDIR: the Trainer's output_dir (nothing is saved).
CALLBACK=1: torchrepro's Trainer callback is added.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from seen import Seen, plant_noise, sampler_kind  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

CONFIG = BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
)


class Tokens(Dataset[dict[str, Any]]):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = (torch.arange(8) * 7 + int(index) * 3) % CONFIG.vocab_size
        return {"idx": int(index), "input_ids": ids, "labels": int(index) % 2}


class Epochs(TrainerCallback):
    epoch = 0

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        Epochs.epoch = round(state.epoch or 0)


class Watching(Trainer):
    seen = Seen()

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> torch.Tensor:
        index = inputs.pop("idx")
        plant_noise(model, self.state.global_step)
        self.seen.add(Epochs.epoch, index, inputs["input_ids"].shape)
        return super().training_step(model, inputs, *args)


def torchrepro_callback() -> list[TrainerCallback]:
    if os.environ.get("CALLBACK") != "1":
        return []
    from torchrepro.integrations.transformers import TorchReproCallback

    return [TorchReproCallback()]


def main() -> None:
    args = TrainingArguments(
        output_dir=os.environ.get("OUTDIR") or tempfile.mkdtemp(),
        per_device_train_batch_size=4,
        max_steps=12,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=42,
    )
    trainer = Watching(
        model_init=lambda: BertForSequenceClassification(CONFIG),
        args=args,
        train_dataset=Tokens(),
        data_collator=default_data_collator,
        callbacks=[Epochs(), *torchrepro_callback()],
    )
    trainer.train()
    trainer.seen.write(
        args.process_index, args.world_size, sampler=sampler_kind(trainer.get_train_dataloader())
    )


if __name__ == "__main__":
    main()
