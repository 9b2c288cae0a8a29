import pytest
import torch

from stmcdi.nn import ddim_timesteps, quadratic_beta_schedule


def test_quadratic_schedule_exact():
    betas = quadratic_beta_schedule(3, 0.01, 0.25)
    torch.testing.assert_close(betas, torch.tensor([0.01, 0.09, 0.25], dtype=torch.float64))
    b = quadratic_beta_schedule(50)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.5)
    assert (b.diff() > 0).all()
    # sqrt(beta) is linear in t
    torch.testing.assert_close(b.sqrt().diff(), torch.full((49,), (0.5**0.5 - 0.01) / 49, dtype=torch.float64))


def test_schedule_reaches_noise():
    alpha_bar = torch.cumprod(1 - quadratic_beta_schedule(50), 0)
    assert alpha_bar[-1] < 1e-3 and alpha_bar[0] > 0.999


def test_ddim_timesteps():
    assert ddim_timesteps(50, 5) == [49, 37, 24, 12, 0]
    assert ddim_timesteps(50, 50) == list(range(49, -1, -1))
    assert ddim_timesteps(10, 1) == [9]
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize(("args", "match"), [((1,), "at least 2"), ((10, 0.5, 0.1), "beta_start < beta_end")])
def test_schedule_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        quadratic_beta_schedule(*args)
