"""Enumerations of the control, kernel, telemetry and learning contracts (Leyline numbers kept where it had them)."""

from __future__ import annotations

import enum


class BlendMode(enum.Enum):
    """How an active slot mixes the seed output s with the host output h (REFERENCE.md section 3)."""

    CONVEX = "convex"
    RESIDUAL = "residual"
    CHANNEL = "channel"
    CONFIDENCE = "confidence"


class ScheduleMethod(enum.Enum):
    """How alpha ramps from 0 to 1 over the blending window; TANH is the reference schedule."""

    TANH = "tanh"
    LINEAR = "linear"
    COSINE = "cosine"
    WARMUP_HOLD = "warmup_hold"


class CommandKind(enum.Enum):
    """What an AdaptationCommand asks for. OPTIMIZER goes to Tolaria; the others act on a seed slot in Kasmina."""

    GERMINATE = "germinate"
    CULL = "cull"
    FOSSILIZE = "fossilize"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    OPTIMIZER = "optimizer"


class CommandRejectReason(enum.Enum):
    """Why a command was refused; the first five are the security checks in the order they run (REFERENCE s. 11)."""

    MISSING_FIELDS = "missing_fields"
    BAD_SIGNATURE = "bad_signature"
    NONCE_REPLAYED = "nonce_replayed"
    ISSUED_IN_FUTURE = "issued_in_future"
    STALE = "stale"
    NONCE_LEDGER_FULL = "nonce_ledger_full"
    # Signed for another run or another step than the decision it came in: Kasmina checks it when it pairs the two.
    DECISION_MISMATCH = "decision_mismatch"
    UNKNOWN_SLOT = "unknown_slot"
    UNKNOWN_SEED = "unknown_seed"
    SLOT_OCCUPIED = "slot_occupied"
    EMBARGOED = "embargoed"
    ILLEGAL_TRANSITION = "illegal_transition"
    UNKNOWN_BLUEPRINT = "unknown_blueprint"
    TIER_NOT_ALLOWED = "tier_not_allowed"
    QUARANTINED = "quarantined"
    APPROVAL_MISSING = "approval_missing"
    PARAMETER_OUT_OF_BOUNDS = "parameter_out_of_bounds"
    INVALID_BLEND_CONFIG = "invalid_blend_config"
    SEED_BUDGET_EXCEEDED = "seed_budget_exceeded"
    MEMORY_BUDGET_EXCEEDED = "memory_budget_exceeded"
    CONSERVATIVE_MODE = "conservative_mode"
    SHUTTING_DOWN = "shutting_down"


class PolicyAction(enum.Enum):
    """The action a policy chose; NO_OP is the default and is still reported (REFERENCE.md section 5)."""

    NO_OP = "no_op"
    GERMINATE = "germinate"
    CULL = "cull"
    FOSSILIZE = "fossilize"
    PAUSE = "pause"
    RESUME = "resume"
    LR_TWEAK = "lr_tweak"


class TelemetryLevel(enum.IntEnum):
    """Severity of a telemetry event or packet (Leyline numbers)."""

    INFO = 1
    WARNING = 2
    ERROR = 3
    CRITICAL = 4


class FieldReportOutcome(enum.IntEnum):
    """How a decision turned out over its observation window (Leyline numbers; there is no DEGRADED)."""

    SUCCESS = 1
    NEUTRAL = 2
    REGRESSION = 3
    ABORTED = 4


class BlueprintTier(enum.IntEnum):
    """Risk tier of a blueprint (Leyline numbers). HIGH_RISK is selectable only when enabled."""

    SAFE = 1
    EXPERIMENTAL = 2
    HIGH_RISK = 3


class CostTier(enum.Enum):
    """Rough compute cost of a blueprint relative to the slot it fills."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class KernelErrorReason(enum.Enum):
    """Why a kernel could not be handed over; the first four are the G1 failure reasons of REFERENCE.md section 7."""

    NOT_FOUND = "not_found"
    FETCH_ERROR = "fetch_error"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    LATENCY_BUDGET_EXCEEDED = "latency_budget_exceeded"
    GUARD_MISMATCH = "guard_mismatch"
    COMPILE_FAILED = "compile_failed"
    STALE_REQUEST = "stale_request"
    CANCELLED = "cancelled"


class TensorDtype(enum.Enum):
    """Dtypes a slot signature may name (torch names without the ``torch.`` prefix)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT64 = "float64"
    INT64 = "int64"
