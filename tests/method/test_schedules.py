import pytest

from medcontext.method import cosine_schedule, momentum_at
from medcontext.method.schedules import momentum_for_horizon


def test_momentum_endpoints_and_table():
    assert momentum_at(0, 100) == pytest.approx(0.996, abs=1e-12)
    assert momentum_at(99, 100) == pytest.approx(1.0, abs=1e-12)
    # halfway: 1 - 0.004 * (cos(pi/2) + 1) / 2 = 0.998
    assert momentum_at(50, 101) == pytest.approx(0.998, abs=1e-12)
    # m(k) = 1 - 0.004 * (cos(pi * k / 99) + 1) / 2, worked out once by hand (not by the code under test)
    table = {1: 0.9960010069152336, 17: 0.9962840331735301, 60: 0.9986541359266349, 98: 0.9999989930847664}
    for k, expected in table.items():
        assert momentum_at(k, 100) == pytest.approx(expected, abs=1e-12), k
    assert momentum_at(0, 1) == 1.0


def test_schedule_inputs_are_checked():
    with pytest.raises(ValueError, match="step"):
        momentum_at(100, 100)
    with pytest.raises(ValueError, match="step"):
        cosine_schedule(-1, 10, 0.0, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="momentum base"):
        momentum_at(0, 10, base=1.5)


def test_momentum_for_horizon_keeps_the_time_constant_a_fraction_of_the_run():
    # time constant = horizon * steps: 0.05 of 4000 steps = 200 steps -> m0 = 1 - 1/200
    assert momentum_for_horizon(0.05, 4000) == pytest.approx(0.995)
    assert momentum_for_horizon(0.25, 1000) == pytest.approx(0.996)  # the paper's 0.996 is 250 steps
    assert momentum_for_horizon(0.1, 5) == 0.0  # shorter than a step: the teacher copies the student
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction of the run"):
            momentum_for_horizon(bad, 100)


def test_medcontext_uses_the_horizon_instead_of_the_fixed_momentum():
    from torch import nn

    from medcontext import MedContext

    net = nn.Conv3d(1, 2, 1)
    mc = MedContext(net, total_steps=4000, momentum_horizon=0.05, mask_space="input", mask_cell=4)
    assert mc.base_momentum == pytest.approx(0.995)
    assert mc.momentum_at(0) == pytest.approx(0.995) and mc.momentum_at(3999) == pytest.approx(1.0)
    assert MedContext(net, total_steps=4000, mask_space="input", mask_cell=4).base_momentum == 0.996
