"""Caption BPE: normalisation, fixed length, truncation, dropout, exact save/load."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from dalle.data.datasets import DataConfig, iter_captions
from dalle.tokenizers.text import EOT_ID, PAD_ID, TextTokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    captions = list(iter_captions(DataConfig(source="shapes"), limit=3000))
    return TextTokenizer.train(captions, TokenizerConfig(vocab_size=400, max_length=48))


def test_fixed_length_padding_and_end_of_text(tokenizer: TextTokenizer) -> None:
    encoded = tokenizer.encode(
        ["a red circle", "a small blue star to the left of a large pink cross"]
    )
    assert encoded.ids.shape == (2, 48) and encoded.ids.dtype == torch.long
    for row, length in zip(encoded.ids, encoded.lengths, strict=True):
        assert row[length - 1] == EOT_ID
        assert (row[length:] == PAD_ID).all() and (row[: length - 1] > EOT_ID).all()
    # A trained vocabulary merges whole Shapes World words.
    assert encoded.lengths[0] <= 5
    assert tokenizer.decode(encoded.ids[0]) == "a red circle"


def test_nfkc_and_lowercasing(tokenizer: TextTokenizer) -> None:
    plain = tokenizer.encode(["a red circle"]).ids
    assert torch.equal(tokenizer.encode(["A RED Circle"]).ids, plain)
    # Fullwidth letters normalise to ASCII under NFKC.
    assert torch.equal(tokenizer.encode(["ａ ｒｅｄ ｃｉｒｃｌｅ"]).ids, plain)
    # Byte-level BPE has no unknown characters.
    assert (
        tokenizer.decode(tokenizer.encode(["flag: côte d’ivoire 🎉"]).ids[0])
        == "flag: côte d’ivoire 🎉"
    )


def test_truncation_is_counted_and_warned(tokenizer: TextTokenizer, caplog) -> None:
    long = " ".join(["a red circle above a blue square"] * 10)
    before = tokenizer.truncated_total
    with caplog.at_level(logging.WARNING):
        encoded = tokenizer.encode([long, "a red circle", long])
    assert encoded.truncated == 2 and tokenizer.truncated_total == before + 2
    assert encoded.lengths[0] == 48 and encoded.ids[0, -1] == EOT_ID
    assert "truncated" in tokenizer.truncation_summary()
    if before == 0:
        assert "truncated" in caplog.text


def test_bpe_dropout_varies_segmentation_but_not_text(tokenizer: TextTokenizer) -> None:
    caption = "there is a large purple diamond in the bottom right"
    plain = tokenizer.encode([caption]).ids
    torch.manual_seed(0)
    variants = {tuple(tokenizer.encode([caption], dropout=0.3).ids[0].tolist()) for _ in range(20)}
    assert len(variants) > 1
    assert all(tokenizer.decode(list(v)) == caption for v in variants)
    # Dropout is off again afterwards.
    assert torch.equal(tokenizer.encode([caption]).ids, plain)


def test_bpe_dropout_is_plain_bpe_at_zero_and_seeded(tokenizer: TextTokenizer) -> None:
    captions = [*iter_captions(DataConfig(source="shapes:zeroshot"), limit=300), "Émoji: 😀!"]
    # The dropout path merges like `tokenizers` when nothing is dropped (rate ~0).
    assert torch.equal(
        tokenizer.encode(captions, dropout=1e-12).ids, tokenizer.encode(captions).ids
    )
    draws = [
        tokenizer.encode(captions, dropout=0.2, generator=torch.Generator().manual_seed(seed)).ids
        for seed in (1, 1, 2)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # Dropping every merge leaves single bytes: one token per byte of the caption.
    every = tokenizer.encode(["a red star"], dropout=1.0)
    assert int(every.lengths[0]) == len("a red star") + 1


def test_save_and_load_are_exact(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    path = tokenizer.save(tmp_path / "tok")
    loaded = TextTokenizer.load(tmp_path / "tok")
    assert loaded.to_str() == tokenizer.to_str()
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == path.read_bytes()
    captions = list(iter_captions(DataConfig(source="shapes:zeroshot"), limit=200))
    assert torch.equal(loaded.encode(captions).ids, tokenizer.encode(captions).ids)
    assert loaded.max_length == 48


def test_bad_tokenizer_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        TextTokenizer.load(tmp_path)


def test_cli_trains_on_emoji_captions(emoji_tar: Path, tmp_path: Path, capsys) -> None:
    from dalle.cli import main

    out = tmp_path / "emoji-bpe"
    code = main([
        "tokenizer", "train", "--data", str(emoji_tar), "--vocab-size", "1000",
        "--max-length", "24", "--out", str(out), "tokenizer.min_frequency=1",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    # The train subset only: the hash-held-out tenth (337 of 3,414) is never read.
    assert "trained BPE on 3077 captions" in printed and "vocabulary 1000" in printed
    tok = TextTokenizer.load(out)
    assert tok.vocab_size == 1000 and tok.max_length == 24
    assert tok.decode(tok.encode(["Grinning Face"]).ids[0]) == "grinning face"
    assert (out / "train_config.yaml").exists()


def test_tokenizer_train_statistics_stream_in_bounded_memory(tmp_path: Path) -> None:
    """Its length statistics once encoded every caption padded to max_length at once:
    1M captions took 24 GB (~24 KB a caption, so 58,000 more captions would add ~1.3 GB).
    Chunked, the peak with 60,000 captions stays within 300 MiB of the peak with 2,000: a
    bound on growth, not on the footprint, which moves with library versions."""
    import subprocess
    import sys

    code = (
        "import resource, sys\nfrom dalle.cli import main\n"
        "assert main(['tokenizer', 'train', '--out', sys.argv[1],"
        " '--max-captions', sys.argv[2]]) == 0\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )

    def peak_mib(count: int) -> tuple[float, str]:
        out = tmp_path / str(count)
        result = subprocess.run([sys.executable, "-c", code, str(out), str(count)],
                                capture_output=True, text=True, check=True)  # fmt: skip
        return int(result.stdout.split()[-1]) / 1024, result.stdout

    small, _ = peak_mib(2000)
    large, printed = peak_mib(60000)
    assert large - small < 300, f"{small:.0f} MiB -> {large:.0f} MiB"
    assert "60000 captions" in printed


def test_a_tokenizer_pickles_after_dropout_encoding(tokenizer: TextTokenizer) -> None:
    """Data-loader workers started by spawn receive the tokenizer pickled."""
    captions = ["a small pink star to the right of a large green square", "a red star"]
    tokenizer.encode(captions, dropout=0.2)  # fills the word memo
    copy = pickle.loads(pickle.dumps(tokenizer))
    for dropout in (0.0, 0.2):
        draws = [t.encode(captions, dropout=dropout, generator=torch.Generator().manual_seed(4))
                 for t in (tokenizer, copy)]  # fmt: skip
        assert torch.equal(draws[0].ids, draws[1].ids)


def test_bpe_dropout_never_cuts_a_caption_that_fits(tokenizer: TextTokenizer) -> None:
    """48 tokens: a caption of ~20 tokens fits whole, but with every merge dropped its
    ~60 single bytes would not; dropout then falls back to the plain segmentation."""
    caption = "a small pink star to the right of a large green square"
    plain = tokenizer.encode([caption])
    assert plain.truncated == 0 and int(plain.lengths[0]) < tokenizer.max_length
    before = tokenizer.truncated_total
    dropped = tokenizer.encode([caption], dropout=1.0)
    assert dropped.truncated == 0 and tokenizer.truncated_total == before
    assert torch.equal(dropped.ids, plain.ids)
    assert tokenizer.decode(dropped.ids[0]) == caption
