"""The training benchmark: the recipe against a plain loop, start-up at scale, the smdebug hook's cost.

    python -m scripts.bench.train [--sections recipe startup hook data-parallel] [--out FILE] [...]
    make bench-train

Four sections, each measured in this one invocation (``--sections`` runs a subset):

* ``recipe`` (``scripts.bench.recipe``): the from-scratch case on a real dataset (the UCI digits)
  with the default recipe, the trainer under the toolkit side by side with a plain torchvision
  loop (``scripts.bench.plain_loop``), the time breakdown, and a learning-rate sweep;
* ``startup`` (``scripts.bench.startup``): job start to the first step on 100,000 images;
* ``hook``, below: the smdebug hook's cost and data loading against model steps.

The ``hook`` section, in one process, on one generated dataset, with one seed, for each image size:

* data loader: images/s of the training loader alone (decode, augmentation, collate; as many
  workers as training uses by default);
* model step: images/s of ``train.train_one_epoch`` on batches already in memory, for two
  identical networks, one without a hook and one with the local default hook
  (``classifier.debugger`` with the default save interval). The two take turns step by step
  (ABBA order), so both see the same load on a shared machine; the hook's cost is the
  difference in total time over all steps, save steps included. CPU time is reported too:
  it is less sensitive to other processes than wall time;
* step timing: what ``classifier.step_timing`` adds to each training step (the trainer times
  every step), from an empty loop timed against the bare loop.

The ``data-parallel`` section (``scripts.bench.data_parallel``) trains the whole trainer with one
process and with two (DDP), for images/s and test accuracy.

Writes a Markdown report (default ``benchmarks/train.md``).
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

import train
from classifier import models, optimization, sagemaker_env
from classifier.checkpoints import StopSignal
from classifier.data import build_loaders, load_splits
from classifier.debugger import TRAIN_ONLY_COLLECTIONS, Debugger
from classifier.hyperparameters import build_parser
from classifier.step_timing import StepTimer
from scripts.bench import data_parallel, recipe, startup, suspects
from scripts.datasets.sample import make_dataset

DEFAULTS = build_parser().parse_args([])
CPU = torch.device("cpu")
WARMUP_STEPS = 2
SECTIONS = ("recipe", "startup", "hook", "data-parallel")
# The default policy for a random initialisation (the hook section has no ImageNet weights).
HOOK_FINE_TUNE = models.resolve_fine_tune(DEFAULTS.fine_tune, pretrained=False)


def loader_throughput(loader, passes: int) -> float:
    """Images per second of a loader on its own."""
    next(iter(loader))  # start the workers
    started, images = time.perf_counter(), 0
    for _ in range(passes):
        for batch, _targets in loader:
            images += batch.size(0)
    return images / (time.perf_counter() - started)


@dataclass
class Variant:
    """One network (the same seed, so the same weights as the other) and its step timings."""

    model: nn.Module
    debugger: Debugger
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=DEFAULTS.label_smoothing)
        self.optimizer = optimization.build_optimizer(
            self.model, DEFAULTS.optimizer, DEFAULTS.learning_rate, DEFAULTS.momentum, DEFAULTS.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.debugger.watch(self.model, self.criterion)
        self.debugger.train()

    def step(self, batch) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        train.train_one_epoch(
            self.model, [batch], self.criterion, self.optimizer, self.scaler, CPU, StopSignal()
        )
        self.wall_s.append(time.perf_counter() - wall)
        self.cpu_s.append(time.process_time() - cpu)


def build_variant(model_name: str, num_classes: int, seed: int, debugger: Debugger) -> Variant:
    torch.manual_seed(seed)
    return Variant(models.build_model(model_name, num_classes, fine_tune=HOOK_FINE_TUNE), debugger)


def measure(args: argparse.Namespace, data, image_size: int, workdir: Path) -> dict:
    """Loader and step throughput at one image size, with and without the hook."""
    workers = sagemaker_env.num_cpus()
    torch.manual_seed(args.seed)
    loader = build_loaders(data, image_size, args.batch_size, workers, pin_memory=False,
                           augment=DEFAULTS.augment)["train"]
    loader_ips = loader_throughput(loader, passes=2)
    batches = list(itertools.islice(itertools.cycle(list(loader)), WARMUP_STEPS + args.steps))
    del loader  # stops the workers

    tensors = workdir / f"tensors-{image_size}"
    hook = Debugger.create(workdir / "no-config.json", tensors, args.save_interval)
    num_classes = len(data.class_folders)
    plain = build_variant(args.model_name, num_classes, args.seed, Debugger())
    hooked = build_variant(args.model_name, num_classes, args.seed, hook)
    for index, batch in enumerate(batches):
        for variant in (plain, hooked) if index % 2 == 0 else (hooked, plain):  # ABBA
            variant.step(batch)
    hook.close()

    timed = range(WARMUP_STEPS, len(batches))
    images = sum(batches[i][0].size(0) for i in timed)
    plain_wall, hooked_wall = sum(plain.wall_s[i] for i in timed), sum(hooked.wall_s[i] for i in timed)
    extra = {i: hooked.wall_s[i] - plain.wall_s[i] for i in timed}  # the same batch, back to back
    # The hook counts steps from 0 (warmup included): it saves at steps 0, N, 2N, ...
    save_steps = [i for i in timed if i % args.save_interval == 0]
    step_extra = statistics.median(extra[i] for i in timed if i not in save_steps)
    save_extra = statistics.mean([extra[i] for i in save_steps] or [0.0])
    return {
        "image_size": image_size,
        "loader_ips": loader_ips,
        "plain_ips": images / plain_wall,
        "hooked_ips": images / hooked_wall,
        "overhead_wall": hooked_wall / plain_wall - 1,
        "overhead_cpu": sum(hooked.cpu_s[i] for i in timed) / sum(plain.cpu_s[i] for i in timed) - 1,
        "step_ms": statistics.median(plain.wall_s[i] for i in timed) * 1000,
        "step_extra_ms": step_extra * 1000,
        "save_extra_s": save_extra,
        "timed_saves": len(save_steps),
        # Robust to other processes' load: typical per-step cost plus the measured save steps.
        "overhead_estimate": (step_extra * (len(timed) - len(save_steps)) + save_extra * len(save_steps))
        / plain_wall,
    }


def step_timer_cost_us(workdir: Path, steps: int = 100_000, repeats: int = 5) -> float:
    """Microseconds the step timer adds to one step: an empty loop, timed, against the bare loop
    (the best of a few tries each: the least disturbed by other processes)."""
    def seconds(batches) -> float:
        started = time.perf_counter()
        for _ in batches:
            pass
        return time.perf_counter() - started

    timer = StepTimer(workdir / "step-timings.jsonl")
    bare = min(seconds(range(steps)) for _ in range(repeats))
    timed = min(seconds(timer.timed(range(steps), epoch=1)) for _ in range(repeats))
    timer.flush()
    return max(timed - bare, 0.0) / steps * 1e6


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


def hook_report(args: argparse.Namespace, results: list[dict], timer_us: float) -> str:
    """The ``hook`` section: the smdebug hook's cost, data loading against model steps, the step
    timer's cost."""
    workers = sagemaker_env.num_cpus()
    hook_table = markdown_table(
        ["image size", "no hook, images/s", "default hook, images/s", "overhead: wall", "CPU",
         "estimate", "median step, ms", "extra per step, ms", "extra per save, s"],
        [[f"{r['image_size']} px", f"{r['plain_ips']:.1f}", f"{r['hooked_ips']:.1f}",
          f"{r['overhead_wall']:+.1%}", f"{r['overhead_cpu']:+.1%}", f"**{r['overhead_estimate']:+.1%}**",
          f"{r['step_ms']:.0f}", f"{r['step_extra_ms']:+.1f}",
          f"{r['save_extra_s']:.2f} (x{r['timed_saves']})"] for r in results],
    )
    loader_table = markdown_table(
        ["image size", f"data loader alone ({workers} workers), images/s", "model step alone, images/s",
         "bottleneck"],
        [[f"{r['image_size']} px", f"{r['loader_ips']:.0f}", f"{r['plain_ips']:.1f}",
          "data loader" if r["loader_ips"] < r["plain_ips"] else "model step"] for r in results],
    )
    return f"""## smdebug hook cost

Setup: {args.model_name} from a random initialisation (fine-tune `{HOOK_FINE_TUNE}`, {DEFAULTS.optimizer}),
batch {args.batch_size}, seed {args.seed}, crops from {args.source_size} px JPEGs; {args.steps} timed steps
per variant after {WARMUP_STEPS} warmup steps, the two variants alternating step by step; {args.threads} torch
thread(s) for the model steps (on a shared machine, more threads than free cores make OpenMP
spin and step times swing tenfold).

The local default hook saves the loss every step and {", ".join(TRAIN_ONLY_COLLECTIONS)} every
{args.save_interval} steps (in TRAIN mode only). Overhead = extra training time with
the hook, save steps included (target: at most +10%), three ways: total wall time, total CPU
time, and an estimate that other processes' load barely moves: the median extra time of a
step that saves nothing (each step of the hooked network is paired with the same batch on the
other) times those steps, plus the measured extra time of the save steps.

{hook_table}

The extra times hardly depend on the step's length (Python hooks, copying and writing the
tensors), so with a faster step (a GPU) the overhead grows to about
`extra per step / step + extra per save / (debugger-save-interval x step)`: raise the
interval in proportion to keep the second term small.

## Data loading against model steps

{loader_table}

## Step timing cost

The trainer times every training step (`classifier/step_timing.py`: three clock readings, a
record kept in memory, JSON lines appended 200 steps at a time): **{timer_us:.1f} µs per step**,
{timer_us / 1000 / results[0]['step_ms']:.4%} of the median model step above ({results[0]['step_ms']:.0f} ms).
"""


