"""OpenAI's released dVAE weights load into the project's dVAE and compute the same
thing as openai/DALL-E's own package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dall_e import Decoder, Encoder, map_pixels

from dalle.cli import main
from dalle.models.dvae import DiscreteVAE
from dalle.models.openai_dvae import load_openai_dvae


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, Path, Encoder, Decoder]:
    """A small encoder and decoder of the dall_e package with random weights (its own
    initialisation), pickled whole the way OpenAI released theirs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("openai")
    encoder = Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512).eval()
    decoder = Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512).eval()
    with torch.no_grad():  # non-zero biases, so that a bias mapped wrong shows
        for module in (encoder, decoder):
            for name, param in module.named_parameters():
                if name.endswith(".b"):
                    param.normal_(0, 0.1)
    torch.save(encoder, folder / "encoder.pkl")
    torch.save(decoder, folder / "decoder.pkl")
    return folder / "encoder.pkl", folder / "decoder.pkl", encoder, decoder


@torch.no_grad()
def test_converted_dvae_matches_the_dall_e_package(released) -> None:
    encoder_path, decoder_path, encoder, decoder = released
    model = load_openai_dvae(encoder_path, decoder_path)
    c = model.config
    assert (c.vocab_size, c.group_count, c.hidden_width, c.blocks_per_group) == (512, 4, 64, 1)
    assert c.decoder_input_width == 32
    pixels = torch.rand(2, 3, 64, 64)
    theirs = encoder(map_pixels(pixels))  # [2, 512, 8, 8]
    ours = model.logits(pixels)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    one_hot = F.one_hot(theirs.argmax(dim=1), 512).permute(0, 3, 1, 2).float()
    assert torch.allclose(model.decode_stats(one_hot), decoder(one_hot), atol=1e-5, rtol=1e-4)


def test_convert_command_writes_a_tokenizer_folder(released, tmp_path: Path, capsys) -> None:
    encoder_path, decoder_path, encoder, _ = released
    out = tmp_path / "openai-dvae"
    args = ["convert-openai-dvae", "--encoder", str(encoder_path), "--decoder",
            str(decoder_path), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "512 codes, 8x downsampling" in capsys.readouterr().out
    images = (torch.rand(1, 3, 64, 64) * 255).to(torch.uint8)
    tokens = DiscreteVAE.from_pretrained(out).encode(images)  # [1, 8, 8]
    with torch.no_grad():
        expected = encoder(map_pixels(images.float() / 255)).argmax(dim=1)
    assert torch.equal(tokens, expected)
    # A file that is not a released pickle is a one-line error.
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    args[2] = str(tmp_path / "bad.pkl")
    assert main(args) == 2
    assert "bad.pkl is not a readable pickle" in capsys.readouterr().err
