"""``tamiyo.gnn_checkpoint``: the GNN policy's weights read from a safetensors file (a trained or deployed policy)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors
import structlog
from safetensors.torch import load as load_safetensors

from esper.nn.policy_gnn import build_tamiyo_gnn
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from esper.nn.policy_contract import TamiyoGNNConfig
    from esper.nn.policy_gnn import TamiyoGNN

_log = structlog.get_logger("actors.tamiyo")


_DETAIL_LIMIT = 300


def load_gnn_weights(path: str, config: TamiyoGNNConfig) -> tuple[TamiyoGNN, str]:
    """A ``tamiyo_gnn_v1`` of ``config``'s sizes (CPU, eval mode) holding the weights in ``path``, and the file's
    SHA-256. safetensors holds tensors only, so reading it runs no code; every tensor of the network must be there,
    with its shape, and nothing else. Blocking (file I/O).

    Raises:
        ConfigError: one line naming tamiyo.gnn_checkpoint: the file is missing or unreadable, is not safetensors,
            does not fit the network, holds a tensor of a non-floating dtype where the network's is floating, or
            holds a NaN or infinite weight.
    """
    where = f"tamiyo.gnn_checkpoint = {path!r}"
    try:
        if Path(path).exists() and not Path(path).is_file():  # a device (/dev/zero) or a FIFO reads without end
            raise ConfigError(f"{where}: not a regular file")
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it: {err.strerror or err}") from err
    digest = hashlib.sha256(data).hexdigest()
    try:
        tensors = load_safetensors(data)
    except (safetensors.SafetensorError, ValueError) as err:
        raise ConfigError(f"{where}: not a safetensors file: {err}") from err
    model = build_tamiyo_gnn(config)
    for name, expected in model.state_dict().items():
        found = tensors.get(name)
        # load_state_dict casts: integer weights were truncated to whole numbers and a policy decided on them.
        if (
            found is not None
            and found.dtype != expected.dtype
            and not (found.is_floating_point() and expected.is_floating_point())
        ):
            raise ConfigError(f"{where}: tensor {name} is {found.dtype}, the network's is {expected.dtype} (not cast)")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        if len(detail) > _DETAIL_LIMIT:  # a missing-keys line lists every key: hundreds
            detail = detail[: _DETAIL_LIMIT - 3] + "..."
        raise ConfigError(f"{where}: the weights do not fit tamiyo_gnn_v1 at these sizes: {detail}") from err
    bad = sorted(name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all())
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ConfigError(f"{where}: non-finite values (NaN or inf) in {shown}")
    _log.info("tamiyo_gnn_weights_loaded", path=path, sha256=digest, tensors=len(tensors))
    return model.eval(), digest
