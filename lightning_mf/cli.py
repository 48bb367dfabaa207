"""`lightning-mf`: LightningCLI's trainer verbs plus the project's tools, behind one console script.

``fit``/``validate``/``test``/``predict`` go to LightningCLI (subclass mode, so every YAML names its
LightningModule by ``class_path``); tools (``shards`` ...) are plain functions run by jsonargparse. LightningCLI
cannot host extra subcommands (it maps each one to a Trainer method), hence this small router.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
from jsonargparse import auto_cli
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_mf.checkpoint import AtomicCheckpointIO
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.tools import shards
from lightning_mf.tools.consolidate import consolidate
from lightning_mf.tools.evaluate import evaluate
from lightning_mf.tools.generate import generate
from lightning_mf.tools.pipeline import pipeline

__all__ = ["main", "run", "MFLightningCLI", "RunConfig"]

TRAINER_VERBS = ("fit", "validate", "test", "predict")
# False alarms on every trainer command on this stack: Lightning's own use of a torch pytree API that torch 2.14
# deprecates, and the IterableDataset-with-__len__ notice (ClipStream's length counts every worker's share exactly).
QUIET_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"Your `IterableDataset` has `__len__` defined")


TOOLS: dict[str, Callable[..., object] | dict[str, Callable[..., object]]] = {
    "shards": {"synthetic": shards.synthetic, "folder": shards.folder, "inspect": shards.inspect},
    "evaluate": evaluate,
    "generate": generate,
    "consolidate": consolidate,
    "pipeline": pipeline,
}
TOOL_HELP = {
    "shards": "write WebDataset shards (synthetic | folder) and inspect them",
    "evaluate": "score a checkpoint's generations (lip sync, Fréchet, vowels, drift) against held-out data",
    "generate": (
        "stream a clip from a first frame and a transcript (mp4 + wav), printing FPS, time to first chunk and NFE"
    ),
    "consolidate": "merge a sharded (FSDP) checkpoint folder into one file for the next stage, evaluate and generate",
    "pipeline": "the whole method in one command: shards, stages 1-3, evaluation, a generated clip (resumable)",
}


def _ints_before_floats(function: Callable[..., Any]) -> None:
    """Make ``int`` the first choice of every ``int``/``float`` parameter of ``function``, so that
    ``--trainer.limit_val_batches 1`` means one batch, not ``1.0`` (all of them).

    jsonargparse tries a Union's members in order, and Python's typing cache can hand Lightning's
    ``Optional[Union[int, float]]`` back as ``Union[float, int, None]`` when another module built that first
    (Lightning issue #21259). ``int | float`` (a ``types.UnionType``) is not cached and keeps its order."""
    annotations = inspect.unwrap(function).__annotations__
    for name, hint in annotations.items():
        members = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and {int, float} <= set(members):
            annotations[name] = functools.reduce(operator.or_, sorted(members, key=lambda t: t is not int))


_ints_before_floats(L.Trainer.__init__)


class MFLightningCLI(LightningCLI):
    """The project's LightningCLI: any LightningModule by ``class_path``, :class:`AVDataModule` as data."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.spec", "model.init_args.spec")  # the time axis is written once, under data

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse ``args`` as given. The router always passes them (from the console, the pipeline or a test), so
        LightningCLI's warning about ``sys.argv`` holding arguments too would fire on every command."""
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer, saving single-file checkpoints atomically unless a config chose its own CheckpointIO."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


class RunConfig(SaveConfigCallback):
    """Saves the resolved config beside the run: ``config.yaml`` for ``fit``, ``config-<verb>.yaml`` for the other
    verbs, so a later ``validate``/``test``/``predict`` never replaces the config the run was trained with. A non-fit
    verb without a logger saves nothing (its log dir would be the working directory)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        verb = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn ("fit", "validate", ...)
        if verb != "fit" and trainer.logger is None:
            return
        self.config_filename = "config.yaml" if verb == "fit" else f"config-{verb}.yaml"
        super().setup(trainer, pl_module, stage)


def _usage() -> str:
    lines = [
        "usage: lightning-mf {fit,validate,test,predict," + ",".join(TOOL_HELP) + "} ...",
        "",
        "Mutual Forcing: fast autoregressive generation of a talking character's video and voice together.",
        "",
        "training (LightningCLI; `lightning-mf fit --help`, configs via --config configs/tiny/<stage>.yaml):",
        "  fit           train a model",
        "  validate      run one validation pass",
        "  test          run one test pass",
        "  predict       write samples from a checkpoint",
        "",
        "tools (`lightning-mf <tool> --help`):",
    ]
    lines += [f"  {name:<13} {text}" for name, text in TOOL_HELP.items()]
    return "\n".join(lines)


def _dashes_to_underscores(args: list[str]) -> list[str]:
    """Accept ``--num-clips`` as well as jsonargparse's ``--num_clips``."""
    out = []
    for arg in args:
        match = re.fullmatch(r"(--[A-Za-z0-9_.-]+)(=.*)?", arg, flags=re.S)
        out.append(match.group(1).replace("-", "_").replace("__", "--", 1) + (match.group(2) or "") if match else arg)
    return out


def main(args: list[str] | None = None) -> None:
    """Entry point of the console script (which exits with what this returns, so it returns None)."""
    run(sys.argv[1:] if args is None else args)


def run(args: list[str]) -> object:
    """Run a command in-process and return its result (tool output, or the LightningCLI object)."""
    args = list(args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return None
    if args[0] in TOOLS:
        return auto_cli(TOOLS, args=_dashes_to_underscores(args), prog="lightning-mf")
    if args[0] in TRAINER_VERBS:
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        return MFLightningCLI(
            L.LightningModule, AVDataModule, subclass_mode_model=True, args=args, save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "lightning-mf"},
        )
    print(_usage(), file=sys.stderr)
    raise SystemExit(f"lightning-mf: unknown command {args[0]!r}")
