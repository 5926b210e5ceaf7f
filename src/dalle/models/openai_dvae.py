"""OpenAI's released dVAE weights (``encoder.pkl`` / ``decoder.pkl`` from openai/DALL-E)
as this project's :class:`DiscreteVAE`.

The released files are whole pickled modules of the ``dall_e`` package. They are read
here without it: its classes unpickle as plain module shells, whose parameters are then
renamed onto the project's layout (the architecture is the same, see
:mod:`dalle.models.dvae`). ``dalle convert-openai-dvae`` writes the result as a model
folder that `dalle train --image-tokenizer` and `dalle reconstruct` read.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from dalle.models.dvae import DiscreteVAE, DVAEConfig

GROUPS = 4  # the released Encoder and Decoder have four groups (a class constant there)


class _Shell(nn.Module):
    """Stands in for any ``dall_e`` class while unpickling: keeps its state, runs nothing."""

    def forward(self, *args: object) -> None:
        raise TypeError("a dall_e module read without the dall_e package cannot run")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "dall_e" or module.startswith("dall_e."):
            return _Shell
        return super().find_class(module, name)


# torch.load's ``pickle_module``: pickle with dall_e's classes replaced by shells.
_PICKLE = SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="dalle_openai_pickle")


def read_released(path: str | Path) -> nn.Module:
    """A released ``encoder.pkl`` or ``decoder.pkl`` as a module shell with its weights."""
    try:
        module = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable pickle ({type(err).__name__})") from None
    if not isinstance(module, nn.Module) or not hasattr(module, "vocab_size"):
        raise ValueError(f"{path} is not an openai/DALL-E encoder or decoder pickle")
    return module


def config_of(encoder: nn.Module, decoder: nn.Module) -> DVAEConfig:
    """The project config of a released encoder and decoder pair."""
    e, d = vars(encoder), vars(decoder)
    if e["vocab_size"] != d["vocab_size"] or e["n_hid"] != d["n_hid"]:
        raise ValueError("the encoder and decoder are not a pair (vocabulary or width differ)")
    return DVAEConfig(vocab_size=e["vocab_size"], group_count=GROUPS, hidden_width=e["n_hid"],
                      blocks_per_group=e["n_blk_per_group"], decoder_input_width=d["n_init"],
                      channels=e["input_channels"])  # fmt: skip


def project_names(config: DVAEConfig) -> dict[str, str]:
    """Released parameter name (without ``.w`` / ``.b``) -> this project's module path.

    The project's ``blocks`` are flat: the encoder has its input conv at 0, then each
    group's blocks followed by a max-pool (but the last group); the decoder has each
    group's blocks followed by an upsampling (but the last), then a ReLU and the output
    conv. A residual branch is [ReLU, conv] x 4, so conv ``j`` sits at ``2 j - 1``.
    """
    per_group = config.blocks_per_group + 1  # the blocks and a pool or upsampling
    names = {
        "encoder.blocks.input": "encoder.blocks.0",
        "encoder.blocks.output.conv": "encoder.to_logits.1",
        "decoder.blocks.input": "decoder.embed",
        "decoder.blocks.output.conv": f"decoder.blocks.{GROUPS * per_group}",
    }
    for part, first in (("encoder", 1), ("decoder", 0)):
        for g in range(GROUPS):
            for i in range(config.blocks_per_group):
                ours = f"{part}.blocks.{first + g * per_group + i}"
                theirs = f"{part}.blocks.group_{g + 1}.block_{i + 1}"
                names[f"{theirs}.id_path"] = f"{ours}.identity"
                for j in range(1, 5):
                    names[f"{theirs}.res_path.conv_{j}"] = f"{ours}.branch.{2 * j - 1}"
    return names


def convert(encoder: nn.Module, decoder: nn.Module) -> DiscreteVAE:
    """The released pair as a :class:`DiscreteVAE` holding the same weights."""
    config = config_of(encoder, decoder)
    names = project_names(config)
    state = {}
    for part, module in (("encoder", encoder), ("decoder", decoder)):
        for name, tensor in module.state_dict().items():
            match = re.fullmatch(r"(.*)\.([wb])", f"{part}.{name}")
            if match is None or match[1] not in names:
                raise ValueError(f"unexpected parameter {name!r} in the released {part}")
            suffix = "weight" if match[2] == "w" else "bias"
            state[f"{names[match[1]]}.{suffix}"] = tensor.float()
    model = DiscreteVAE(config)
    model.load_state_dict(state)  # strict: every parameter of ours is filled
    return model.eval()


def load_openai_dvae(encoder_path: str | Path, decoder_path: str | Path) -> DiscreteVAE:
    return convert(read_released(encoder_path), read_released(decoder_path))
