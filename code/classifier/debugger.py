"""The SageMaker Debugger (smdebug) hook around the training loop.

When the job has Debugger enabled, SageMaker writes ``input/config/debughookconfig.json`` and
the hook follows it (and SageMaker uploads what it writes). Otherwise a local default hook
saves the loss at every step (TRAIN and EVAL: scalars are cheap, and the loss rules compare
every evaluation batch) and the weights, biases and gradients (TRAIN) every ``save_interval``
steps into a folder of our choosing (by default in ``output/data``, which SageMaker uploads).
If smdebug cannot be imported, training goes on without it after one warning.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)

LOCAL_COLLECTIONS = ("losses", "weights", "biases", "gradients")
TRAIN_ONLY_COLLECTIONS = ("weights", "biases", "gradients")
# smdebug writes this file when a hook closes, and refuses to reuse a folder that holds it.
END_OF_TRIAL_FILE = "training_job_end.ts"


def _import_smdebug():
    try:
        import smdebug.pytorch as smd
    except Exception as error:  # ImportError, or an incompatible numpy/protobuf failing at import
        logger.warning(
            "smdebug cannot be imported (%s: %s): training continues without the Debugger hook",
            type(error).__name__, error,
        )
        return None
    return smd


class Debugger:
    """The smdebug hook, or nothing: the training loop calls the same methods either way."""

    def __init__(self, hook=None, modes=None):
        self.hook = hook
        self._modes = modes

    @classmethod
    def create(cls, config_file: Path, local_out_dir: Path, save_interval: int, local_default: bool = True):
        """The hook from SageMaker's JSON config if present, else the local default (if wanted)."""
        if not config_file.is_file() and not local_default:
            logger.info("debugger: off (no SageMaker Debugger config, local default disabled)")
            return cls()
        smd = _import_smdebug()
        if smd is None:
            return cls()
        if config_file.is_file():
            hook = smd.Hook.create_from_json_file(str(config_file))
            logger.info("debugger: hook from SageMaker config %s, writing to %s", config_file, hook.out_dir)
        else:
            _clear_finished_trial(local_out_dir)
            hook = smd.Hook(
                out_dir=str(local_out_dir),
                save_config=smd.SaveConfig(save_interval=save_interval),
                include_collections=list(LOCAL_COLLECTIONS),
            )
            every_step = smd.SaveConfigMode(save_interval=1)
            losses = hook.get_collection("losses")
            losses.save_config = {smd.modes.TRAIN: every_step, smd.modes.EVAL: every_step}
            # Parameters and gradients only change in training: saving them in EVAL mode too
            # would cost time and disk for copies of the same tensors.
            for name in TRAIN_ONLY_COLLECTIONS:
                hook.get_collection(name).save_config = {
                    smd.modes.TRAIN: smd.SaveConfigMode(save_interval=save_interval),
                    smd.modes.EVAL: smd.SaveConfigMode(end_step=0),  # never
                }
            logger.info(
                "debugger: local hook saving the loss every step and %s every %d steps to %s",
                ", ".join(TRAIN_ONLY_COLLECTIONS), save_interval, local_out_dir,
            )
        return cls(hook, smd.modes)

    def watch(self, model: nn.Module, criterion: nn.Module) -> None:
        """Registers the model (weights, biases, gradients of trainable layers) and the loss.

        Call after freezing layers: gradients are hooked only on parameters that train.
        """
        if self.hook is not None:
            self.hook.register_module(model)
            self.hook.register_loss(criterion)

    def train(self) -> None:
        if self.hook is not None:
            self.hook.set_mode(self._modes.TRAIN)

    def eval(self) -> None:
        if self.hook is not None:
            self.hook.set_mode(self._modes.EVAL)

    def close(self) -> None:
        if self.hook is not None:
            self.hook.close()
            self.hook = None


def _clear_finished_trial(out_dir: Path) -> None:
    # A run that starts again in the same folder (a resumed or repeated local run) starts a new
    # trial: smdebug numbers steps from 0 again and cannot append to a finished one.
    if (out_dir / END_OF_TRIAL_FILE).exists() or (out_dir.is_dir() and any(out_dir.iterdir())):
        logger.warning("debugger: replacing the earlier trial in %s", out_dir)
        shutil.rmtree(out_dir)
