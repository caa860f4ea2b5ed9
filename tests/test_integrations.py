"""Trainers that take a ``torch.optim.Optimizer`` take ``fastgd.torch``'s (the
``integrations`` extra; skipped without it): 🤗 transformers' ``Trainer(optimizers=...)``
and Lightning's ``configure_optimizers``, each with a scheduler, train a tiny model to the
parameters torch.optim's AdamW gives in the same code."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastgd.torch")

STEPS = 6


class Regression(torch.nn.Module):
    """A tiny model in the form trainers expect: ``forward(x, labels) -> {"loss": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))

    def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
        out = self.net(x)
        loss = None if labels is None else torch.nn.functional.mse_loss(out, labels)
        return {"loss": loss, "logits": out}


def rows(count: int = 64) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(count, 6, generator=g)
    y = x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * torch.randn(count, 1, generator=g)
    return [{"x": a, "labels": b} for a, b in zip(x, y, strict=True)]


def assert_same_parameters(ours: Any, theirs: Any) -> None:
    moved = False
    start = Regression().state_dict()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved |= not torch.equal(a, start[name])
    assert moved


def test_transformers_trainer_takes_a_fastgd_optimizer(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    def train(cls: type) -> Any:
        model = Regression()
        opt = cls(model.parameters(), lr=1e-2, weight_decay=1e-2)
        schedule = transformers.get_linear_schedule_with_warmup(opt, 2, STEPS)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / cls.__module__), max_steps=STEPS,
            per_device_train_batch_size=8, report_to=[], save_strategy="no",
            logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=3)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows(),
                                       optimizers=(opt, schedule))
        trainer.train()
        assert trainer.optimizer is opt or getattr(trainer.optimizer, "optimizer", None) is opt
        assert schedule.last_epoch == STEPS
        return model

    assert_same_parameters(train(ft.AdamW), train(torch.optim.AdamW))


def test_lightning_configure_optimizers_takes_a_fastgd_optimizer() -> None:
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self, cls: type) -> None:
            super().__init__()
            self.model, self.cls = Regression(), cls

        def training_step(self, batch: dict[str, Any], index: int) -> Any:
            return self.model(**batch)["loss"]

        def configure_optimizers(self) -> dict[str, Any]:
            opt = self.cls(self.parameters(), lr=1e-2, weight_decay=1e-2)
            schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule,
                                                       "interval": "step"}}

    def train(cls: type) -> Any:
        module = Module(cls)
        loader = torch.utils.data.DataLoader(rows(), batch_size=8)
        trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", devices=1,
                                    logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, loader)
        assert isinstance(trainer.optimizers[0], cls)
        return module.model

    assert_same_parameters(train(ft.AdamW), train(torch.optim.AdamW))
