"""Learning-loop contracts: field reports from Tamiyo to Simic, and signed policy updates back."""

from __future__ import annotations

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonEmptyStr, NonNegInt, PosInt, SemVer, Sha256Hex
from schemas.domain_enums import FieldReportOutcome, PolicyAction


class MitigationAction(Record, frozen=True):
    """A follow-up the reporter recommends (``conservative_mode``, ``rollback_request``, ...) and why."""

    action_type: str
    rationale: str = ""


class FieldReport(Message, frozen=True):
    """The outcome of one decision (NO_OP included) over its observation window of epochs.

    ``report_id`` is ``fr-<command_id>-<start_epoch>+<window>``, with ``-r<n>`` after it for a decision made after the
    trainer went back (a rollback, a restart) n times: the steps it trains again are decided again under the same
    command ids. ``seed_id`` and ``blueprint_id`` name what the decision acted on: a seed verb's target seed and its
    blueprint; a GERMINATE's blueprint, and its seed (``schemas.control.germinated_seed_id``) once a packet of the
    window showed it, so None when the receiver refused it. ``metrics`` holds the window aggregates (sum, min and
    max of loss_delta and hook latency, by name). ``action``, ``log_prob``, ``value_estimate`` and ``observation_ref``
    (where the graph observation is stored) let Simic train on what the policy actually did; ``reward`` is filled in
    when the window closes and stays None for ABORTED windows, which are excluded from training.
    """

    report_id: NonEmptyStr
    command_id: NonEmptyStr
    training_run_id: NonEmptyStr
    outcome: FieldReportOutcome
    observation_window_epochs: PosInt
    start_epoch: NonNegInt
    issued_at: float
    tamiyo_policy_version: str
    action: PolicyAction
    seed_id: str | None = None
    blueprint_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    follow_up_actions: tuple[MitigationAction, ...] = ()
    notes: str = ""
    log_prob: float | None = None
    value_estimate: float | None = None
    reward: float | None = None
    observation_ref: str | None = None


class ValidationReport(Record, frozen=True):
    """How a candidate policy fared on held-out reports; ``passed`` only if every threshold and comparison held."""

    held_out_reports: NonNegInt
    average_reward: float
    policy_loss: float
    value_loss: float
    param_loss: float
    entropy: float
    incumbent_average_reward: float | None = None
    heuristic_average_reward: float | None = None
    beats_incumbent: bool = False
    beats_heuristic: bool = False
    passed: bool = False


class PolicyUpdate(Message, frozen=True):
    """A validated policy from Simic for Tamiyo to hot-swap; the weights stay in the artifact store.

    ``payload_ref`` names a safetensors blob whose SHA-256 is ``payload_sha256``; ``registry_digests`` maps each
    categorical registry name to its SHA-256. ``signature`` is an HMAC-SHA256 over the canonical encoding with the
    signature set to "", keyed by ``key_id``.
    """

    update_id: NonEmptyStr
    version: SemVer
    architecture_version: NonEmptyStr
    training_run_id: str
    issued_at: float
    payload_ref: str
    payload_sha256: Sha256Hex
    registry_digests: dict[str, Sha256Hex]
    validation: ValidationReport
    signature: str
    key_id: str
    previous_version: SemVer | None = None
