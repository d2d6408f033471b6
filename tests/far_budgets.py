"""Wall-clock budgets far above any real time, for the test runs whose outcome must not depend on the machine's load."""

from __future__ import annotations

# Each is a budget that a loaded machine can trip and that changes what the run does when tripped (README: "a rerun
# may then differ"): a plan later than the decision deadline fails its epoch (L2: no new grafts); a germination that
# waits longer than the artifact wait for Tezzeret's start-up compile fails; an epoch-end hook over its budget fails
# its epoch; a decision over the decision budget is the fallback's (another policy, another state); a hook or step
# latency over the risk engine's veto vetoes growth. Two runs compared for the same grafts and weights then differ by
# the machine, not by what the test is about. A test about one of these budgets sets it back itself.
FAR_BUDGETS: dict[str, dict[str, float]] = {
    "tolaria": {"decision_deadline_ms": 30000.0, "epoch_hook_budget_ms": 30000.0},
    "kasmina": {"artifact_wait_ms": 20000.0},
    "tamiyo": {"decision_budget_ms": 30000.0, "hook_latency_veto_ms": 30000.0, "step_latency_veto_ms": 30000.0},
}


def far_budgets(section: str) -> str:
    """The far budgets of config section ``section`` ("tolaria", "kasmina", "tamiyo"), as TOML lines for its table."""
    return "\n".join(f"{key} = {value}" for key, value in FAR_BUDGETS[section].items())
