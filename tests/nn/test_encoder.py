import pytest
import torch
from torch_geometric.nn import GCNConv

from stmcdi.nn import SpatialEncoder, mean_edge_weight

# 4-node toy graph, directed kNN with k=1: node i aggregates from its neighbour nb[i]
NB = [1, 0, 1, 2]
EDGES = torch.tensor([NB, [0, 1, 2, 3]])  # source -> target


def test_mean_edge_weight_exact():
    ei, w = mean_edge_weight(EDGES, 4)
    assert ei.shape == (2, 8)
    # every node has one incoming edge plus its self loop -> weight 1/2 everywhere
    torch.testing.assert_close(w, torch.full((8,), 0.5))
    _, w2 = mean_edge_weight(torch.tensor([[1, 2], [0, 0]]), 3)
    torch.testing.assert_close(w2, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0]))


def test_gcn_layer_is_mean_over_self_and_neighbours():
    torch.manual_seed(0)
    enc = SpatialEncoder(n_input=2, n_hidden=3, n_output=3, n_layers=1)
    x = torch.randn(4, 4)
    out = enc(x, EDGES)
    lin = enc.layers[0]
    expected = torch.stack([(x[i] + x[NB[i]]) / 2 for i in range(4)]) @ lin.lin.weight.T + lin.bias
    torch.testing.assert_close(out, expected)


def test_messages_flow_from_neighbour_to_spot():
    torch.manual_seed(0)
    enc = SpatialEncoder(n_input=2, n_hidden=3, n_output=3, n_layers=1)
    x = torch.randn(4, 4)
    base = enc(x, EDGES)
    x2 = x.clone()
    x2[3] += 10.0  # node 3 is nobody's neighbour: only its own output may change
    out = enc(x2, EDGES)
    torch.testing.assert_close(out[:3], base[:3])
    x3 = x.clone()
    x3[2] += 10.0  # node 2 is node 3's neighbour
    assert not torch.allclose(enc(x3, EDGES)[3], base[3])


def test_equals_symmetric_gcn_on_a_regular_directed_graph():
    # every node has in-degree 1: mean weights == torch-geometric's symmetric normalisation
    torch.manual_seed(0)
    enc = SpatialEncoder(n_input=2, n_hidden=3, n_output=3, n_layers=1)
    ref = GCNConv(4, 3)
    ref.lin.weight.data.copy_(enc.layers[0].lin.weight)
    ref.bias.data.copy_(enc.layers[0].bias)
    ring = torch.tensor([[1, 2, 3, 0], [0, 1, 2, 3]])
    x = torch.randn(4, 4)
    torch.testing.assert_close(enc(x, ring), ref(x, ring))


def test_three_layers_reach_three_hops_only():
    torch.manual_seed(0)
    chain = torch.tensor([[1, 2, 3, 4], [0, 1, 2, 3]])  # 0 <- 1 <- 2 <- 3 <- 4
    enc = SpatialEncoder(n_input=1, n_hidden=4, n_output=2, n_layers=3)
    x = torch.randn(5, 2)
    base = enc(x, chain)
    far = x.clone()
    far[4] += 5.0
    torch.testing.assert_close(enc(far, chain)[0], base[0])
    near = x.clone()
    near[3] += 5.0
    assert not torch.allclose(enc(near, chain)[0], base[0])


@pytest.mark.parametrize("conv", ["gcn", "gat", "gin", "mlp"])
def test_all_encoders_shapes_and_repr(conv):
    enc = SpatialEncoder(5, 8, 4, conv=conv)
    assert enc(torch.randn(4, 10), EDGES).shape == (4, 4)
    assert repr(enc) == f"SpatialEncoder({conv}, 5 -> 4, layers=3)"
    enc.reset_parameters()


def test_mlp_ignores_the_graph():
    enc = SpatialEncoder(2, 4, 3, conv="mlp")
    x = torch.randn(4, 4)
    torch.testing.assert_close(enc(x, EDGES), enc(x, torch.zeros(2, 0, dtype=torch.long)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="conv must be"):
        SpatialEncoder(2, conv="sage")
    with pytest.raises(ValueError, match="n_layers"):
        SpatialEncoder(2, n_layers=0)
