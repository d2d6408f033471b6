"""The GNN policy's worker process (started by gnn_worker_main): builds the policy, answers decisions."""

from __future__ import annotations

import os
from typing import IO

import torch
from safetensors.torch import load as load_safetensors

from actors.tamiyo.gnn_policy import GnnPolicy, registries_for, weights_sha256
from actors.tamiyo.gnn_wire import ENCODE, REQUEST, SETUP, Answer, Close, Setup, recv, send
from esper.nn.policy_gnn import TamiyoGNN, TamiyoGNNConfig
from esper.nn.policy_graph import GraphCaps


def _build(setup: Setup, model: TamiyoGNN) -> GnnPolicy:
    return GnnPolicy(
        model,
        registries=registries_for(setup.blueprint_ids, setup.layer_types, setup.activations),
        weights_digest=setup.weights_digest,
        caps=GraphCaps(max_layers=setup.max_layers, max_seeds=setup.max_seeds, max_blueprints=setup.max_blueprints),
        normaliser_alpha=setup.normaliser_alpha,
        version=setup.version,
        blend=setup.blend,
        max_ramp_steps=setup.max_ramp_steps,
        lr_delta_bound=setup.lr_delta_bound,
    )


def serve(source: IO[bytes], out: IO[bytes]) -> None:
    """The worker's loop: build the policy from the first frame, answer requests until Close or end of input."""
    try:
        setup = SETUP.decode(recv(source))
    except EOFError:
        return  # the parent went away before asking for anything
    try:
        if setup.num_threads is not None:
            torch.set_num_threads(setup.num_threads)
        config = TamiyoGNNConfig(setup.hidden, setup.gat_hidden, setup.heads, setup.dropout)
        model = TamiyoGNN(config)
        model.load_state_dict(load_safetensors(setup.weights), strict=True)
        model.eval()
        if weights_sha256(model) != setup.weights_digest:
            raise ValueError("the weights received do not match their SHA-256 digest")
        policy = _build(setup, model)
        policy.warm_up()
    except Exception as err:  # noqa: BLE001  # any failure is reported to the parent, which raises it where it waits
        send(out, ENCODE.encode(Answer(error=f"{type(err).__name__}: {err}")))
        return
    send(out, ENCODE.encode(Answer(state=ENCODE.encode(policy.export_state()))))
    while True:
        try:
            request = REQUEST.decode(recv(source))
        except EOFError:
            return
        if isinstance(request, Close):
            return
        try:
            if request.state is not None:
                policy.import_state(request.state)
            with torch.inference_mode():
                decision = policy.decide(request.observation)
            answer = Answer(request=request.request, decision=decision, state=ENCODE.encode(policy.export_state()))
        except Exception as err:  # noqa: BLE001  # one bad decision is the parent's failed inference, not the worker's end
            answer = Answer(request=request.request, error=f"{type(err).__name__}: {err}")
        send(out, ENCODE.encode(answer))


def run_worker() -> None:
    """Serve on this process's stdin and stdout (stdout carries frames only; stray prints go to stderr)."""
    # Frames own the real stdout; anything else printed in this process goes to stderr instead of corrupting them.
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    serve(os.fdopen(0, "rb", buffering=0), frames)
