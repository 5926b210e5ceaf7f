"""The model-agnostic loop: outputs of a run, exact resume after a stop, refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.training.checkpoint import seed_everything
from dalle.training.dvae_task import DVAETask
from dalle.training.schedules import cosine_anneal, warmup_cosine
from dalle.training.stages import DVAE
from interrupt import Crash, run_task

CONFIGS = Path(__file__).parent.parent / "configs"
SMALL_RUN = [
    "loop.steps=8", "loop.checkpoint_every=3", "loop.eval_every=4", "loop.log_every=2",
    "eval.samples=8", "eval.grid=4", "data.batch_size=4",
]  # fmt: skip


def _run(
    out: Path,
    stop_at_call: int | None = None,
    error: type[BaseException] = KeyboardInterrupt,
    extra: tuple[str, ...] = (),
):
    config = DVAE.build_config(CONFIGS / "dvae-tiny-cpu.yaml", [*SMALL_RUN, *extra])
    return run_task(config, DVAETask, out, stop_at_call, error)


@pytest.mark.parametrize(
    ("error", "stop_at", "extra"),
    [
        (KeyboardInterrupt, 6, ()),
        (Crash, 5, ()),
        (KeyboardInterrupt, 6, ("optim.ema_decay=0.9",)),
        # the dVAE task's own state (code counts, split rounds) rides in the checkpoint
        (Crash, 8, ("objective.split_every=2",)),
        (KeyboardInterrupt, 7, ("objective.split_every=2",)),
    ],
)
def test_resume_is_exact(
    tmp_path: Path, error: type[BaseException], stop_at: int, extra: tuple[str, ...]
) -> None:
    straight = _run(tmp_path / "straight", extra=extra)
    with pytest.raises(error):
        _run(tmp_path / "stopped", stop_at_call=stop_at, error=error, extra=extra)
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    # An interrupt checkpoints the last step boundary; a crash leaves the periodic one.
    assert saved["loop"]["step"] == (
        stop_at - 1 if error is KeyboardInterrupt else 3 * ((stop_at - 1) // 3)
    )
    resumed = _run(tmp_path / "stopped", extra=extra)
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    for run in ("straight", "stopped"):  # the exported model is the same too
        assert (tmp_path / run / "model.safetensors").exists()
    assert (tmp_path / "straight" / "model.safetensors").read_bytes() == (
        tmp_path / "stopped" / "model.safetensors"
    ).read_bytes()


def test_weight_average_is_what_gets_exported(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    raw = _run(tmp_path / "run", extra=("optim.ema_decay=0.5",))
    exported = load_file(tmp_path / "run" / "model.safetensors")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    averaged = {
        k.removeprefix("module."): v for k, v in saved["ema"].items() if k.startswith("module.")
    }
    name = "encoder.to_logits.1.weight"
    assert torch.equal(exported[name], averaged[name])
    assert not torch.equal(exported[name], raw[name])  # the training weights differ
    assert torch.equal(saved["model"][name], raw[name])  # and the checkpoint keeps them


def _train_vae_args(out: Path) -> list[str]:
    return [
        "train-vae",
        "--config",
        str(CONFIGS / "dvae-tiny-cpu.yaml"),
        "--out",
        str(out),
        *SMALL_RUN,
    ]


def test_train_vae_cli_writes_model_metrics_and_grids(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = _train_vae_args(out)
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.pt", "metrics.jsonl",
            "recon-latest.png", "train_config.yaml", "samples"} <= names  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert {"mse", "psnr", "codes_used", "perplexity"} <= set(evals[-1])
    logged = [r for r in records if "loss" in r]
    assert {"images_per_s", "kl_weight", "temperature", "lr"} <= set(logged[-1])
    assert "held-out" in capsys.readouterr().out
    # Running again finds the run finished and changes nothing.
    before = (out / "model.safetensors").read_bytes()
    assert main(args) == 0
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_with_a_different_model_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = _train_vae_args(out)
    assert main(args) == 0
    assert main([*args, "model.vocab_size=64"]) == 2
    assert "model.vocab_size: 128 -> 64" in capsys.readouterr().err


def test_unknown_preset_and_key_are_named(tmp_path: Path, capsys) -> None:
    assert main(["train-vae", "--out", str(tmp_path), "--preset", "dvae-huge"]) == 2
    assert "dvae-huge" in capsys.readouterr().err
    assert main(["train-vae", "--out", str(tmp_path), "objective.kl_wieght=1"]) == 2
    assert "objective.kl_wieght" in capsys.readouterr().err


def test_model_info_counts_without_allocating(capsys) -> None:
    assert main(["model-info", "--preset", "dvae-paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == {"encoder": 53_786_240, "decoder": 43_829_766, "total": 97_616_006}


@pytest.mark.parametrize("where", ["evaluation", "checkpoint write"])
def test_interrupt_outside_a_step_resumes_exactly(tmp_path: Path, monkeypatch, where: str) -> None:
    """Ctrl-C during evaluation (step 4) or a periodic checkpoint write (step 6) comes after
    the update: the checkpoint it leaves must hold that step, not the one before with
    weights already one update further."""
    from dalle.training import loop

    straight = _run(tmp_path / "straight")
    config = DVAE.build_config(CONFIGS / "dvae-tiny-cpu.yaml", SMALL_RUN)
    seed_everything(config.loop.seed)
    task = DVAETask(config, torch.device("cpu"))
    if where == "evaluation":
        evaluate = task.evaluate

        def interrupted_evaluate(step: int, out_dir: Path) -> dict[str, float]:
            if step == 4:
                raise KeyboardInterrupt
            return evaluate(step, out_dir)

        task.evaluate = interrupted_evaluate
    else:
        from dalle.training import checkpoint

        save = checkpoint.save_checkpoint

        def interrupted_save(path, model, optimizer, state, *args, **kwargs):
            if state.step == 6 and not kwargs.get("rng"):  # the periodic write, not the rescue
                raise KeyboardInterrupt
            return save(path, model, optimizer, state, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "save_checkpoint", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        loop.train(task, config.data, config.loop, config.optim, tmp_path / "stopped",
                   dataclasses.asdict(config))  # fmt: skip
    monkeypatch.undo()
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert saved["loop"]["step"] == (4 if where == "evaluation" else 6)
    resumed = _run(tmp_path / "stopped")
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_schedule_on_the_clock_takes_the_further_of_steps_and_time() -> None:
    from dalle.training.loop import LoopConfig, LoopState, _schedule_position

    on_time = LoopConfig(steps=100, max_minutes=1.0, schedule_clock="time")
    assert _schedule_position(on_time, LoopState(step=10, elapsed_s=30.0)) == 50.0  # slow
    assert _schedule_position(on_time, LoopState(step=80, elapsed_s=30.0)) == 80.0  # fast
    on_steps = LoopConfig(steps=100, max_minutes=1.0)
    assert _schedule_position(on_steps, LoopState(step=10, elapsed_s=30.0)) == 10.0
    with pytest.raises(ValueError, match="needs a time budget"):
        LoopConfig(schedule_clock="time")


@pytest.mark.parametrize("clock", ["steps", "time"])
def test_a_spent_budget_anneals_only_on_the_clock(tmp_path: Path, clock: str, caplog) -> None:
    # Far more updates than 9 seconds allow: on the step clock the run stops near its peak
    # learning rate; on the time clock it still decays to the end, and so does the task's
    # own schedule (the dVAE's temperature, 1 -> 1/16).
    budget = ("loop.steps=100000", "loop.max_minutes=0.15", "loop.log_every=1",
              "loop.eval_every=100000", "loop.checkpoint_every=100000", "optim.lr=1e-3",
              "optim.final_lr=1e-5", "optim.warmup_steps=0", "objective.temperature_steps=100000",
              f"loop.schedule_clock={clock}")  # fmt: skip
    _run(tmp_path, extra=budget)
    logged = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "lr" in r]
    lrs, temperatures = [r["lr"] for r in logged], [r["temperature"] for r in logged]
    assert 1 < len(lrs) < 100000
    if clock == "time":
        # Every update's learning rate and temperature are the schedules' at the clock's
        # position when it began: 100,000 updates times the fraction of the 9 s spent by
        # then (the previous update's elapsed_s; every update is logged). Checked update by
        # update rather than by the last one's value, which depends on how busy the
        # machine was when the budget ran out.
        for before, row in itertools.pairwise(logged):
            position = max(before["step"], 100000 * before["elapsed_s"] / 9.0)
            assert row["lr"] == pytest.approx(warmup_cosine(position, 0, 100000, 1e-3, 1e-5))
            expected = cosine_anneal(position, 100000, 1.0, 1 / 16)
            assert row["temperature"] == pytest.approx(expected)
        assert lrs[-1] < lrs[0] and temperatures[-1] < temperatures[0]
        assert "finished its decay" in caplog.text
    else:
        assert lrs[-1] > 9e-4 and "loop.schedule_clock=time would finish" in caplog.text
        assert temperatures[-1] > 0.99


def test_the_attention_kernel_setting_reaches_the_loss_and_changes_nothing_else(
    tmp_path: Path,
) -> None:
    """``loop.attention_kernel=math`` turns the fused kernels off where the loss is
    computed (and only there), and trains to the same weights; an unknown name is refused."""
    from dalle.training.loop import LoopConfig

    seen: dict[str, list[bool]] = {}

    def watching(kernel: str):
        def make(config, device):
            task = DVAETask(config, device)
            inner = task.training_loss

            def loss(batch, position):
                seen.setdefault(kernel, []).append(torch.backends.cuda.flash_sdp_enabled())
                return inner(batch, position)

            task.training_loss = loss
            return task

        return make

    weights = {}
    for kernel in ("auto", "math"):
        config = DVAE.build_config(CONFIGS / "dvae-tiny-cpu.yaml",
                                   [*SMALL_RUN, f"loop.attention_kernel={kernel}"])  # fmt: skip
        weights[kernel] = run_task(config, watching(kernel), tmp_path / kernel)
    assert set(seen["auto"]) == {True} and set(seen["math"]) == {False}
    assert torch.backends.cuda.flash_sdp_enabled()  # back on after training
    for name, tensor in weights["auto"].items():
        assert torch.allclose(tensor, weights["math"][name], atol=1e-6), name
    with pytest.raises(ValueError, match="attention_kernel"):
        LoopConfig(attention_kernel="fast")
