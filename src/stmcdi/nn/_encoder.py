"""Spatial encoder: a stack of graph convolutions over each spot's kNN neighbourhood."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv

EncoderType = Literal["gcn", "gat", "gin", "mlp"]


def mean_edge_weight(edge_index: torch.Tensor, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Add self loops and give each edge into node ``i`` the weight ``1 / (in_degree(i) + 1)``.

    On the full directed kNN graph every spot has in-degree ``k``, so this equals the symmetric GCN
    normalisation :math:`\hat D^{-1/2} (A + I) \hat D^{-1/2}` exactly; on a gathered neighbourhood it stays
    exact for the nodes whose neighbours were all gathered (the seeds), where the symmetric formula would
    not (frontier nodes have too few edges).

    Parameters
    ----------
    edge_index
        ``(2, E)`` edges ``source -> target``; the target aggregates.
    n_nodes
        Number of nodes.

    Returns
    -------
    ``(edge_index, edge_weight)`` with ``n_nodes`` self loops appended.

    Examples
    --------
    >>> ei = torch.tensor([[1, 2], [0, 0]])
    >>> mean_edge_weight(ei, 3)[1]
    tensor([0.3333, 0.3333, 0.3333, 1.0000, 1.0000])
    """
    loops = torch.arange(n_nodes, device=edge_index.device)
    ei = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    deg = torch.bincount(ei[1], minlength=n_nodes).to(torch.float32)
    return ei, deg.reciprocal()[ei[1]]


class SpatialEncoder(nn.Module):
    r"""Graph encoder from masked expression to a per-spot representation (stMCDI paper, §4.3).

    Node features are the masked, scaled expression concatenated with the indicator of which entries are
    visible, :math:`[x \odot m, m] \in \mathbb{R}^{2G}`. ``n_layers`` graph convolutions map them to
    ``n_output`` features; for ``conv="gcn"``

    .. math::
        h_i^{(l+1)} = \sigma\Big(W^{(l)} \frac{1}{k+1}\big(h_i^{(l)} + \sum_{j \in \mathcal N(i)} h_j^{(l)}\big)\Big)

    where :math:`\mathcal N(i)` are the ``k`` nearest spots of ``i`` (messages flow neighbour -> spot).

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_hidden
        Width of the hidden layers.
    n_output
        Width of the representation.
    n_layers
        Number of graph layers (the paper uses 3). The batch must carry the ``n_layers``-hop neighbourhood.
    conv
        ``"gcn"`` (:class:`~torch_geometric.nn.conv.GCNConv` with mean weights), ``"gat"``
        (:class:`~torch_geometric.nn.conv.GATConv`), ``"gin"`` (:class:`~torch_geometric.nn.conv.GINConv`), or
        ``"mlp"`` (the same stack without messages between spots).
    dropout
        Dropout between layers.

    Shapes
    ------
    - x: ``(N, 2G)``; edge_index: ``(2, E)``; output: ``(N, n_output)``.

    Examples
    --------
    >>> enc = SpatialEncoder(10, 16, 8)
    >>> enc
    SpatialEncoder(gcn, 10 -> 8, layers=3)
    >>> enc(torch.zeros(4, 20), torch.tensor([[1, 2, 3], [0, 0, 0]])).shape
    torch.Size([4, 8])
    """

    def __init__(self, n_input: int, n_hidden: int = 128, n_output: int = 64, n_layers: int = 3,
                 conv: EncoderType = "gcn", dropout: float = 0.0):
        super().__init__()
        if conv not in ("gcn", "gat", "gin", "mlp"):
            raise ValueError(f"conv must be one of 'gcn', 'gat', 'gin', 'mlp'; got {conv!r}.")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        self.n_input, self.n_hidden, self.n_output = n_input, n_hidden, n_output
        self.n_layers, self.conv, self.dropout = n_layers, conv, dropout
        dims = [2 * n_input] + [n_hidden] * (n_layers - 1) + [n_output]
        self.layers = nn.ModuleList(self._make_layer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def _make_layer(self, n_in: int, n_out: int) -> nn.Module:
        if self.conv == "gcn":
            return GCNConv(n_in, n_out, normalize=False, add_self_loops=False)
        if self.conv == "gat":
            return GATConv(n_in, n_out, heads=1, add_self_loops=True)
        if self.conv == "gin":
            return GINConv(nn.Sequential(nn.Linear(n_in, n_out), nn.GELU(), nn.Linear(n_out, n_out)), train_eps=True)
        return nn.Linear(n_in, n_out)

    def reset_parameters(self) -> None:
        """Re-initialise every layer."""
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Encode node features ``x`` over the graph ``edge_index`` (source -> target)."""
        weight = None
        if self.conv == "gcn":
            edge_index, weight = mean_edge_weight(edge_index, x.shape[0])
        h = x
        for i, layer in enumerate(self.layers):
            if self.conv == "gcn":
                h = layer(h, edge_index, weight)
            elif self.conv == "mlp":
                h = layer(h)
            else:
                h = layer(h, edge_index)
            if i < self.n_layers - 1:
                h = self.drop(self.act(h))
        return h

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.conv}, {self.n_input} -> {self.n_output}, layers={self.n_layers})"
