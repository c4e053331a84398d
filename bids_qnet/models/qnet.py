"""Q-Net stage 2: the scan-level model, a Bi-LSTM over a participant's slice embeddings.

The paper (Q-Net, stage 2) feeds the frozen 512-d ResNetSWA embedding of each slice, in slice
order, to a one-layer bidirectional LSTM. Two heads read its outputs:

* an image-level head, one fully connected layer applied to each time step's ``2 * hidden``
  output (one prediction per slice);
* a scan-level head, a fully connected layer over the Bi-LSTM outputs of all slices.

The paper concatenates the outputs of all slices before the scan-level layer, which fixes the
number of slices per scan. Participants here may have different slice counts, so the scan-level
head pools the outputs over the real (unpadded) slices instead: their mean and their maximum,
concatenated (``4 * hidden`` features), then one linear layer. Padded time steps never reach the
LSTM (sequences are packed), the pooling or the scan logits.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bids_qnet.errors import InputDataError, UsageError

logger = logging.getLogger(__name__)


class QNet(nn.Module):
    """Bi-LSTM scan-level model with image-level and scan-level heads.

    Parameters
    ----------
    in_features : int
        Size of a slice embedding (512 for ResNet18).
    hidden : int
        Hidden size of each LSTM direction; the Bi-LSTM output has ``2 * hidden`` features.
    n_classes : int
        Number of classes of both heads.
    dropout : float
        Dropout probability applied to the Bi-LSTM outputs before both heads (training only).
    standardise : bool
        Standardise each input feature with a stored mean and SD (buffers ``input_mean`` and
        ``input_scale``, set with :meth:`set_standardisation`) before the LSTM.

    Notes
    -----
    The model contains no cuDNN-specific code: on CPU, gradients with respect to the inputs work
    in eval mode (as attribution methods need). On a GPU, cuDNN refuses the LSTM backward pass in
    eval mode; wrap such calls in ``torch.backends.cudnn.flags(enabled=False)``.
    """

    def __init__(
        self,
        in_features: int = 512,
        hidden: int = 128,
        n_classes: int = 2,
        dropout: float = 0.3,
        standardise: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden)):
            if int(value) < 1:
                raise UsageError(f"QNet {name} must be a positive integer, got {value!r}")
        if int(n_classes) < 1:
            raise UsageError(f"QNet n_classes must be a positive integer, got {n_classes!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise UsageError(f"QNet dropout must lie in [0, 1), got {dropout!r}")
        self.in_features = int(in_features)
        self.hidden = int(hidden)
        self.n_classes = int(n_classes)
        self.standardise = bool(standardise)
        if self.standardise:
            self.register_buffer("input_mean", torch.zeros(self.in_features))
            self.register_buffer("input_scale", torch.ones(self.in_features))
        self.lstm = nn.LSTM(
            self.in_features, self.hidden, num_layers=1, batch_first=True, bidirectional=True
        )
        self.dropout = nn.Dropout(float(dropout))
        self.image_head = nn.Linear(2 * self.hidden, self.n_classes)
        self.scan_head = nn.Linear(4 * self.hidden, self.n_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Predict per-slice and per-scan logits.

        Parameters
        ----------
        x : Tensor
            Slice embeddings, shape (B, T, F), padded after the last real slice of each sequence.
        lengths : Tensor or None
            Number of real slices of each sequence, shape (B,), each in ``[1, T]``; None means
            every sequence has T slices.

        Returns
        -------
        image_logits : Tensor
            Shape (B, T, K); zero at padded time steps.
        scan_logits : Tensor
            Shape (B, K).

        Raises
        ------
        InputDataError
            If the shapes of ``x`` or ``lengths`` do not fit the model.
        """
        batch, steps = self._check_input(x)
        if self.standardise:
            x = (x - self.input_mean) / self.input_scale
        if lengths is None:
            out, _ = self.lstm(x)
            mask = torch.ones(batch, steps, dtype=torch.bool, device=x.device)
        else:
            cpu_lengths = self._check_lengths(lengths, batch, steps)
            packed = pack_padded_sequence(x, cpu_lengths, batch_first=True, enforce_sorted=False)
            packed_out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
            positions = torch.arange(steps, device=x.device)
            mask = positions[None, :] < cpu_lengths.to(x.device)[:, None]
        out = self.dropout(out)
        mask3 = mask.unsqueeze(-1)
        image_logits = self.image_head(out).masked_fill(~mask3, 0.0)
        counts = mask.sum(dim=1, keepdim=True).to(out.dtype)
        mean = out.masked_fill(~mask3, 0.0).sum(dim=1) / counts
        peak = out.masked_fill(~mask3, float("-inf")).amax(dim=1)
        scan_logits = self.scan_head(torch.cat([mean, peak], dim=1))
        return image_logits, scan_logits

    def set_standardisation(self, mean, scale) -> None:
        """Set the per-feature mean and SD of the input (``standardise=True`` only)."""
        if not self.standardise:
            raise UsageError("this QNet was built without input standardisation")
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if mean.shape != (self.in_features,) or scale.shape != mean.shape:
            raise InputDataError(f"standardisation needs {self.in_features} means and SDs")
        self.input_mean.copy_(mean)
        self.input_scale.copy_(scale.clamp_min(1e-6))

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 3 or x.shape[2] != self.in_features:
            raise InputDataError(
                f"QNet expects input of shape (batch, slices, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise InputDataError(f"QNet got an empty batch of shape {tuple(x.shape)}")
        return int(x.shape[0]), int(x.shape[1])

    @staticmethod
    def _check_lengths(lengths: Tensor, batch: int, steps: int) -> Tensor:
        lengths = torch.as_tensor(lengths)
        if lengths.ndim != 1 or lengths.shape[0] != batch:
            raise InputDataError(
                f"QNet lengths must have shape ({batch},), got {tuple(lengths.shape)}"
            )
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise InputDataError(f"QNet lengths must be integers, got {lengths.dtype}")
        cpu_lengths = lengths.detach().to("cpu", torch.int64)
        if int(cpu_lengths.min()) < 1 or int(cpu_lengths.max()) > steps:
            raise InputDataError(
                f"QNet lengths must lie in [1, {steps}], got {cpu_lengths.tolist()}"
            )
        return cpu_lengths


def qnet_loss(
    image_logits: Tensor,
    scan_logits: Tensor,
    labels: Tensor,
    lengths: Tensor,
    image_loss_weight: float,
) -> Tensor:
    """Q-Net stage-2 loss: scan CE + ``image_loss_weight`` * mean image CE over real slices.

    The scan term averages over the sequences; the image term averages over all real slices of
    the batch (each carrying its participant's label), so padded steps never count.

    Parameters
    ----------
    image_logits : Tensor
        Shape (B, T, K).
    scan_logits : Tensor
        Shape (B, K).
    labels : Tensor
        int64, shape (B,); every slice carries its participant's label.
    lengths : Tensor
        Shape (B,); time steps at or beyond a sequence's length are ignored.
    image_loss_weight : float
        Weight of the image-level term.

    Returns
    -------
    Tensor
        A scalar.
    """
    scan_loss = F.cross_entropy(scan_logits, labels)
    if image_loss_weight == 0:
        return scan_loss
    steps = image_logits.shape[1]
    mask = (
        torch.arange(steps, device=image_logits.device)[None, :]
        < lengths.to(image_logits.device)[:, None]
    )
    image_loss = F.cross_entropy(image_logits[mask], labels[:, None].expand(-1, steps)[mask])
    return scan_loss + image_loss_weight * image_loss
