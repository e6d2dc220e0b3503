"""MIDAS with the Hugging Face ``Trainer``, on generated two-modality data, on CPU.

    python examples/hf_trainer_train.py                              # one process
    torchrun --nproc_per_node=2 examples/hf_trainer_train.py         # two processes (gloo)

The MIDAS lines are marked ``# MIDAS``; the rest is a plain ``Trainer`` set-up with a
``datasets.Dataset``. Prints one JSON line at the end: epochs run, distinct epoch plans,
samples per rank per epoch (and whether every sample came exactly once per epoch across
ranks), alpha per rank and the final accuracy from ``trainer.evaluate()``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings

import datasets
import numpy as np
import torch
from run_summary import EpochRecord, summary
from torch import nn
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from midas_data import LateFusionClassifier, MidasObjective
from midas_data.integrations.transformers import MidasTrainer

MODALITIES = ("audio", "video")
NUM_CLASSES = 4


def two_modalities(size: int, seed: int) -> datasets.Dataset:
    """Columns ``audio``, ``video``, ``label``: a strong audio signal, a weak video one."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % NUM_CLASSES
    audio = nn.functional.one_hot(labels, 8).float() * 2.0 + torch.randn(size, 8, generator=g)
    video = nn.functional.one_hot(labels, 8).float() * 0.8 + torch.randn(size, 8, generator=g)
    columns = {"audio": audio.numpy(), "video": video.numpy(), "label": labels.numpy()}
    return datasets.Dataset.from_dict(columns).with_format("torch")


def make_model() -> LateFusionClassifier:
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(8, 16), nn.ReLU()) for m in MODALITIES}
    return LateFusionClassifier(encoders, {m: 16 for m in MODALITIES}, NUM_CLASSES)


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}


class RecordingTrainer(MidasTrainer):
    """For the JSON line only: what this rank trained on."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.record.add(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)

    train, test = two_modalities(args.samples, seed=0), two_modalities(400, seed=1)
    training_args = TrainingArguments(
        output_dir=args.output_dir or tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        per_device_eval_batch_size=200,
        num_train_epochs=args.epochs,
        learning_rate=0.01,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient, in warm-up too
        seed=0,
        disable_tqdm=True,
    )
    objective = MidasObjective(NUM_CLASSES, MODALITIES, warmup_epochs=args.warmup_epochs)  # MIDAS
    trainer = RecordingTrainer(  # MIDAS: MidasTrainer instead of Trainer
        model=make_model(),
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        compute_metrics=accuracy,
        objective=objective,  # MIDAS
    )
    trainer.record = EpochRecord()
    trainer.train()
    metrics = trainer.evaluate()

    result = summary(trainer.record, objective.alpha, args.samples)
    logged = [entry for entry in trainer.state.log_history if "midas/alpha_audio" in entry]
    if not trainer.is_world_process_zero():
        return
    result = {"integration": "transformers", **result}
    result["logged_alpha"] = [logged[-1]["midas/alpha_audio"], logged[-1]["midas/alpha_video"]] if logged else None
    result["final_accuracy"] = round(metrics["eval_accuracy"], 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
