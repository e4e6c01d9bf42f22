"""Options and helpers shared by subcommands: model options, inputs, output paths, batches."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from oscar.coding.effort import DEFAULT_EFFORT
from oscar.errors import ConfigError, LimitExceededError, OscarError
from oscar.filetypes import find_files, open_regular_file
from oscar.limits import DEFAULT_MAX_PIXELS, default_max_memory, parse_memory
from oscar.runtime.stages import recording

logger = logging.getLogger(__name__)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="model directory (default: the model embedded in the package)",
    )
    parser.add_argument(
        "--base-model",
        metavar="DIR",
        default=None,
        help="diffusers folder with vae/, unet/, scheduler/ for models that reference one "
        "(default: $OSCAR_BASE_MODEL, then the model's own setting)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (auto: CUDA when available)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="inference dtype of the UNet and VAE (auto: float32, the reference); bfloat16 is "
        "faster on CPUs with AVX-512 BF16 and changes pixels slightly (and the bytes, when "
        "compressing); files decode in any dtype",
    )


def add_tiling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        metavar="PX",
        help="run the VAE and UNet on overlapping tiles of at most PX x PX pixels "
        "(large images; does not change the file format)",
    )
    parser.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        metavar="SIZE",
        help="working-memory budget per image on top of the loaded model, e.g. 4G or 512M; "
        "picks the largest tiles that fit (estimated) and refuses images that cannot fit "
        "(default: half of this machine's memory, rounded down to a power of two)",
    )


def add_effort_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--effort N``; ``help`` replaces the text of the encoding commands (fit-priors)."""
    parser.add_argument(
        "--effort",
        type=int,
        default=DEFAULT_EFFORT,
        metavar="N",
        help=help
        or "encoder effort: N rounds of index search after the nearest-codeword choice "
        f"(default {DEFAULT_EFFORT}: each token considered once; 0: nearest codewords only, "
        "faster and lower quality; more: slower, slightly better). Decoding and the file "
        "format do not change",
    )


def add_steps_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=1,
        metavar="N",
        help="denoising steps: 1 is OSCAR's one-step decoder; N > 1 runs N deterministic DDIM "
        "steps from the level's timestep to 0 (slower; same file)",
    )


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images (and files announcing images) larger than N pixels, before any "
        f"allocation (default {DEFAULT_MAX_PIXELS}: where Pillow refuses decompression bombs)",
    )


def add_force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")


