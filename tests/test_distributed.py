"""Sharded training under torchrun, on CPUs with the gloo back-end: two ranks against one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle.cli import main
from dalle.data.datasets import local_batch_size
from dalle.models.clip import CLIP, CLIP_PRESETS
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE
from dalle.models.fsq import FSQ_PRESETS, FSQTokenizer
from dalle.training.parallelize import ParallelPlan, parallelize

CONFIGS = Path(__file__).parent.parent / "configs"
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    vae, tok = root / "vae", root / "tok"
    assert main(["train-vae", "--config", str(CONFIGS / "dvae-tiny-cpu.yaml"), "--out", str(vae),
                 "loop.steps=4", "loop.eval_every=4", "eval.samples=8"]) == 0  # fmt: skip
    assert main(["tokenizer", "train", "--config", str(CONFIGS / "tokenizer-shapes.yaml"),
                 "--out", str(tok), "tokenizer.max_captions=500",
                 "tokenizer.max_length=16"]) == 0  # fmt: skip
    return {"root": root, "vae": vae, "tokenizer": tok}


def _train_args(stages: dict[str, Path], out: Path, *overrides: str) -> list[str]:
    # No random numbers in a step (no dropout of any kind), so that one rank and two
    # ranks can agree to rounding.
    return ["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--out", str(out),
            "--vae", str(stages["vae"]), "--tokenizer", str(stages["tokenizer"]),
            "bpe_dropout=0", "caption_dropout=0", "loop.log_every=1", "eval.samples=8",
            "eval.grid=2", "data.batch_size=8", *overrides]  # fmt: skip


def _launch(ranks: int, args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
               "--standalone", "-m", "dalle", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # fmt: skip


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL to torchrun and its workers (which run in sessions of their own)."""
    pids, frontier = [process.pid], [process.pid]
    while frontier:
        found = subprocess.run(["ps", "-o", "pid=", "--ppid", ",".join(map(str, frontier))],
                               capture_output=True, text=True).stdout.split()  # fmt: skip
        frontier = [int(p) for p in found]
        pids += frontier
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)


def _torchrun(ranks: int, args: list[str]) -> str:
    process = _launch(ranks, args)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        _kill_all(process)
        raise
    assert process.returncode == 0, output
    return output


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_ranks_match_one_with_the_same_global_batch(stages: dict[str, Path]) -> None:
    one, two = stages["root"] / "one", stages["root"] / "two"
    steps = ["loop.steps=3", "loop.eval_every=3", "loop.checkpoint_every=3"]
    assert main(_train_args(stages, one, *steps)) == 0
    _torchrun(2, _train_args(stages, two, *steps))
    assert (two / "checkpoint" / "loop.json").is_file()  # sharded, one file per rank
    assert len(list((two / "checkpoint").glob("*.distcp"))) == 2
    single, sharded = _losses(one), _losses(two)
    assert sorted(sharded) == [1, 2, 3]
    for step, loss in single.items():
        assert abs(loss - sharded[step]) < 1e-4, (step, loss, sharded[step])
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)

    # The checkpoint two ranks wrote resumes in one process, as the one-process run does.
    more = ["loop.steps=5", "loop.eval_every=5", "loop.checkpoint_every=5"]
    assert main(_train_args(stages, one, *more)) == 0
    assert main(_train_args(stages, two, *more)) == 0
    single, resumed = _losses(one), _losses(two)
    for step in (4, 5):
        assert abs(single[step] - resumed[step]) < 1e-4, step

    # And exports as a model folder that generation loads.
    exported = stages["root"] / "exported"
    assert main(["export-checkpoint", str(two), "--out", str(exported)]) == 0
    weights = load_file(exported / "model.safetensors")
    final = load_file(two / "model.safetensors")
    for name in final:
        assert torch.equal(weights[name], final[name]), name
    assert (exported / "image_tokenizer" / "model.safetensors").is_file()


def test_two_ranks_in_bf16_match_one(stages: dict[str, Path]) -> None:
    """bf16 under FSDP2 on gloo: the ranks gather weights in bf16 (the precision policy)
    and compute under bf16 autocast, one process only the latter; the losses agree to
    bf16's precision, and the exported weights are fp32."""
    one, two = stages["root"] / "bf16-one", stages["root"] / "bf16-two"
    args = ["loop.steps=3", "loop.eval_every=3", "loop.checkpoint_every=3", "loop.precision=bf16"]
    assert main(_train_args(stages, one, *args)) == 0
    _torchrun(2, _train_args(stages, two, *args))
    single, sharded = _losses(one), _losses(two)
    assert sorted(sharded) == [1, 2, 3]
    for step, loss in single.items():
        assert abs(loss - sharded[step]) < 2e-2 * loss, (step, loss, sharded[step])
    assert {t.dtype for t in load_file(two / "model.safetensors").values()} == {torch.float32}


