"""``python -m esper.export runs/<run-id> OUT.safetensors [--step N]``: a run's weights as safetensors.

A run's trained model's weights as a plain safetensors state_dict. Exit status 0 on success; 2 with a one-line error,
nothing written, when the run or its checkpoint cannot be loaded, OUT is inside the run directory or exists (without
``--force``), or it cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import torch
from safetensors.torch import save

from actors.tolaria.checkpoints import CheckpointError
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError
from esper.trained_model import load_model

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK: Final = 0
EXIT_FAILED: Final = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m esper.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run directory (runs/<run-id>)")
    parser.add_argument("out", type=Path, help="the safetensors file to write")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest good one)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (never one inside the run)")
    return parser


def refused_out(run_dir: Path, out: Path, *, force: bool) -> str | None:
    """Why ``out`` must not be written (None: it may be): a file inside the run directory (symlinks resolved), whose
    manifest, checkpoints or summary it would replace, can never be; an existing one only with ``force``."""
    try:
        # Resolved and as written: a checkpoints folder linked to another disk is the run's all the same.
        inside = out.resolve().is_relative_to(run_dir.resolve())
        inside = inside or Path(os.path.abspath(out)).is_relative_to(os.path.abspath(run_dir))
        exists = out.exists() or out.is_symlink()
    except (OSError, RuntimeError) as err:  # a symbolic link loop, a folder it may not look into
        return f"{out}: cannot be checked ({err})"
    if inside:
        return f"{out} is inside the run directory {run_dir}: writing it would replace the run's own files"
    if not force and exists:
        return f"{out} exists (--force replaces it)"
    return None


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Load the model (esper.load_model), write its state_dict's tensors; returns the exit status (``out`` /
    ``err``: stdout / stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    refusal = refused_out(args.run_dir, args.out, force=args.force)
    if refusal is not None:
        err.write(f"esper.export: {refusal}\n")
        return EXIT_FAILED
    try:
        model = load_model(args.run_dir, step=args.step)
    except (ConfigError, CheckpointError) as error:
        err.write(f"esper.export: {error}\n")
        return EXIT_FAILED
    # The slots' control state (mode, alpha, blend) is no tensor: the architecture it describes is rebuilt by
    # load_model, not from this file. Contiguous clones: safetensors refuses tensors that share memory (tied weights)
    # and those that are not contiguous (a Conv2d's weight, kept channels_last as the run trained it).
    tensors = {
        k: v.detach().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    # Absolute: the hint, in the file's metadata and on the console, is used from other directories (a notebook's).
    where = os.path.abspath(args.run_dir)
    call = f"esper.load_model({where!r}{'' if args.step is None else f', step={args.step}'})"
    try:
        # Not replacing, unless forced, a file that appeared while the model loaded: the check above was seconds ago.
        atomic_write_bytes(args.out, save(tensors, metadata={"esper_model": call}), shared=True, replace=args.force)
    except FileExistsError:
        err.write(f"esper.export: {args.out} exists (--force replaces it)\n")
        return EXIT_FAILED
    except OSError as error:
        err.write(f"esper.export: cannot write {args.out}: {error.strerror or error}\n")
        return EXIT_FAILED
    # strict=False because the slots' control state (their _extra_state keys) is not in the file; the unexpected
    # keys must still be checked: into the plain host model, without the grown seeds, the seeds' weights would be
    # dropped silently and it would score otherwise.
    out.write(
        f"wrote {args.out} ({len(tensors)} tensors): the state_dict of {call}, which rebuilds the grown model;"
        " to put these weights back into that model, missing, unexpected = model.load_state_dict("
        f"safetensors.torch.load_file({str(args.out)!r}), strict=False): unexpected must be empty and missing hold"
        " only the slots' '...esper_slot._extra_state' keys (into any other model, such as the host without its"
        " seeds, the weights do not fit)\n"
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
