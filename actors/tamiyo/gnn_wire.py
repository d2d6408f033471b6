"""The GNN worker's wire: length-prefixed msgpack frames, and the messages the parent and the worker exchange."""

from __future__ import annotations

import select
import struct
from typing import IO

import msgspec

from actors.tamiyo.gnn_state import GnnPolicyState
from actors.tamiyo.policy import Decision, Observation
from schemas.control import BlendConfig

LENGTH = struct.Struct(">I")


def send(out: IO[bytes], payload: bytes) -> None:
    out.write(LENGTH.pack(len(payload)) + payload)
    out.flush()


def recv(source: IO[bytes], stall_s: float | None = None) -> bytes:
    """One length-prefixed frame.

    Raises:
        EOFError: the other side closed (or died) before a whole frame.
        TimeoutError: with ``stall_s``, no byte came for that long in the middle of the frame (a worker that wrote a
            header and stopped held the policy lane, and every later step, for good).
    """
    header = read_exact(source, LENGTH.size, stall_s)
    return read_exact(source, LENGTH.unpack(header)[0], stall_s)


def read_exact(source: IO[bytes], size: int, stall_s: float | None = None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if stall_s is not None and not select.select([source], [], [], stall_s)[0]:
            raise TimeoutError(f"no data for {stall_s} s with {size} bytes of the frame still to come")
        chunk = source.read(size)
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Setup(msgspec.Struct, frozen=True):
    hidden: int
    gat_hidden: int
    heads: int
    dropout: float
    weights: bytes
    weights_digest: str
    blueprint_ids: tuple[str, ...]
    layer_types: tuple[str, ...]
    activations: tuple[str, ...]
    max_layers: int
    max_seeds: int
    max_blueprints: int
    normaliser_alpha: float
    version: str
    blend: BlendConfig
    max_ramp_steps: int
    lr_delta_bound: float
    num_threads: int | None


class Decide(msgspec.Struct, frozen=True, tag="decide"):
    observation: Observation
    state: GnnPolicyState | None = None  # a state the parent imported since the last request
    request: int = 0  # numbered by RemoteGnnPolicy and echoed in the answer: an answer to another request is refused


class Close(msgspec.Struct, frozen=True, tag="close"):
    pass


class Answer(msgspec.Struct, frozen=True):
    request: int = 0  # the Decide's it answers; 0 for the ready message (or the setup's failure)
    decision: Decision | None = None
    # The worker's state after the request, left encoded: the parent decodes it only when exported.
    state: bytes = b""  # msgpack of a GnnPolicyState; empty when there is none
    error: str | None = None


REQUEST = msgspec.msgpack.Decoder(Decide | Close)
ANSWER = msgspec.msgpack.Decoder(Answer)
STATE = msgspec.msgpack.Decoder(GnnPolicyState)
SETUP = msgspec.msgpack.Decoder(Setup)
ENCODE = msgspec.msgpack.Encoder()