def report(sections: list[str], verdicts: list[str]) -> str:
    """The whole of ``benchmarks/train.md``: verdicts on top, then each section."""
    machine = f"{platform.machine()}, {sagemaker_env.num_cpus()} CPU cores, no GPU"
    summary = "\n".join(f"- {line}" for line in verdicts)
    body = "\n".join(sections)
    return f"""# Training benchmark

Generated by `make bench-train` (`scripts/bench/train.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
Machine: {machine}; torch {torch.__version__}.

{summary}

{body}"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--sweep", type=float, nargs="*", default=list(recipe.SWEEP_LEARNING_RATES),
                        help="other learning rates the recipe section trains with (none: --sweep alone)")
    parser.add_argument("--startup-images", type=int, default=startup.IMAGES,
                        help="images in the start-up section's generated folder")
    parser.add_argument("--model-name", default=DEFAULTS.model_name)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model steps (1: stable timings on a shared machine)")
    parser.add_argument("--source-size", type=int, default=160, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--save-interval", type=int, default=DEFAULTS.debugger_save_interval)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/train.md"))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    # Removed at exit, after smdebug's own exit handler has written its end-of-trial marker there.
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    sections, verdicts = [], []
    if "recipe" in args.sections:
        results = recipe.measure(workdir, tuple(args.sweep))
        found = suspects.measure(results.data, recipe.CASE["image-size"])
        sections.append(recipe.markdown(results) + "\n" + suspects.markdown(found, torch.get_num_threads()))
        verdicts.append(recipe.verdict(results))
    if "startup" in args.sections:
        started = startup.measure(workdir, args.startup_images)
        sections.append(startup.markdown(started))
        verdicts.append(startup.verdict(started))
    if "hook" in args.sections:
        torch.set_num_threads(args.threads)  # this process's model steps only
        counts = {"train": 64, "valid": 1, "test": 1}
        root = make_dataset(workdir / "data", 5, counts, size=args.source_size, seed=args.seed)
        data = load_splits({"training": root})
        results = [measure(args, data, size, workdir) for size in args.image_sizes]
        sections.append(hook_report(args, results, step_timer_cost_us(workdir)))
        verdicts.append("The smdebug hook (local default) costs " + ", ".join(
            f"{r['overhead_estimate']:+.1%} at {r['image_size']} px" for r in results) + " of training time.")

    if "data-parallel" in args.sections:
        sections.append(data_parallel.report(data_parallel.measure(workdir), markdown_table))

    text = report(sections, verdicts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