def memory_size(text: str) -> int:
    """--max-memory: a size in bytes, checked while the arguments are parsed (before torch)."""

    try:
        return parse_memory(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def load_codec(args: argparse.Namespace):
    """An OscarCodec from the common model options (imports torch lazily), with a status line
    on a terminal while torch, diffusers and the weights load."""
    with loading_status(args.model):
        # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
        from oscar.coding.bitstream import Limits
        from oscar.coding.codec import OscarCodec
        from oscar.runtime.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # reuse freed memory: fewer page faults (oscar.runtime.allocator)
        limits = Limits(max_pixels=getattr(args, "max_pixels", Limits.max_pixels))
        max_memory = getattr(args, "max_memory", None)
        # No --max-memory: a budget derived from the machine (oscar.limits), so that a large
        # image is tiled or refused with one line instead of running out of memory.
        memory = default_max_memory() if max_memory is None else max_memory
        return OscarCodec.from_pretrained(
            args.model,
            device=args.device,
            base_model=args.base_model,
            limits=limits,
            dtype=getattr(args, "dtype", "auto"),
            tile_size=getattr(args, "tile_size", None),
            max_memory=memory,
            effort=getattr(args, "effort", DEFAULT_EFFORT),
        )


@contextmanager
def loading_status(model: str | None) -> Iterator[None]:
    """On a terminal, one status line on stderr while the model (and torch) load; erased after."""
    if not sys.stderr.isatty():
        yield
        return
    what = f"model {model}" if model else "the embedded model"
    print(f"oscar: loading {what} …", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def read_input_file(path: Path, max_bytes: int) -> bytes:
    """Read a file whole, refusing one larger than ``max_bytes`` before reading it (and reading
    at most ``max_bytes + 1`` bytes, should it grow meanwhile)."""

    try:
        # A folder, a FIFO, a device: refused on the descriptor, before reading (no hang).
        with open_regular_file(path, ConfigError) as f:
            data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise LimitExceededError(f"{path} is larger than any valid file ({max_bytes} bytes)")
    return data


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def plan_outputs(
    inputs: Sequence[str], output: str, suffixes: Iterable[str], out_suffix: str
) -> list[Job]:
    """Map inputs to output paths.

    One input file and an output that is not an existing folder (and does not end in a path
    separator): the output is that file. Otherwise the output is a folder and each input keeps
    its name (and its place below an input folder) with ``out_suffix``.
    """
    found = find_files(inputs, suffixes)
    if not found:
        raise ConfigError("no input files found")
    single_file = (
        len(inputs) == 1
        and not Path(inputs[0]).is_dir()
        and not Path(output).is_dir()
        and not output.endswith(("/", os.sep))
    )
    if single_file:
        return [Job(found[0][0], Path(output))]
    out_dir = Path(output)
    jobs = [Job(src, out_dir / rel.with_suffix(out_suffix)) for src, rel in found]
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target in seen:
            raise ConfigError(
                f"{seen[job.target]} and {job.source} would both be written to {job.target}"
            )
        seen[job.target] = job.source
    return jobs


@contextmanager
def _stage_bar(stages: Sequence[str], job: Job, stacked: bool) -> Iterator[None]:
    """The stage progress bar of one file (under the per-file bar when ``stacked``), if any."""
    if not stages:
        yield
        return
    # lazy: tqdm costs ~40 ms that --help and usage errors do not need
    from oscar.runtime.progress import StageProgress

    position = 1 if stacked else 0
    with StageProgress(stages, job.source.name, position=position) as bar, recording(bar):
        yield


def run_batch(
    jobs: Sequence[Job], work: Callable[[Job], str], desc: str, stages: Sequence[str] = ()
) -> int:
    """Run ``work`` on every job; a failure is reported with its file and the rest go on.

    With ``stages`` (the codec stages ``work`` runs, in order), each file also gets a progress
    bar of its stages (``oscar.runtime.progress``; on a terminal, for calls longer than a second).
    Returns the exit code: 0 when all succeeded, 1 when any failed.
    """
    # lazy: tqdm costs ~40 ms that --help and usage errors do not need
    from tqdm.auto import tqdm

    failed = 0
    show_bar = len(jobs) > 1
    bar = tqdm(jobs, desc=desc, unit="file", disable=not show_bar or None, file=sys.stderr)
    for job in bar:
        try:
            with _stage_bar(stages, job, stacked=show_bar):
                line = work(job)
        except OscarError as exc:
            failed += 1
            text = str(exc)
            where = "" if text.startswith(str(job.source)) else f"{job.source}: "
            message = f"oscar: error: {where}{text}"
            (bar.write if show_bar else print)(message, file=sys.stderr)
            continue
        except Exception as exc:
            if _out_of_memory(exc):
                failed += 1
                message = (
                    f"oscar: error: {job.source}: out of memory ({type(exc).__name__}); "
                    "lower --max-memory (tiles) or --max-pixels, or free memory"
                )
                (bar.write if show_bar else print)(message, file=sys.stderr)
                continue
            # A bug or an exhausted resource (MemoryError, a torch allocation failure) on one
            # file: report it with its name and go on with the others; -v shows the traceback.
            failed += 1
            logger.info("%s failed with a traceback:", job.source, exc_info=True)
            message = (
                f"oscar: error: {job.source}: internal error: {type(exc).__name__}: {exc} "
                "(run with -v for the traceback)"
            )
            (bar.write if show_bar else print)(" ".join(message.split()), file=sys.stderr)
            continue
        (bar.write if show_bar else print)(line)
    if failed and len(jobs) > 1:
        print(f"oscar: {failed} of {len(jobs)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: MemoryError, or torch's RuntimeError ("can't allocate memory",
    "DefaultCPUAllocator", CUDA "out of memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        key in text for key in ("can't allocate memory", "defaultcpuallocator", "out of memory")
    )
