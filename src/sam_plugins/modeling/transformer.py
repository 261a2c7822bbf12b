"""Two-way transformer of the mask decoder: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import MLPBlock
from .fast_decoder import same_bits, version_or_none


class TwoWayTransformer(nn.Module):
    """Stack of two-way attention blocks followed by a final token-to-image attention.

    The image side may have batch size 1 while the prompt side has batch size B: it is then
    broadcast, never copied, until the first block makes it prompt-specific. In that case the
    prompt-independent projections of the first block (token-to-image keys and values, image-to-token
    queries) are also cached across calls (inference only), so that repeated prompts on the same
    image embedding skip them; the cached values are the ones that would be computed, bit for bit.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)
        self._layer0_cache: tuple | None = None

    def _layer0_projections(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, image_pe_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Prompt-independent projections of block 0, cached while the image side is unchanged."""
        if (
            not self.layers
            or not self.layers[0].skip_first_layer_pe
            or image_embedding.shape[0] != 1
            or image_pe.shape[0] != 1
            or torch.is_grad_enabled()
        ):
            return None
        block = self.layers[0]
        modules = (block.cross_attn_token_to_image, block.cross_attn_image_to_token)
        versions = tuple(version_or_none(p) for m in modules for p in m.parameters())
        cache = self._layer0_cache
        if cache is not None:
            src, pe_ref, pe_version, pe_copy, cached_versions, projections = cache
            if (
                cached_versions == versions
                and src.shape == image_embedding.shape
                and src.dtype == image_embedding.dtype
                and src.device == image_embedding.device
                and (
                    (
                        pe_ref is image_pe_input
                        and pe_version is not None
                        and version_or_none(pe_ref) == pe_version
                    )
                    or same_bits(pe_copy, image_pe_input.contiguous())
                )
                and same_bits(src, image_embedding.contiguous())
            ):
                return projections
        k = image_embedding + image_pe
        t2i, i2t = modules
        projections = (t2i.k_proj(k), t2i.v_proj(image_embedding), i2t.q_proj(k))
        self._layer0_cache = (
            image_embedding.contiguous().clone(),
            image_pe_input,
            version_or_none(image_pe_input),
            image_pe_input.contiguous().clone(),
            versions,
            projections,
        )
        return projections

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: (B or 1, C, h, w); point_embedding: (B, N, C).

        Returns the processed tokens (B, N, C) and image tokens (B, h*w, C).
        """
        image_pe_input = image_pe
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        projections = self._layer0_projections(image_embedding, image_pe, image_pe_input)
        queries = point_embedding
        keys = image_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries=queries,
                keys=keys,
                query_pe=point_embedding,
                key_pe=image_pe,
                image_projections=projections if i == 0 else None,
            )
        q = queries + point_embedding
        k = keys + image_pe
        queries = queries + self.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = self.norm_final_attn(queries)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, then image-to-token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block. image_projections: precomputed block-0 projections
        (t2i k_proj(keys + key_pe), t2i v_proj(keys), i2t q_proj(keys + key_pe))."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        if image_projections is not None:
            t2i_k, t2i_v, i2t_q = image_projections
            t2i = self.cross_attn_token_to_image
            attn_out = t2i.attend(t2i.q_proj(queries + query_pe), t2i_k, t2i_v)
        else:
            q = queries + query_pe
            k = keys + key_pe
            attn_out = self.cross_attn_token_to_image(q=q, k=k, v=keys)
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        if image_projections is not None:
            i2t = self.cross_attn_image_to_token
            attn_out = i2t.attend(i2t_q, i2t.k_proj(q), i2t.v_proj(queries))
        else:
            k = keys + key_pe
            attn_out = self.cross_attn_image_to_token(q=k, k=q, v=queries)
        keys = self.norm4(keys + attn_out)
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the embedding size."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def _recombine_heads(x: torch.Tensor) -> torch.Tensor:
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected q, k, v of shape (B or 1, n, internal_dim)."""
        q = self._separate_heads(q)
        k = self._separate_heads(k)
        v = self._separate_heads(v)
        attn = q @ k.transpose(-2, -1)
        attn = attn / math.sqrt(q.shape[-1])
        attn = torch.softmax(attn, dim=-1)
        return self.out_proj(self._recombine_heads(attn @ v))
