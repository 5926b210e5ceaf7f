"""One record per trainable stage, after torchtitan's ``TrainSpec``.

A :class:`StageSpec` says everything the rest of the program needs to know about a stage:
its typed training config and the model presets it starts from, the task the training
loop runs, the model class its checkpoints and exports hold, and the trained folders it
reads (a caption tokenizer, an image tokenizer). The CLI's training commands, `dalle
model-info`, `dalle export-checkpoint`, the resume check and `make demo` are all written
against these records, so a new stage (DALL-E 2's prior, decoder, upsampler) is one more
record, not one more copy of each.

A :class:`TrainCommand` groups the stages one command trains: ``train-image-tokenizer``
trains the paper's dVAE or FSQ, chosen by the preset's family.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle.config import ConfigError, load_config, peek_key
from dalle.models.clip import CLIP, CLIP_PRESETS
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.decoder import DECODER_PRESETS, ImageDecoder
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE
from dalle.models.fsq import FSQ_PRESETS, FSQTokenizer
from dalle.models.prior import PRIOR_PRESETS, DiffusionPrior
from dalle.models.token_decoder import TOKEN_DECODER_PRESETS, TokenDecoder
from dalle.models.transformer_decoder import TRANSFORMER_DECODER_PRESETS, TransformerDecoder
from dalle.models.upsampler import UPSAMPLER_PRESETS, Upsampler
from dalle.training.clip_task import CLIPTask, CLIPTrainConfig
from dalle.training.dalle_task import DALLETask, DALLETrainConfig
from dalle.training.decoder_task import (
    DecoderTask,
    DecoderTrainConfig,
    TokenDecoderTask,
    TokenDecoderTrainConfig,
    TransformerDecoderTask,
    TransformerDecoderTrainConfig,
)
from dalle.training.dvae_task import DVAETask, DVAETrainConfig
from dalle.training.fsq_task import FSQTask, FSQTrainConfig
from dalle.training.loop import Task
from dalle.training.prior_task import PriorTask, PriorTrainConfig
from dalle.training.upsampler_task import UpsamplerTask, UpsamplerTrainConfig

# What the trained folders a stage reads are, for messages: config key -> description.
FOLDER_NAMES = {
    "tokenizer": "caption tokenizer (a folder with tokenizer.json)",
    "image_tokenizer": "image tokenizer (dVAE, FSQ)",
    "clip": "CLIP (a `dalle train-clip` folder)",
}


@dataclass(frozen=True)
class StageSpec:
    """A trainable stage: its settings, its model and how the loop trains it."""

    name: str  # the model family, as users call it: "dVAE", "FSQ", "transformer", "CLIP"
    config_class: type  # the typed settings of a run: preset, model, data, loop, optim, eval
    presets: Mapping[str, Any]  # preset name -> model config (``config_class().model``)
    model_class: type[nn.Module]
    task_class: type  # ``task_class(config, device)`` is the loop's :class:`Task`
    # Config keys that name trained folders the stage reads: required, fingerprinted for
    # the resume check, and copied into an exported model folder.
    inputs: tuple[str, ...] = ()
    # Folders the stage may read (fingerprinted for the resume check, and copied into an
    # exported model folder, when named).
    optional_inputs: tuple[str, ...] = ()

    @property
    def default_preset(self) -> str:
        return self.config_class.preset

    def build_config(self, path: str | Path | None, overrides: Sequence[str]) -> Any:
        """The run's settings: the preset's model (from the file or overrides, else the
        default), then the file, then the overrides."""
        preset = peek_key("preset", path, overrides) or self.default_preset
        if preset not in self.presets:
            raise ConfigError(f"unknown {self.name} preset {preset!r}; "
                              f"choose from {sorted(self.presets)}")  # fmt: skip
        base = self.config_class(preset=preset, model=copy.deepcopy(self.presets[preset]))
        return load_config(self.config_class, path, overrides, base=base)

    def check_inputs(self, config: Any) -> None:
        """Every trained folder the stage reads must be named (training cannot start
        without them)."""
        for key in self.inputs:
            if not getattr(config, key):
                raise ConfigError(f"'{key}' is required: the folder of a trained "
                                  f"{FOLDER_NAMES[key]}")  # fmt: skip

    def build_task(self, config: Any, device: torch.device) -> Task:
        return self.task_class(config, device)

    def build_model(self, preset: str, device: str | torch.device = "meta") -> nn.Module:
        """The preset's model, untrained; on the meta device by default (no memory)."""
        with torch.device(device):
            return self.model_class(self.presets[preset])


DVAE = StageSpec("dVAE", DVAETrainConfig, DVAE_PRESETS, DiscreteVAE, DVAETask)
FSQ = StageSpec("FSQ", FSQTrainConfig, FSQ_PRESETS, FSQTokenizer, FSQTask)
TRANSFORMER = StageSpec("transformer", DALLETrainConfig, DALLE_PRESETS, DALLETransformer,
                        DALLETask, inputs=("image_tokenizer", "tokenizer"))  # fmt: skip
