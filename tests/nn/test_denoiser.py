import pytest
import torch

from stmcdi.nn import Attention, Conditioner, GeneDenoiser, timestep_embedding


def inputs(b=3, g=10, s=4):
    torch.manual_seed(0)
    return [torch.randn(b, g), torch.randn(b, g), (torch.rand(b, g) > 0.5).float(), torch.randn(b, g),
            torch.randn(b, s), torch.randint(0, 50, (b,))]


def test_timestep_embedding_exact():
    torch.testing.assert_close(timestep_embedding(torch.tensor([0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    e = timestep_embedding(torch.tensor([1.0]), 2)
    torch.testing.assert_close(e, torch.tensor([[torch.sin(torch.tensor(1.0)), torch.cos(torch.tensor(1.0))]]))


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    att = Attention(4, 1)
    q, kv = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    qq, (k, v) = att.q(q), att.kv(kv).chunk(2, -1)
    expected = att.out(torch.softmax(qq @ k.transpose(1, 2) / 2.0, -1) @ v)
    torch.testing.assert_close(att(q, kv), expected)
    with pytest.raises(ValueError, match="divide"):
        Attention(6, 4)


@pytest.mark.parametrize("attention", ["latent", "full"])
@pytest.mark.parametrize("per_token", [1, 3, 10])
def test_denoiser_shapes(attention, per_token):
    net = GeneDenoiser(10, n_spatial=4, n_channels=8, n_layers=2, n_heads=2, attention=attention,
                       genes_per_token=per_token)
    x = inputs()
    out = net(*x, net.context(x[1], x[2]))
    assert out.shape == (3, 10)
    # zero-initialised head: a fresh network predicts zero noise
    assert torch.count_nonzero(out) == 0


def test_denoiser_depends_on_condition_and_step():
    torch.manual_seed(0)
    net = GeneDenoiser(10, n_spatial=4, n_channels=8, n_layers=1, n_heads=2, genes_per_token=2)
    torch.nn.init.normal_(net.head_out.weight)
    x = inputs()
    base = net(*x, net.context(x[1], x[2]))
    x2 = list(x)
    x2[5] = x[5] + 1
    assert not torch.allclose(net(*x2, net.context(x[1], x[2])), base)
    assert not torch.allclose(net(*x, net.context(x[1] + 1, x[2])), base)


def test_conditioner_ignores_hidden_values():
    cond = Conditioner(6, 4, 2)
    v = torch.randn(2, 6)
    m = torch.tensor([[1.0, 0, 1, 0, 1, 0]] * 2)
    v2 = v + (1 - m) * 100.0
    torch.testing.assert_close(cond(v, m), cond(v2, m))


def test_bad_denoiser_arguments():
    with pytest.raises(ValueError, match="attention"):
        GeneDenoiser(4, attention="linear")
    with pytest.raises(ValueError, match="genes_per_token"):
        GeneDenoiser(4, genes_per_token=0)
