"""Karn's catalogue: descriptor and bound checks, validate_params messages, filters, and the probe's verdicts."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from esper.nn.blueprints import (
    BlueprintDescriptor,
    Catalogue,
    ParamBounds,
    SlotShape,
    SlotSignature,
    build_blueprint,
    default_catalogue,
    probe_validate,
    validate_params,
)


def _linear(module: nn.Module, name: str) -> nn.Linear:
    layer = module.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _descriptor(**overrides: object) -> BlueprintDescriptor:
    fields: dict[str, object] = {
        "blueprint_id": "BPX",
        "name": "adapter",
        "family": "low_rank_adapter",
        "tier": "SAFE",
        "risk": 0.1,
        "allowed_parameters": {"rank": ParamBounds(1, 8, None, integer=True)},
        "slot_signatures": (SlotSignature(kind="flat"),),
    }
    fields.update(overrides)
    return BlueprintDescriptor(**fields)  # type: ignore[arg-type]  # the test varies field types on purpose


# ---------------------------------------------------------------- validate_params


def test_validate_params_accepts_in_range_values_and_returns_floats() -> None:
    assert validate_params(_descriptor(), {"rank": 8}) == {"rank": 8.0}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "blueprint BPX (adapter): parameter 'rank' is missing"),
        ({"rank": 9}, "blueprint BPX (adapter): parameter 'rank' = 9.0 outside [1, 8]"),
        ({"rank": 0.5}, "blueprint BPX (adapter): parameter 'rank' = 0.5 outside [1, 8]"),
        ({"rank": math.nan}, "blueprint BPX (adapter): parameter 'rank' = nan is not finite"),
        ({"rank": math.inf}, "blueprint BPX (adapter): parameter 'rank' = inf is not finite"),
        ({"rank": -math.inf}, "blueprint BPX (adapter): parameter 'rank' = -inf is not finite"),
        ({"rank": 2.5}, "blueprint BPX (adapter): parameter 'rank' = 2.5 must be an integer"),
        ({"rank": True}, "blueprint BPX (adapter): parameter 'rank' = True is not a number"),
        ({"rank": 2, "rnak": 2}, "blueprint BPX (adapter): unknown parameter 'rnak' (allowed: ['rank'])"),
    ],
)
def test_validate_params_rejects_with_one_exact_line(params: dict[str, float], message: str) -> None:
    """Missing, out-of-range, non-finite, non-integral, non-numeric and unknown values each get one exact line."""
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        validate_params(_descriptor(), params)


def test_fill_defaults_fills_only_parameters_that_have_a_default() -> None:
    """fill_defaults supplies defaults; a parameter without one is still required; strict mode fills nothing."""
    d = _descriptor(allowed_parameters={"rank": ParamBounds(1, 8, 4, integer=True), "scale": ParamBounds(0, 1)})
    assert validate_params(d, {"scale": 0.5}, fill_defaults=True) == {"rank": 4.0, "scale": 0.5}
    with pytest.raises(ValueError, match="parameter 'scale' is missing"):
        validate_params(d, {}, fill_defaults=True)
    with pytest.raises(ValueError, match="parameter 'rank' is missing"):
        validate_params(d, {"scale": 0.5})


def test_build_validates_before_building() -> None:
    d = default_catalogue().get("BP002")
    with pytest.raises(ValueError, match=r"^blueprint BP002 \(low_rank_adapter\): parameter 'rank' = 17.0 outside"):
        build_blueprint(d, SlotShape("flat", 4), {"rank": 17})
    assert build_blueprint(d, SlotShape("flat", 4), {}, fill_defaults=True).get_submodule("a").out_features == 4


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("lo", "hi", "default", "message"),
    [
        (2.0, 1.0, None, "min_value"),
        (0.0, 1.0, 2.0, "default 2.0 outside"),
        (0.0, math.inf, None, "bounds must be finite"),
    ],
)
def test_param_bounds_reject_inconsistent_bounds(lo: float, hi: float, default: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParamBounds(lo, hi, default)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"blueprint_id": ""}, "blueprint_id must not be empty"),
        ({"risk": 1.5}, "risk 1.5 outside"),
        ({"tier": "YOLO"}, "tier 'YOLO'"),
        ({"cost_tier": "free"}, "cost_tier 'free'"),
        ({"slot_signatures": ()}, "at least one slot signature"),
        ({"slot_signatures": (SlotSignature(kind="flat"), SlotSignature(kind="flat"))}, "listed twice"),
    ],
)
def test_descriptor_rejects_invalid_fields(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _descriptor(**overrides)


def test_descriptor_parameters_are_read_only() -> None:
    d = _descriptor()
    with pytest.raises(TypeError):
        d.allowed_parameters["rank"] = ParamBounds(0, 1)  # type: ignore[index]  # checking the runtime guard


def test_slot_shapes_know_their_rank_and_feature_axis() -> None:
    assert [SlotSignature(kind=k).rank for k in ("conv1d", "conv2d", "flat", "sequence")] == [3, 4, 2, 3]
    assert SlotShape("sequence", 8).feature_axis == 2
    assert SlotShape("conv2d", 8).feature_axis == 1
    with pytest.raises(ValueError, match="features must be >= 1"):
        SlotShape("flat", 0)


# ---------------------------------------------------------------- catalogue


def test_default_catalogue_is_fresh_each_call_and_equal() -> None:
    a, b = default_catalogue(), default_catalogue()
    assert a is not b
    assert list(a) == list(b)
    assert len(a) >= 8
    assert a.ids == tuple(sorted(a.ids))


def test_lookup_by_id() -> None:
    catalogue = default_catalogue()
    assert catalogue.get("BP003").family == "bottleneck_mlp"
    assert "BP003" in catalogue
    assert "BP999" not in catalogue
    with pytest.raises(KeyError, match="no blueprint 'BP999'"):
        catalogue.get("BP999")


def test_filter_by_slot_kind() -> None:
    catalogue = default_catalogue()
    flat = catalogue.for_kind("flat")
    assert set(flat.ids) == {"BP001", "BP002", "BP003", "BP007", "BP010"}
    assert all(d.fits("flat") for d in flat)
    assert set(catalogue.for_kind("conv1d").ids) >= {"BP004", "BP005", "BP006", "BP008"}
    assert "BP008" not in catalogue.for_kind("conv2d")


def test_filter_by_tier_and_quarantine() -> None:
    catalogue = default_catalogue()
    safe = catalogue.with_tiers("SAFE")
    assert len(safe) > 0
    assert {d.tier for d in safe} == {"SAFE"}
    assert len(catalogue.with_tiers("SAFE", "EXPERIMENTAL", "HIGH_RISK")) == len(catalogue)
    assert {d.blueprint_id for d in catalogue if d.quarantine_only} == {"BP011"}
    cleared = catalogue.excluding_quarantined()
    assert "BP011" not in cleared
    assert len(cleared) == len(catalogue) - 1
    assert all(d.approval_required for d in catalogue.with_tiers("HIGH_RISK"))
    assert set(catalogue.for_kind("sequence").with_tiers("SAFE").ids) == {"BP001", "BP002", "BP003"}


def test_catalogue_rejects_duplicates_unknown_families_and_unfit_claims() -> None:
    with pytest.raises(ValueError, match="'BPX' appears twice"):
        Catalogue((_descriptor(), _descriptor()))
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        Catalogue((_descriptor(family="nope"),))
    with pytest.raises(ValueError, match=r"claims \['flat'\], family residual_conv cannot fit"):
        Catalogue((_descriptor(family="residual_conv"),))


# ---------------------------------------------------------------- probe verdicts


def test_probe_reports_a_shape_that_does_not_fit_the_slot() -> None:
    d = default_catalogue().get("BP002")
    slot = SlotShape("sequence", 4)
    module = build_blueprint(d, slot, d.defaults())
    report = probe_validate(module, d, slot, (2, 4, 5))
    assert not report.ok
    assert report.failures == (
        "blueprint BP002 on sequence: example shape (2, 4, 5) does not fit a sequence slot of 4 features",
    )


def test_probe_flags_a_trained_module_only_when_zero_output_is_expected() -> None:
    d = default_catalogue().get("BP003")
    slot = SlotShape("flat", 4)
    module = build_blueprint(d, slot, d.defaults())
    with torch.no_grad():
        _linear(module, "down").bias.fill_(1.0)
    assert probe_validate(module, d, slot, (2, 4), expect_zero_output=False).ok
    report = probe_validate(module, d, slot, (2, 4))
    assert report.failures == ("blueprint BP003 on flat: output is not exactly zero at birth",)


def test_probe_flags_non_finite_outputs_and_a_module_too_big_for_its_descriptor() -> None:
    catalogue = default_catalogue()
    slot = SlotShape("flat", 4)
    big = catalogue.get("BP010")
    module = build_blueprint(big, slot, {"width": 8.0})
    report = probe_validate(module, catalogue.get("BP003"), slot, (2, 4))
    assert any("parameters outside the descriptor's" in f for f in report.failures)
    with torch.no_grad():
        _linear(module, "down").bias.fill_(math.nan)
    report = probe_validate(module, big, slot, (2, 4), expect_zero_output=False)
    assert not report.output_finite
    assert "blueprint BP010 on flat: output has non-finite values" in report.failures


def test_probe_uses_the_injected_timer_and_leaves_the_module_untouched() -> None:
    d = default_catalogue().get("BP005")
    slot = SlotShape("conv1d", 4)
    module = build_blueprint(d, slot, d.defaults()).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ticks = iter(float(i) for i in range(10))
    report = probe_validate(module, d, slot, (2, 4, 6), timer=lambda: next(ticks))
    assert report.ok
    assert report.forward_ms == 1000.0
    assert report.backward_ms == 1000.0
    assert not module.training
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
