"""YOLOv5 training loss (Ultralytics v6/v7): CIoU box loss, IoU-targeted objectness BCE and class BCE."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from utils.train_utils import de_parallel

# Objectness weight per output level (P3, P4, P5): small-object levels have more cells, so each counts more.
BALANCE = {3: [4.0, 1.0, 0.4]}
BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]
NEIGHBOUR_G = 0.5  # a target also trains the adjacent cell whose side its centre is within g of


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets under label smoothing eps."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired (n, 4) xywh boxes -> (n,): IoU minus centre-distance and aspect-ratio penalties."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():  # alpha is a weight, not a path for gradients (CIoU paper)
        alpha = v / (v - iou + (1 + eps))
    return (iou - (rho2 / c2 + v * alpha)).squeeze(-1)


class FocalLoss(nn.Module):
    """Focal wrapper around BCEWithLogits (hyp fl_gamma > 0): down-weights easy examples."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn, self.gamma, self.alpha = loss_fcn, gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


class ComputeLoss:
    """Loss of raw Detect outputs against (n, 6) targets [img, cls, cx, cy, w, h] (normalised) using model.hyp."""

    def __init__(self, model: nn.Module, autobalance: bool = False):
        m = de_parallel(model)
        device = next(m.parameters()).device
        h = m.hyp
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["cls_pw"]], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["obj_pw"]], device=device))
        if h.get("fl_gamma", 0.0) > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, h["fl_gamma"]), FocalLoss(bce_obj, h["fl_gamma"])
        self.cp, self.cn = smooth_bce(h.get("label_smoothing", 0.0))
        det = m.model[-1]
        self.balance = list(BALANCE.get(det.nl, BALANCE_DEFAULT))
        self.ssi = list(det.stride).index(16) if autobalance else 0
        self.bce_cls, self.bce_obj, self.hyp, self.autobalance = bce_cls, bce_obj, h, autobalance
        self.gr = 1.0  # objectness target = gr * IoU + (1 - gr)
        self.na, self.nc, self.nl, self.anchors, self.device = det.na, det.nc, det.nl, det.anchors, device

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (total loss * batch size, detached [box, obj, cls]) as Ultralytics."""
        lcls, lbox, lobj = (torch.zeros(1, device=self.device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)
            if b.shape[0]:
                box_l, cls_l, iou = self._positive_losses(pi[b, a, gj, gi], tbox[i], anchors[i], tcls[i])
                lbox, lcls = lbox + box_l, lcls + cls_l
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).type(tobj.dtype)
            obji = self.bce_obj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox, lobj, lcls = lbox * self.hyp["box"], lobj * self.hyp["obj"], lcls * self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def _positive_losses(self, ps: torch.Tensor, tbox: torch.Tensor, anchors: torch.Tensor,
                         tcls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box (1 - CIoU) and class BCE over the matched predictions; also returns their IoUs for objectness."""
        pxy, pwh, _, pcls = ps.split((2, 2, 1, self.nc), 1)
        pxy = pxy.sigmoid() * 2 - 0.5
        pwh = (pwh.sigmoid() * 2) ** 2 * anchors
        iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
        lbox = (1.0 - iou).mean()
        lcls = torch.zeros(1, device=self.device)
        if self.nc > 1:  # a single class is fully described by objectness
            t = torch.full_like(pcls, self.cn)
            t[range(len(tcls)), tcls] = self.cp
            lcls = lcls + self.bce_cls(pcls, t)
        return lbox, lcls, iou

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor):
        """Assign each target to the anchors within anchor_t of its shape, in its cell and up to 2 neighbour cells.

        Returns per level: class ids, boxes (xy offset in cell, wh in grid units), indices (img, anchor, gy, gx)
        and the matched anchors.
        """
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=self.device)
        ai = torch.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): ..., anchor index
        g = NEIGHBOUR_G
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=self.device).float() * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape, device=self.device)[[3, 2, 3, 2]].float()  # normalised -> grid
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance to the far edges
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                l, m = ((gxi % 1 < g) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t, offsets = targets[0], 0
            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            gj, gi = gj.clamp_(0, shape[2] - 1), gi.clamp_(0, shape[3] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