def test_killed_two_rank_run_resumes_to_the_same_weights(stages: dict[str, Path]) -> None:
    straight, killed = stages["root"] / "straight", stages["root"] / "killed"
    steps = ["loop.steps=150", "loop.eval_every=150", "loop.checkpoint_every=10"]
    _torchrun(2, _train_args(stages, straight, *steps))

    process = _launch(2, _train_args(stages, killed, *steps))
    loop_file = killed / "checkpoint" / "loop.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if loop_file.is_file() and json.loads(loop_file.read_text())["loop"]["step"] >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    _kill_all(process)  # no chance to save anything
    process.communicate()
    stopped_at = json.loads(loop_file.read_text())["loop"]["step"]
    assert 20 <= stopped_at < 150

    output = _torchrun(2, _train_args(stages, killed, *steps))
    assert f"at step {stopped_at}" in output
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("build", [
    lambda: DALLETransformer(DALLE_PRESETS["dalle-tiny"]),
    lambda: FSQTokenizer(FSQ_PRESETS["fsq-tiny"]),
    lambda: DiscreteVAE(DVAE_PRESETS["dvae-tiny"]),
    lambda: CLIP(CLIP_PRESETS["clip-tiny"]),
    lambda: CLIP(replace(CLIP_PRESETS["clip-tiny"], image_encoder="resnet")),
], ids=["transformer", "fsq", "dvae", "clip", "clip-resnet"])  # fmt: skip
def test_initialising_after_a_meta_build_gives_the_single_device_weights(build) -> None:
    torch.manual_seed(3)
    direct = build()
    torch.manual_seed(3)
    with torch.device("meta"):
        deferred = build()
    parallelize(deferred, ParallelPlan(activation_checkpointing=True), torch.device("cpu"))
    expected = direct.state_dict()
    for name, tensor in deferred.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    for name, buffer in direct.named_buffers():  # buffers (masks, levels) rebuilt too
        assert torch.equal(dict(deferred.named_buffers())[name], buffer), name
    # Each parameter has its own generator: copies of one layer do not start identical.
    weights = [p for p in direct.parameters() if p.ndim >= 2 and p.any()]
    assert len({tuple(p.flatten()[:4].tolist()) for p in weights}) == len(weights) > 2


def test_a_meta_built_tokenizer_keeps_its_background_start() -> None:
    background = torch.tensor([1.0, 0.5, 0.0])
    with torch.device("meta"):
        tokenizer = FSQTokenizer(FSQ_PRESETS["fsq-tiny"])
    tokenizer.init_output_bias(background)
    parallelize(tokenizer, ParallelPlan(), torch.device("cpu"))
    head = tokenizer.decoder.layers[-1]
    torch.testing.assert_close(torch.sigmoid(head.bias), background.clamp(0.02, 0.98))


def test_two_ranks_evaluate_an_image_tokenizer_as_one(stages: dict[str, Path]) -> None:
    """encode / decode outside forward gather the sharded weights themselves."""
    evaluations = {}
    for ranks in (1, 2):
        out = stages["root"] / f"fsq-{ranks}"
        args = ["train-image-tokenizer", "--preset", "fsq-tiny", "--data", "shapes",
                "--out", str(out), "data.image_size=16", "data.batch_size=8", "loop.steps=2",
                "loop.eval_every=2", "loop.checkpoint_every=2", "eval.samples=8",
                "eval.grid=2"]  # fmt: skip
        if ranks == 1:
            assert main(args) == 0
        else:
            _torchrun(2, args)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evaluations[ranks] = next(r["eval"] for r in records if "eval" in r)
    assert evaluations[2]["psnr"] == pytest.approx(evaluations[1]["psnr"], abs=1e-3)
    assert evaluations[2]["codes_used"] == evaluations[1]["codes_used"]


def test_global_batch_must_split_evenly() -> None:
    assert local_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="global batch"):
        local_batch_size(9, 2)


