"""Every user error is one line on stderr that names the file or flag, exit 2, and no
traceback; an interrupted or torn run folder loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dalle.cli import main

CONFIGS = Path(__file__).parent.parent / "configs"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A tiny dVAE, tokenizer and transformer, trained for a couple of updates."""
    root = tmp_path_factory.mktemp("errors")
    vae, tok, run = root / "vae", root / "tok", root / "run"
    assert main(["train-vae", "--config", str(CONFIGS / "dvae-tiny-cpu.yaml"), "--out", str(vae),
                 "loop.steps=2", "eval.samples=4", "eval.grid=2"]) == 0  # fmt: skip
    assert main(["tokenizer", "train", "--config", str(CONFIGS / "tokenizer-shapes.yaml"),
                 "--out", str(tok), "tokenizer.max_captions=300",
                 "tokenizer.max_length=24"]) == 0  # fmt: skip
    assert main(["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--vae", str(vae),
                 "--tokenizer", str(tok), "--out", str(run), "loop.steps=2", "eval.samples=4",
                 "eval.grid=1"]) == 0  # fmt: skip
    (root / "not-an-image.png").write_text("hello")
    (root / "a-file").write_text("x")
    image = (root / "run" / "samples").glob("*.png")
    shutil.copy(next(image), root / "good.png")
    (root / "truncated.png").write_bytes((root / "good.png").read_bytes()[:60])
    return {"root": root, "vae": vae, "tok": tok, "run": run}


def _model_copy(made: dict[str, Path], name: str) -> Path:
    copy = made["root"] / name
    if not copy.exists():
        shutil.copytree(made["run"], copy, ignore=shutil.ignore_patterns("checkpoint*"))
    return copy


def _damaged_checkpoint(content: Callable[[bytes], bytes]):
    def prepare(made: dict[str, Path], tmp: Path) -> list[str]:
        run = tmp / "vae-run"
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(content((made["vae"] / "checkpoint.pt").read_bytes()))
        return ["train-vae", "--config", str(CONFIGS / "dvae-tiny-cpu.yaml"), "--out", str(run),
                "loop.steps=2"]  # fmt: skip

    return prepare


def _damaged_weights(content: Callable[[bytes], bytes]):
    def prepare(made: dict[str, Path], tmp: Path) -> list[str]:
        model = _model_copy(made, f"weights-{tmp.name}")
        weights = model / "model.safetensors"
        weights.write_bytes(content(weights.read_bytes()))
        return ["generate", "a red circle", "--model", str(model), "--out-dir", str(tmp / "o")]

    return prepare


def _edited_config(edit: Callable[[dict], None]):
    def prepare(made: dict[str, Path], tmp: Path) -> list[str]:
        model = _model_copy(made, f"config-{tmp.name}")
        meta = json.loads((model / "config.json").read_text())
        edit(meta["config"])
        (model / "config.json").write_text(json.dumps(meta))
        return ["generate", "a red circle", "--model", str(model), "--out-dir", str(tmp / "o")]

    return prepare


def _generate(*extra: str, out: bool = True):
    def prepare(made: dict[str, Path], tmp: Path) -> list[str]:
        args = [a.format(root=made["root"], tmp=tmp) for a in extra]
        outputs = ["--out-dir", str(tmp / "o")] if out else []
        return ["generate", "a red circle", "--model", str(made["run"]), *outputs, *args]

    return prepare


def _list_yaml(made: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "list.yaml").write_text("- loop\n- data\n")
    return ["train-vae", "--config", str(tmp / "list.yaml"), "--out", str(tmp / "run")]


def _missing_key(config: dict) -> None:
    del config["width"]


