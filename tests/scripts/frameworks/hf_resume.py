"""An HF Trainer training resumed with Trainer's own checkpoints, as its users write it.

hf_train.py's tiny BERT from a config (dropout 0.1), built after ``set_seed(42)``; 40 samples whose
tokens are replaced at random (Python, numpy and torch draws in ``__getitem__``), batches
of 4: 10 steps an epoch, 30 steps. ``OUT``: the output_dir; the uninterrupted run saves
``checkpoint-5`` (mid-epoch), ``checkpoint-10`` (the epoch boundary) and on.
``RESUME=path`` resumes from one with ``trainer.train(resume_from_checkpoint=path)``.
Either way the final parameters go to ``OUT/final.pt``.
``WORKERS``: loader workers (2). ``IGNORE_DATA_SKIP=1``: Trainer's option of that name.
``CALLBACK=1`` adds torchrepro's callback: the only torchrepro line.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hf_train import CONFIG  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    set_seed,
)

OUT = Path(os.environ["OUT"])
RESUME = os.environ.get("RESUME")


class Tokens(Dataset[dict[str, Any]]):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = (torch.arange(8) * 7 + index * 3) % CONFIG.vocab_size
        replace = torch.rand(8) < 0.15  # token replacement, as masking does
        ids = torch.where(replace, torch.randint(0, CONFIG.vocab_size, (8,)), ids)
        if random.random() < 0.5:
            ids = ids.flip(0)
        ids[0] = int(np.random.randint(CONFIG.vocab_size))
        return {"input_ids": ids, "labels": index % 2}


def main() -> None:
    set_seed(42)
    model = BertForSequenceClassification(CONFIG)
    args = TrainingArguments(
        output_dir=str(OUT),
        per_device_train_batch_size=4,
        max_steps=30,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=int(os.environ.get("WORKERS", "2")),
        save_strategy="steps",
        save_steps=5,
        logging_strategy="no",
        disable_tqdm=True,
        ignore_data_skip=os.environ.get("IGNORE_DATA_SKIP") == "1",
        seed=42,
    )
    callbacks = []
    if os.environ.get("CALLBACK") == "1":
        from torchrepro.integrations.transformers import TorchReproCallback

        callbacks.append(TorchReproCallback())
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=RESUME)
    torch.save(model.state_dict(), OUT / "final.pt")


if __name__ == "__main__":
    main()