def test_model_info_reports_memory_per_gpu_under_sharding(capsys) -> None:
    assert main(["model-info", "--preset", "dalle-12b", "--gpus", "8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    total = info["parameters"]["total"]
    assert 11.5e9 < total < 12.5e9
    memory = info["bytes_per_gpu"]
    assert memory["optimizer_adamw_fp32"] == pytest.approx(8 * total / 8)
    assert memory["weights_fp32"] == pytest.approx(4 * total / 8)


def test_clip_contrasts_the_global_batch_across_ranks(stages: dict[str, Path]) -> None:
    """Each rank gathers every rank's features, so two ranks compute the one-rank loss."""
    runs = {}
    for ranks in (1, 2):
        out = stages["root"] / f"clip-{ranks}"
        args = ["train-clip", "--config", str(CONFIGS / "clip-tiny-cpu.yaml"), "--out", str(out),
                "--tokenizer", str(stages["tokenizer"]), "loop.steps=3", "loop.log_every=1",
                "loop.eval_every=3", "loop.checkpoint_every=3",
                "hard_negatives.groups=[]"]  # random per rank: one rank draws others  # fmt: skip
        if ranks == 1:
            assert main(args) == 0
        else:
            _torchrun(2, args)
        runs[ranks] = _losses(out)
    for step, loss in runs[1].items():
        assert abs(loss - runs[2][step]) < 1e-4, step


def test_one_rank_under_torchrun_shards_and_evaluates_in_bf16(tmp_path: Path) -> None:
    """torchrun with one rank takes the sharded path (process group, FSDP2, sharded
    checkpoint), and a bf16 run's evaluation meets the gathered bf16 weights under
    autocast (a float32 input used to stop it with a dtype error)."""
    out = tmp_path / "fsq"
    _torchrun(1, ["train-image-tokenizer", "--config", str(CONFIGS / "fsq-shapes-demo.yaml"),
                  "--out", str(out), "loop.steps=4", "loop.checkpoint_every=2",
                  "loop.eval_every=4", "eval.samples=8", "eval.grid=2", "data.batch_size=4",
                  "loop.precision=bf16"])  # fmt: skip
    assert len(list((out / "checkpoint").glob("*.distcp"))) == 1  # sharded, one rank
    assert (out / "model.safetensors").exists()
    evaluated = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                 if "eval" in r]  # fmt: skip
    assert evaluated and evaluated[-1]["eval"]["psnr"] > 0


@pytest.fixture(scope="module")
def unclip_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP and FSQ tokenizer for DALL-E 2's stages."""
    from serving_helpers import make_tiny_models

    root = tmp_path_factory.mktemp("unclip-ranks")
    clip, fsq = make_tiny_models(root)[1], root / "fsq"
    assert main(["train-image-tokenizer", "--preset", "fsq-tiny", "--out", str(fsq),
                 "data.source=shapes", "data.image_size=32", "data.batch_size=4",
                 "loop.steps=2", "loop.eval_every=2", "eval.samples=4"]) == 0  # fmt: skip
    return {"root": root, "clip": clip, "fsq": fsq}


@pytest.mark.parametrize("stage", ["prior", "decoder", "token-decoder", "upsampler"])
def test_dalle2_stages_train_sharded_and_resume(stage: str, unclip_inputs) -> None:
    """Each DALL-E 2 stage under torchrun: two ranks train it sharded (FSDP2 over gloo),
    evaluate on both ranks, export one whole model, and a longer run resumes from the
    sharded checkpoint."""
    out = unclip_inputs["root"] / stage
    command = {"prior": "train-prior", "upsampler": "train-upsampler"}.get(stage, "train-decoder")
    args = [command, "--config", str(CONFIGS / f"{stage}-tiny-cpu.yaml"), "--out", str(out)]
    if stage != "upsampler":
        args += ["--clip", str(unclip_inputs["clip"])]
    args += ["loop.steps=2", "loop.eval_every=2", "loop.checkpoint_every=2"]
    if stage == "token-decoder":
        args.append(f"image_tokenizer={unclip_inputs['fsq']}")
    _torchrun(2, args)
    assert len(list((out / "checkpoint").glob("*.distcp"))) == 2  # one shard per rank
    first = load_file(out / "model.safetensors")
    resumed = _torchrun(2, [*args, "loop.steps=4", "loop.eval_every=4"])
    assert "at step 2" in resumed
    evaluated = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                 if "eval" in r]  # fmt: skip
    assert [r["step"] for r in evaluated] == [2, 4]
    after = load_file(out / "model.safetensors")
    assert first.keys() == after.keys() and any(not torch.equal(first[k], after[k]) for k in first)