# (case, how to make the command, what the one line must contain)
# fmt: off
CASES = [
    ("zero-byte checkpoint", _damaged_checkpoint(lambda b: b""), "checkpoint.pt"),
    ("truncated checkpoint", _damaged_checkpoint(lambda b: b[: len(b) // 2]), "checkpoint.pt"),
    ("garbage checkpoint", _damaged_checkpoint(lambda b: os.urandom(4096)), "checkpoint.pt"),
    ("truncated weights", _damaged_weights(lambda b: b[: len(b) // 2]), "model.safetensors"),
    ("garbage weights", _damaged_weights(lambda b: os.urandom(2048)), "model.safetensors"),
    ("mistyped config", _edited_config(lambda c: c.update(width="wide")), "width"),
    ("missing config key", _edited_config(_missing_key), "model.safetensors does not match"),
    ("config shape", _edited_config(lambda c: c.update(width=c["width"] * 2)), "does not match"),
    (
        "non-image prime",
        _generate("--prime-image", "{root}/not-an-image.png", "--prime-rows", "2"),
        "--prime-image",
    ),
    (
        "truncated prime",
        _generate("--prime-image", "{root}/truncated.png", "--prime-rows", "2"),
        "--prime-image",
    ),
    ("unwritable --out", _generate("--out", "{root}/a-file/grid.png"), "--out"),
    ("--out-dir is a file", _generate("--out-dir", "{root}/a-file", out=False), "--out-dir"),
    ("--out without extension", _generate("--out", "{tmp}/grid"), "--out"),
    ("no output", _generate(out=False), "--out"),
    ("prime without rows", _generate("--prime-image", "{root}/good.png"), "--prime-rows"),
    ("--keep 0", _generate("--rerank", "self", "--keep", "0"), "--keep"),
    ("--temperature nan", _generate("--temperature", "nan"), "--temperature"),
    ("--guidance inf", _generate("--guidance", "inf"), "--guidance"),
    ("--num 0", _generate("--num", "0"), "--num"),
    ("--batch-size 0", _generate("--batch-size", "0"), "--batch-size"),
    ("--device cuda", _generate("--device", "cuda"), "cuda"),
    ("yaml list", _list_yaml, "list.yaml"),
    (
        "train --out a file",
        lambda m, t: ["train-vae", "--out", str(m["root"] / "a-file")],
        "a-file",
    ),
    (
        "score a non-image",
        lambda m, t: [
            "score",
            str(m["root"] / "not-an-image.png"),
            "a red circle",
            "--model",
            str(m["run"]),
        ],
        "not-an-image.png",
    ),
    (
        "--vocab-size 0",
        lambda m, t: ["tokenizer", "train", "--vocab-size", "0", "--out", str(t)],
        "--vocab-size",
    ),
    (
        "vocab_size too small",
        lambda m, t: ["tokenizer", "train", "tokenizer.vocab_size=10", "--out", str(t)],
        "vocab_size",
    ),
    ("data check --size 0", lambda m, t: ["data", "check", "shapes", "--size", "0"], "--size"),
]
# fmt: on


@pytest.mark.parametrize(("case", "prepare", "named"), CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_and_exit_2(
    made: dict[str, Path], tmp_path: Path, capsys, case: str, prepare, named: str
) -> None:
    args = prepare(made, tmp_path)
    capsys.readouterr()
    with _exits() as code:
        code.value = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code.value == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0] and "error:" in lines[0], lines[0]


class _exits:
    """Catches argparse's SystemExit as an exit code, like a shell sees it."""

    value: int | None = None

    def __enter__(self) -> _exits:
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if kind is SystemExit:
            self.value = error.code
            return True
        return False


def test_debug_shows_the_traceback(made: dict[str, Path], tmp_path: Path) -> None:
    args = _damaged_weights(lambda b: b"")(made, tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        main([*args, "--debug"])


def test_a_bug_is_one_line_asking_for_debug(monkeypatch, capsys) -> None:
    from dalle import cli

    monkeypatch.setattr(cli, "cmd_model_info", lambda args: {}["boom"])
    parser = cli.build_parser  # the subcommand resolved its function at build time
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), cli.cmd_model_info))
    assert main(["model-info", "--preset", "dvae-tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert "internal error: KeyError" in err and "--debug" in err and "\n" not in err


def _with_func(parser, func):
    parse = parser.parse_args

    def parse_args(argv):
        args = parse(argv)
        args.func = func
        return args

    parser.parse_args = parse_args
    return parser


def test_resume_refuses_other_inputs_unless_allowed(
    made: dict[str, Path], tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    record = (run / "train_config.yaml").read_text()
    other_tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--config", str(CONFIGS / "tokenizer-shapes.yaml"),
                 "--out", str(other_tok), "tokenizer.max_captions=200",
                 "tokenizer.max_length=24"]) == 0  # fmt: skip
    base = ["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--vae", str(made["vae"]),
            "--out", str(run)]  # fmt: skip
    small = ["eval.samples=4", "eval.grid=1", "loop.steps=3"]
    capsys.readouterr()
    # Another tokenizer folder, then another learning rate: refused; allowed by the flag.
    assert main([*base, "--tokenizer", str(other_tok), *small]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main([*base, "--tokenizer", str(made["tok"]), *small, "optim.lr=0.1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main([*base, "--tokenizer", str(made["tok"]), "--allow-changes", *small,
                 "optim.lr=0.1"]) == 0  # fmt: skip
    assert (run / "train_config.yaml").read_text() == record  # how the run began, kept
    logged = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert logged[-1]["changes"]["optim.lr"][1] == 0.1
    assert "loop.steps" in logged[-1]["changes"]  # free to change, and still logged


def test_resume_refuses_a_tokenizer_changed_in_place(made: dict[str, Path], tmp_path, capsys):
    run, tok = tmp_path / "run", tmp_path / "tok"
    shutil.copytree(made["tok"], tok)
    args = ["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--vae", str(made["vae"]),
            "--tokenizer", str(tok), "--out", str(run),
            "eval.samples=4", "eval.grid=1"]  # fmt: skip
    assert main([*args, "loop.steps=1"]) == 0
    assert main(["tokenizer", "train", "--config", str(CONFIGS / "tokenizer-shapes.yaml"),
                 "--out", str(tok), "tokenizer.max_captions=100",
                 "tokenizer.max_length=24"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*args, "loop.steps=2"]) == 2
    assert "inputs.tokenizer" in capsys.readouterr().err


def test_torn_metrics_line_is_repaired(made: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["vae"], run)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "loss": 0.1, "trunc')
    args = ["train-vae", "--config", str(CONFIGS / "dvae-tiny-cpu.yaml"), "--out", str(run),
            "loop.steps=3", "eval.samples=4", "eval.grid=2"]  # fmt: skip
    assert main(args) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert json.loads(lines[-1])["event"] == "end" and json.loads(lines[-1])["step"] == 3


def test_generate_writes_as_it_goes_and_sigterm_exits_143(made: dict[str, Path], tmp_path):
    """A long request is interrupted: the finished prompts' images are on disk, and the
    process says 'interrupted' and exits 128 + SIGTERM, without a traceback."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle {i}" for i in range(400)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dalle", "generate", "--prompts", str(prompts), "--model",
         str(made["run"]), "--num", "2", "--out-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "interrupted" in err
    written = sorted(out.glob("*.png"))
    assert len(written) >= 4 and len(written) == len(list(out.glob("*.txt")))


def test_a_signal_inside_a_whole_block_waits_for_its_end(tmp_path: Path) -> None:
    """`write_images` writes each image and its caption as one block: a SIGTERM that lands
    between the two files is raised only after both exist (CI once saw a .png without its
    .txt)."""
    from dalle.interrupts import Interrupted, InterruptGuard, whole

    written = []
    with InterruptGuard(), pytest.raises(Interrupted) as stopped:
        with whole():
            written.append("image")
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here, raised at the block's end
            written.append("caption")
        written.append("next pair")
    assert written == ["image", "caption"] and stopped.value.exit_code == 143
    with whole():  # no guard entered: nothing to defer, nothing changes
        written.append("alone")
    assert written[-1] == "alone"