CLIP_STAGE = StageSpec("CLIP", CLIPTrainConfig, CLIP_PRESETS, CLIP, CLIPTask,
                       inputs=("tokenizer",), optional_inputs=("image_tokenizer",))  # fmt: skip
PRIOR = StageSpec("prior", PriorTrainConfig, PRIOR_PRESETS, DiffusionPrior, PriorTask,
                  inputs=("clip",))  # fmt: skip
DECODER = StageSpec("decoder", DecoderTrainConfig, DECODER_PRESETS, ImageDecoder, DecoderTask,
                    inputs=("clip",), optional_inputs=("image_tokenizer",))  # fmt: skip
TOKEN_DECODER = StageSpec("token decoder", TokenDecoderTrainConfig, TOKEN_DECODER_PRESETS,
                          TokenDecoder, TokenDecoderTask,
                          inputs=("clip", "image_tokenizer"))  # fmt: skip
TRANSFORMER_DECODER = StageSpec("transformer decoder", TransformerDecoderTrainConfig,
                                TRANSFORMER_DECODER_PRESETS, TransformerDecoder,
                                TransformerDecoderTask,
                                inputs=("clip", "image_tokenizer"))  # fmt: skip
UPSAMPLER = StageSpec("upsampler", UpsamplerTrainConfig, UPSAMPLER_PRESETS, Upsampler,
                      UpsamplerTask)  # fmt: skip
STAGES: tuple[StageSpec, ...] = (DVAE, FSQ, TRANSFORMER, CLIP_STAGE, PRIOR, DECODER,
                                 TOKEN_DECODER, TRANSFORMER_DECODER, UPSAMPLER)  # fmt: skip


@dataclass(frozen=True)
class TrainCommand:
    """A `dalle` training command and the stages it trains (the first is the default;
    a preset of another's family picks that one)."""

    name: str
    help: str
    stages: tuple[StageSpec, ...]

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key for s in self.stages for key in s.inputs))

    def stage_for(self, path: str | Path | None, overrides: Sequence[str]) -> StageSpec:
        """The stage whose presets hold the run's preset (the first when none is named)."""
        preset = peek_key("preset", path, overrides)
        if preset is None:
            return self.stages[0]
        for stage in self.stages:
            if preset in stage.presets:
                return stage
        known = " or ".join(str(sorted(s.presets)) for s in self.stages)
        what = " / ".join(s.name for s in self.stages)
        raise ConfigError(f"unknown {what} preset {preset!r}; choose from {known}")

    def build_config(
        self, path: str | Path | None, overrides: Sequence[str]
    ) -> tuple[StageSpec, Any]:
        stage = self.stage_for(path, overrides)
        return stage, stage.build_config(path, overrides)


TRAIN_COMMANDS: tuple[TrainCommand, ...] = (
    TrainCommand("train-image-tokenizer",
                 "an image tokenizer: the paper's dVAE (dvae-* presets) or FSQ (fsq-* presets)",
                 (DVAE, FSQ)),
    TrainCommand("train", "the DALL-E transformer", (TRANSFORMER,)),
    TrainCommand("train-clip", "the CLIP model", (CLIP_STAGE,)),
    TrainCommand("train-prior", "DALL-E 2's diffusion prior (caption to CLIP image embedding)",
                 (PRIOR,)),
    TrainCommand("train-decoder",
                 "DALL-E 2's decoder (CLIP image embedding to image): diffusion of pixels or of "
                 "an FSQ tokenizer's codes (decoder-* presets), masked-token diffusion of an "
                 "image tokenizer's tokens (token-decoder-* presets), or those tokens one "
                 "after another by a transformer (transformer-decoder-* presets)",
                 (DECODER, TOKEN_DECODER, TRANSFORMER_DECODER)),
    TrainCommand("train-upsampler", "DALL-E 2's upsampler (an image to one `scale` times larger)",
                 (UPSAMPLER,)),
)  # fmt: skip
IMAGE_TOKENIZER = TRAIN_COMMANDS[0]


def stage_of_preset(preset: str) -> StageSpec:
    for stage in STAGES:
        if preset in stage.presets:
            return stage
    names = ", ".join(sorted(p for s in STAGES for p in s.presets))
    raise ValueError(f"unknown preset {preset!r}; choose from {names}")


def stage_of_model(model_type: str) -> StageSpec:
    """The stage whose model class is named ``model_type`` (as checkpoints record it)."""
    for stage in STAGES:
        if stage.model_class.__name__ == model_type:
            return stage
    raise ValueError(f"unknown model type {model_type!r}")
