"""``python -m esper.export runs/<run-id> OUT.safetensors [--step N]``: a run's trained model's weights as a plain
safetensors state_dict. Exit status 0 on success; 2 with a one-line error when the run or its checkpoint cannot be
loaded or the file cannot be written.
"""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Load the model (esper.load_model), write its state_dict's tensors; returns the exit status (``out`` /
    ``err``: stdout / stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
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
    call = f"esper.load_model({str(args.run_dir)!r}{'' if args.step is None else f', step={args.step}'})"
    try:
        atomic_write_bytes(args.out, save(tensors, metadata={"esper_model": call}), shared=True)
    except OSError as error:
        err.write(f"esper.export: cannot write {args.out}: {error.strerror or error}\n")
        return EXIT_FAILED
    out.write(
        f"wrote {args.out} ({len(tensors)} tensors): the state_dict of {call}, which rebuilds the grown model"
        " (model.load_state_dict(safetensors.torch.load_file(...), strict=False) puts these weights back into it)\n"
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
