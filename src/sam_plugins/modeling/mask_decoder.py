"""Mask decoder: image embedding + prompt embeddings -> mask logits and predicted IoU."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d
from .fast_decoder import (
    ImageSide,
    conv1_of_final_tokens,
    fast_transformer,
    high_res_token_layout,
    prepare_image_side,
    same_bits,
    upscale_masks,
    version_or_none,
)


class MaskDecoder(nn.Module):
    """Predicts masks with a two-way transformer, an IoU token and 1 + num_multimask_outputs mask tokens."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self._side_cache: tuple | None = None
        self._high_res_cache: tuple | None = None

    #: With grad disabled, the transformer runs reassociated (``fast_decoder``): same outputs to float
    #: rounding (~1e-6), several times fewer operations. False, or ``exact=True``, runs the plain path.
    fast_inference: bool = True

    def uses_fast_path(self, exact: bool = False) -> bool:
        """Whether a call now takes the reassociated inference path."""
        return self.fast_inference and not exact and not torch.is_grad_enabled()

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return mask logits (B, C, 4h, 4w) and IoU predictions (B, C), C = 3 if multimask else 1.

        image_embeddings has batch size 1 (one image, B prompts: the official convention) or B
        (one embedding per prompt set, as used in training). ``high_res_features``: the output of the
        model's optional :class:`HighResEncoder` (same batch convention), added during upscaling.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        if self.uses_fast_path():  # upscale only the masks that are returned
            masks, iou_pred = self.predict_masks(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                mask_slice,
                high_res_features=high_res_features,
            )
            return masks, iou_pred[:, mask_slice]
        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            high_res_features=high_res_features,
        )
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    #: On CPU the decoder is memory-bound: prompts run in chunks whose image-side tensors hold about
    #: this many elements (4 prompts for the official 256 x 64 x 64 embedding; same results, ~1.7x faster).
    cpu_chunk_elements: int = 4 * 256 * 64 * 64

    def chunk_size(self, image_embeddings: torch.Tensor, batch: int) -> int:
        """Prompts per transformer call: bounded on CPU, everything at once elsewhere."""
        if image_embeddings.device.type != "cpu" or self.cpu_chunk_elements <= 0:
            return batch
        return max(1, self.cpu_chunk_elements // max(1, image_embeddings[0].numel()))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice | None = None,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the masks of the mask tokens in `mask_slice` (default all) and all IoUs."""
        b = sparse_prompt_embeddings.shape[0]
        dense = self._shared_dense(dense_prompt_embeddings)
        chunk = self.chunk_size(image_embeddings, b)
        if image_embeddings.shape[0] != 1 or b <= chunk:
            return self._masks_and_ious(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense, mask_slice, high_res_features
            )
        masks, ious = [], []
        for start in range(0, b, chunk):
            part = slice(start, start + chunk)
            part_dense = dense if dense.shape[0] == 1 else dense[part]
            m, i = self._masks_and_ious(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings[part],
                part_dense,
                mask_slice,
                high_res_features,
            )
            masks.append(m)
            ious.append(i)
        return torch.cat(masks), torch.cat(ious)

    def _masks_and_ious(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense: torch.Tensor,
        mask_slice: slice | None,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of `mask_slice` and all IoUs for one chunk of prompts.

        On the fast path with an image side shared by all prompts, the upscaling's first convolution
        is carried through the transformer's low-rank image updates (``conv1_of_final_tokens``)
        instead of being applied to the final image tokens.
        """
        hw = image_embeddings.shape[-2:]
        if not self.uses_fast_path():
            iou_pred, mask_tokens_out, src = self.predict_tokens(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense, mask_slice=mask_slice
            )
            masks = self.masks_from_tokens(
                mask_tokens_out, src, hw, mask_slice=mask_slice, high_res_features=high_res_features
            )
            return masks, iou_pred
        hs, src, conv1_out = self._fast_tokens(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense, mask_slice, with_conv1=True
        )
        masks = self.masks_from_tokens(
            hs[:, 1:],
            src,
            hw,
            mask_slice=mask_slice,
            conv1_out=conv1_out,
            high_res_features=high_res_features,
        )
        return masks, self.iou_prediction_head(hs[:, 0, :])

    def _fast_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense: torch.Tensor,
        mask_slice: slice | None,
        *,
        with_conv1: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The fast transformer for the IoU token and the chosen mask tokens: outputs (B, 1 + T, C),
        image tokens, and (``with_conv1``, on a shared image side) the upscaling's first convolution
        of those image tokens (a workspace: use it before the next call), else None."""
        tokens = self._tokens(sparse_prompt_embeddings)
        side = self._image_side(image_embeddings, image_pe, dense, tokens.shape[0])
        chosen = range(self.num_mask_tokens)[mask_slice or slice(None)]
        trace = [] if with_conv1 and side.conv1_in is not None else None
        rows = [0] + [1 + i for i in chosen]
        hs, src = fast_transformer(self.transformer, side, tokens, rows=rows, trace=trace)
        if trace is None:
            return hs, src, None
        return hs, src, conv1_of_final_tokens(self.transformer, self.output_upscaling, side, trace)

    @staticmethod
    def _shared_dense(dense: torch.Tensor) -> torch.Tensor:
        """A dense embedding broadcast over the batch (no mask input) is reduced to batch 1."""
        if dense.shape[0] > 1 and dense.stride(0) == 0:
            return dense[:1]
        return dense

    def predict_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        *,
        exact: bool = False,
        mask_slice: slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the transformer: IoU predictions (B, T), mask-token outputs (B, T, C), image tokens (B, hw, C).

        With ``mask_slice`` only those mask tokens' outputs are returned (and, on the fast path,
        computed by the final attention).

        The masks themselves (the costly upscaling) come from :meth:`masks_from_tokens`, so callers
        can skip them for prompts whose predicted IoU they discard. ``exact``: the plain path, whose
        results equal the official decoder's bit for bit, even with grad disabled.
        """
        dense = self._shared_dense(dense_prompt_embeddings)
        if self.uses_fast_path(exact):
            # the final attention only for the IoU token and the chosen mask tokens
            hs, src, _ = self._fast_tokens(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense, mask_slice
            )
            mask_tokens_out = hs[:, 1:]
        else:
            tokens = self._tokens(sparse_prompt_embeddings)
            # The image side stays at batch 1 while it is the same for every prompt (no mask input):
            # the first transformer block then computes its image projections once.
            src = self._check_batch(image_embeddings + dense, tokens.shape[0])
            hs, src = self.transformer(src, image_pe, tokens)
            mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens][:, mask_slice or slice(None)]
        return self.iou_prediction_head(hs[:, 0, :]), mask_tokens_out, src

    def predict_ious(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """IoU predictions (B, T) only: on the fast path the final attention runs for the IoU token alone."""
        if not self.uses_fast_path():
            return self.predict_tokens(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )[0]
        tokens = self._tokens(sparse_prompt_embeddings)
        dense = self._shared_dense(dense_prompt_embeddings)
        side = self._image_side(image_embeddings, image_pe, dense, tokens.shape[0])
        hs, _ = fast_transformer(self.transformer, side, tokens, rows=[0])
        return self.iou_prediction_head(hs[:, 0, :])

    def _tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """[IoU token, mask tokens, prompt tokens] for every prompt set: (B, 1 + T + N, C)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    @staticmethod
    def _check_batch(src: torch.Tensor, b: int) -> torch.Tensor:
        if src.shape[0] not in (1, b):
            raise ValueError(f"image_embeddings batch {src.shape[0]} does not match {b} prompt sets")
        return src

    def _image_side(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor, b: int
    ) -> ImageSide:
        """The fast path's image side; cached while embedding, dense prompt, PE and weights are unchanged."""
        shared = image_embeddings.shape[0] == 1 and dense.shape[0] == 1
        if not shared:
            return prepare_image_side(
                self.transformer, self._check_batch(image_embeddings + dense, b), image_pe
            )
        # A dense embedding without mask input is one vector broadcast over the grid: compare that.
        constant = dense.stride(-1) == 0 and dense.stride(-2) == 0
        dense_key = dense[..., :1, :1] if constant else dense
        layers = self.transformer.layers
        # everything the cached side depends on: block 0's image projections, conv1 and the LayerNorms
        # that conv1_in is pushed through
        modules = (
            (layers[0].cross_attn_token_to_image, layers[0].cross_attn_image_to_token)
            + (self.output_upscaling[0],)
            + tuple(block.norm4 for block in layers)
            if layers
            else ()
        )
        versions = tuple(version_or_none(p) for m in modules for p in m.parameters())
        cache = self._side_cache
        if cache is not None:
            emb, dkey, dshape, pe_ref, pe_version, pe_copy, cached_versions, side = cache
            if (
                cached_versions == versions
                and dshape == dense.shape
                and same_bits(dkey, dense_key.contiguous())
                and same_bits(emb, image_embeddings.contiguous())
                and (
                    (
                        pe_ref is image_pe
                        and pe_version is not None
                        and version_or_none(image_pe) == pe_version
                    )
                    or same_bits(pe_copy, image_pe.contiguous())
                )
            ):
                return side
        side = prepare_image_side(self.transformer, image_embeddings + dense, image_pe, self.output_upscaling)
        pe_version = version_or_none(image_pe)
        self._side_cache = (
            image_embeddings.detach().clone(),
            dense_key.detach().clone(),
            dense.shape,
            image_pe,
            pe_version,
            image_pe.detach().clone(),
            versions,
            side,
        )
        return side

    def _high_res_rows(
        self, high_res_features: list[torch.Tensor], hw: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``high_res_token_layout`` of the features, made once per image (clicks reuse it) while the
        same tensors are passed unchanged (tensors without a version counter are not cached)."""
        key = (tuple(hw), tuple(version_or_none(f) for f in high_res_features))
        if None in key[1]:
            return high_res_token_layout(high_res_features, hw)
        cache = self._high_res_cache
        if (
            cache is not None
            and cache[0] == key
            and all(a is b for a, b in zip(cache[1], high_res_features, strict=True))
        ):
            return cache[2]
        rows = high_res_token_layout(high_res_features, hw)
        self._high_res_cache = (key, list(high_res_features), rows)
        return rows

    def masks_from_tokens(
        self,
        mask_tokens_out: torch.Tensor,
        src: torch.Tensor,
        embedding_hw: tuple[int, ...],
        *,
        exact: bool = False,
        mask_slice: slice | None = None,
        conv1_out: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mask logits (B, T, 4h, 4w) from the transformer outputs of :meth:`predict_tokens`.

        ``mask_slice``: ``mask_tokens_out`` holds only these mask tokens (as returned by
        ``predict_tokens(..., mask_slice=...)``); default all of them.
        ``high_res_features`` [stride 4, stride 8] (batch 1 or B): added after the first and the second
        upscaling convolution (SAM 2's scheme), for models with a :class:`HighResEncoder`.

        On the fast path the upscaling runs as channels-last matmuls (same function, ~1e-6 relative).
        """
        chosen = range(len(self.output_hypernetworks_mlps))[mask_slice or slice(None)]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, j, :]) for j, i in enumerate(chosen)], dim=1
        )
        if self.uses_fast_path(exact) and len(self.output_upscaling) == 5:
            high_res = (
                None if high_res_features is None else self._high_res_rows(high_res_features, embedding_hw)
            )
            return upscale_masks(
                self.output_upscaling, hyper_in, src.contiguous(), embedding_hw, conv1_out, high_res
            )
        h, w = embedding_hw
        src = src.transpose(1, 2).reshape(src.shape[0], src.shape[2], h, w)
        if high_res_features is None:
            upscaled = self.output_upscaling(src)
        else:
            conv1, norm, act1, conv2, act2 = self.output_upscaling
            feat_s4, feat_s8 = high_res_features
            upscaled = act1(norm(conv1(src) + feat_s8))
            upscaled = act2(conv2(upscaled) + feat_s4)
        bu, cu, hu, wu = upscaled.shape
        return (hyper_in @ upscaled.view(bu, cu, hu * wu)).view(bu, -1, hu, wu)


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (hypernetworks and the IoU head)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out, strict=True))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
