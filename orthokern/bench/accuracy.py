"""The contract's accuracy measures with the float64 reference SVD computed once per case.

``orthokern.testing.accuracy`` recomputes the float64 SVD of G on the CPU for every result it checks; a
benchmark case compares ten results against the same G, and at 4096 x 11008 that SVD costs tens of seconds.
:class:`Reference` holds U_k, V_k per matrix (on G's device, float64) and :meth:`Reference.measure` gives the
same :class:`orthokern.testing.Accuracy` as ``testing.accuracy`` (tests/test_bench_harness.py checks they
agree). ``max_matrices`` checks an evenly spread subset of a large batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..testing import Accuracy


class Reference:
    def __init__(self, G: torch.Tensor, rcond: float, max_matrices: Optional[int] = None):
        G = G.detach()
        if G.dim() != 3:
            raise ValueError(f"Reference: G must be (B, m, n), got shape {tuple(G.shape)}")
        self.wide = G.shape[-2] < G.shape[-1]
        B = G.shape[0]
        if max_matrices is not None and B > max_matrices:
            self.index = torch.linspace(0, B - 1, max_matrices).round().long().unique()
        else:
            self.index = torch.arange(B)
        Gd = G[self.index.to(G.device)].to(torch.float64)
        if self.wide:
            Gd = Gd.mT
        U, s, Vh = torch.linalg.svd(Gd, full_matrices=False)
        smax = s[:, :1]
        self.zero = (smax[:, 0] == 0).cpu()
        self.k = (s >= rcond * smax).sum(-1).cpu()
        self.U, self.V = U, Vh.mT
        self.rcond = rcond

    def measure(self, O: torch.Tensor) -> Accuracy:
        Od = O.detach()[self.index.to(O.device)].to(torch.float64)
        if self.wide:
            Od = Od.mT
        finite = bool(torch.isfinite(Od).all())
        E = norm2 = orth = dist = 0.0
        for i, o in enumerate(Od):
            if bool(self.zero[i]):
                norm2 = max(norm2, float(o.abs().max()) if o.numel() else 0.0)
                continue
            k = int(self.k[i])
            Uk, Vk = self.U[i, :, :k], self.V[i, :, :k]
            Ik = torch.eye(k, dtype=torch.float64, device=o.device)
            E = max(E, float(torch.linalg.matrix_norm(Uk.mT @ o @ Vk - Ik) / math.sqrt(k)))
            if finite:
                # ||O||_2 from the small Gram matrix: cheaper than an SVD of O, exact enough in float64 for
                # values near 1 (what the bound is about).
                lam = torch.linalg.eigvalsh(o.mT @ o)
                norm2 = max(norm2, float(lam[-1].clamp_min(0).sqrt()))
            else:
                norm2 = math.inf
            orth = max(orth, float(torch.linalg.matrix_norm(Vk.mT @ (o.mT @ o) @ Vk - Ik) / math.sqrt(k)))
            dist = max(dist, float(torch.linalg.matrix_norm(o @ Vk - Uk) / math.sqrt(k)))
        return Accuracy(E=E, norm2=norm2, orth=orth, dist=dist, finite=finite)
