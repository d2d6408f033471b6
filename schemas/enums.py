"""Enumerations shared by every subsystem; Leyline names and numbers are kept so old records map one to one."""

from __future__ import annotations

import enum


class SeedLifecycleStage(enum.IntEnum):
    """The 11 stages of a seed (REFERENCE.md section 2); UNKNOWN is a bootstrap sentinel only."""

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    SHADOWING = 5
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10
    TERMINATED = 11


LIVE_STAGES = frozenset(
    {
        SeedLifecycleStage.GERMINATED,
        SeedLifecycleStage.TRAINING,
        SeedLifecycleStage.BLENDING,
        SeedLifecycleStage.SHADOWING,
        SeedLifecycleStage.PROBATIONARY,
    }
)
"""Stages of a seed still in the model and being judged: it counts against the live-seed budget, may be paused or
culled; a fossilized or culled one is past them."""


class SeedLifecycleGate(enum.IntEnum):
    """Gates G0-G5, each guarding one or more lifecycle transitions."""

    G0_SANITY = 1
    G1_GRADIENT_HEALTH = 2
    G2_STABILITY = 3
    G3_INTERFACE = 4
    G4_SYSTEM_IMPACT = 5
    G5_RESET = 6


class EmergencyLevel(enum.IntEnum):
    """The emergency ladder. L1 is the baseline; each level above adds an action (ARCHITECTURE.md section 2)."""

    L1_NOTICE = 1
    L2_ELEVATED = 2
    L3_CONSERVATIVE = 3
    L4_HALT = 4


class BreakerState(enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class MessagePriority(enum.IntEnum):
    """Bus priority; HIGH and CRITICAL ride the emergency lane."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


class BusMessageType(enum.IntEnum):
    """What an Oona envelope carries (numbers kept from Leyline)."""

    SYSTEM_STATE = 1
    ADAPTATION_COMMAND = 2
    FIELD_REPORT = 3
    TELEMETRY = 4
    POLICY_UPDATE = 5
    KERNEL_PREFETCH_REQUEST = 6
    KERNEL_ARTIFACT_READY = 7
    KERNEL_ARTIFACT_ERROR = 8
    KERNEL_CATALOG_UPDATE = 9
    EMERGENCY_SIGNAL = 10


class HealthStatus(enum.Enum):
    """Overall health as Nissa reports it."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    CRITICAL = "critical"


class ActorStatus(enum.Enum):
    """Where an actor is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
