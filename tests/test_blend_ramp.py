"""The alpha ramp's length: blend_ramp_steps sets how long alpha takes to rise, whatever the ramp's length."""

from __future__ import annotations

import pytest

from actors.tolaria.boundary import blend_spec
from esper.config import load_config
from esper.nn.blending import AlphaSchedule, sigmoid_ramp
from esper.runtime.errors import ConfigError
from schemas.control import BlendConfig


def _alphas(ramp_steps: int, temperature: float = 2.0) -> list[float]:
    _, schedule = blend_spec(BlendConfig(ramp_steps=ramp_steps, temperature=temperature))
    return [schedule.value(s) for s in range(ramp_steps + 1)]


def test_the_default_ramp_keeps_its_exact_alphas() -> None:
    shipped = [sigmoid_ramp(s, 20, 2.0) for s in range(20)] + [1.0]
    assert _alphas(20) == shipped
    assert _alphas(20) == [AlphaSchedule().value(s) for s in range(21)]


@pytest.mark.parametrize("ramp_steps", [1, 5, 100, 1000])
def test_a_ramp_of_any_length_rises_from_near_0_to_near_1_over_its_steps(ramp_steps: int) -> None:
    alphas = _alphas(ramp_steps)
    assert alphas[0] < 0.01
    assert alphas[-1] == 1.0
    assert alphas == sorted(alphas)
    if ramp_steps > 1:
        assert alphas[-2] > 0.95
    if ramp_steps >= 20:
        # The same shape stretched: a quarter of the way in alpha is where the 20-step ramp is at step 5, not still ~0.
        assert alphas[ramp_steps // 4] == pytest.approx(sigmoid_ramp(5, 20, 2.0))
        assert alphas[ramp_steps // 2] == 0.5


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_every_accepted_temperature_starts_near_0_and_ends_near_1(temperature: float) -> None:
    for ramp_steps in (2, 20, 100):
        alphas = _alphas(ramp_steps, temperature)
        assert alphas[0] < 0.035
        assert alphas[-2] > 1.0 - 0.035 - 1.0 / ramp_steps


def test_a_temperature_that_cannot_ramp_is_refused_in_one_line() -> None:
    message = r"kasmina\.blend_temperature: expected a number > 0 and <= 3, got 100"
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, ["kasmina.blend_temperature=100"])
    assert "\n" not in str(err.value)


def test_a_checkpointed_schedule_keeps_its_temperature_in_steps() -> None:
    # A checkpoint stores the schedule's width in steps: a run written before the ramp scaled resumes on its curve.
    _, schedule = blend_spec(BlendConfig(ramp_steps=100, temperature=2.0))
    assert schedule.temperature == 10.0
    old = AlphaSchedule(total_steps=100, temperature=2.0)
    assert old.value(40) < 0.01 < schedule.value(40)


def test_every_temperature_is_kept_bitwise_at_the_default_ramp_length() -> None:
    """temperature * 20 / 20 is not temperature for 34 of the two-decimal temperatures up to 3 (1.99, 0.46, ...)."""
    from esper.nn.blending import ramp_temperature

    temperatures = [round(hundredths / 100, 2) for hundredths in range(1, 301)]
    assert [t for t in temperatures if ramp_temperature(t, 20) != t] == []
