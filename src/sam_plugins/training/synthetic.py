"""Procedural fluorescence-microscopy images with exact instance masks (nuclei and whole cells).

The generator draws a *scene* (object kind, size, crowding, shapes, brightness, texture,
background, optics) from the ranges in :class:`SyntheticConfig`, rasterises the objects exactly
(:mod:`.synthetic_shapes`), renders the fluorophore density, and simulates the microscope: PSF blur,
defocused objects, out-of-focus haze, uneven illumination, autofluorescence and debris, Poisson
shot noise, camera read noise, offset, gain, saturation and 8/16-bit quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from sam_plugins.training.synthetic_shapes import (
    blur,
    clean_labels,
    contact_map,
    drop_close_pairs,
    edge_map,
    lattice_centers,
    random_shapes,
    rasterize,
    rasterize_ellipsoids,
    smooth_noise,
    spot_field,
)

__all__ = ["SyntheticConfig", "SyntheticSample", "SyntheticDataset", "generate_sample", "generate_volume"]

Range = tuple[float, float]
MIN_SNR = 2.0  # smallest per-pixel signal-to-noise ratio of the typical object


@dataclass
class SyntheticConfig:
    """Ranges the scene parameters are drawn from (uniformly, or log-uniformly for scales).

    The defaults cover the whole variety the cell model has to handle; narrow a range to
    specialise (e.g. ``kind_weights={"nuclei": 1.0}``, ``bit_depth_weights={16: 1.0}``).
    """

    size: tuple[int, int] = (256, 256)
    kind_weights: dict[str, float] = field(default_factory=lambda: {"nuclei": 0.7, "cells": 0.3})
    radius_range: Range = (4.0, 45.0)  # nuclei: mean equivalent radius of a scene, px
    cell_radius_range: Range = (10.0, 60.0)  # whole cells
    radius_spread_range: Range = (0.05, 0.3)  # log-normal sigma of radii within a scene
    density_range: Range = (0.03, 0.75)  # fraction of the image covered by objects
    clustering_range: Range = (0.0, 1.0)  # 0 = uniform spread, 1 = clumps and empty areas
    elongation_range: Range = (1.2, 2.6)  # largest axis ratio in a scene (nuclei)
    cell_elongation_range: Range = (1.0, 3.5)
    irregularity_range: Range = (0.0, 0.1)  # relative outline modulation (nuclei)
    cell_irregularity_range: Range = (0.05, 0.35)
    dividing_range: Range = (0.0, 0.08)  # fraction of dividing objects (two lobes / daughter pairs)
    mitotic_range: Range = (0.0, 0.08)  # fraction of small, bright, condensed nuclei
    intensity_spread_range: Range = (0.1, 0.6)  # log-normal sigma of object brightness
    texture_range: Range = (0.0, 0.35)  # relative chromatin / cytoplasm texture
    # nuclei: brightness left at the labelled outline (relative to the centre) and the exponent of
    # the dome between centre and outline (near 0 = flat top, 1 = parabolic, higher = falls early)
    nuclei_edge_range: Range = (0.55, 0.9)
    nuclei_dome_range: Range = (0.02, 0.5)
    background_range: Range = (0.0, 0.35)  # background level relative to the median object
    gradient_range: Range = (0.0, 0.6)  # illumination non-uniformity (relative)
    autofluorescence_range: Range = (0.0, 0.3)  # smooth background structure (relative)
    haze_range: Range = (0.0, 0.25)  # out-of-focus glow around objects (relative)
    # wide-field PSF wings: a glow a few px wide that the outline does not include (real nuclei
    # images fall off slowly outside the drawn outline: ~30 % of the plateau 1.5 px out, ~15 % 4 px out)
    psf_wing_prob: float = 0.75
    psf_wing_range: Range = (0.2, 1.2)  # wing brightness relative to the in-focus signal
    psf_wing_sigma_range: Range = (2.0, 8.0)  # px
    bright_contact_prob: float = 0.3  # touching nuclei that overlap: brighter, not darker, contact
    debris_range: Range = (0.0, 1.0)  # amount of unlabelled debris (0 = none)
    defocus_range: Range = (0.0, 0.25)  # fraction of objects from another focal plane
    psf_sigma_range: Range = (0.4, 2.2)  # Gaussian PSF sigma, px
    photons_range: Range = (12.0, 10000.0)  # photons at the typical object peak (shot noise)
    read_noise_range: Range = (0.002, 0.03)  # camera read noise relative to full scale
    saturation_prob: float = 0.15  # chance that the brightest objects clip at full scale
    bit_depth_weights: dict[int, float] = field(default_factory=lambda: {8: 0.5, 16: 0.5})
    min_area: int = 8  # objects smaller than this (px, e.g. cut by the border) are dropped
    max_objects: int = 2500


@dataclass
class SyntheticSample:
    """One generated image with its exact instance labels (0 = background, 1..N)."""

    image: np.ndarray  # (H, W) uint8 or uint16
    labels: np.ndarray  # (H, W) int32
    meta: dict[str, Any]


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _loguniform(rng: np.random.Generator, r: Range) -> float:
    lo, hi = max(r[0], 1e-9), max(r[1], 1e-9)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def _choice(rng: np.random.Generator, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return blur(img, sigma)


# ----------------------------------------------------------------------------------------- layout
def _layout(rng: np.random.Generator, cfg: SyntheticConfig, kind: str, h: int, w: int) -> dict[str, Any]:
    """Draw object centres, sizes and shapes for a scene and rasterise them exactly."""
    cells = kind == "cells"
    r0 = _loguniform(rng, cfg.cell_radius_range if cells else cfg.radius_range)
    spread = _uniform(rng, cfg.radius_spread_range)
    density = _uniform(rng, cfg.density_range)
    if cells:  # cultured cells are usually sub-confluent to confluent
        density = max(density, _uniform(rng, (0.3, 0.95)))
    clustering = _uniform(rng, cfg.clustering_range)

    # keep-probability map: clumps and holes for clustered scenes
    field_sigma = r0 * rng.uniform(3.0, 8.0)
    keep = 0.5 + 0.5 * clustering * np.clip(smooth_noise(rng, (h, w), field_sigma), -1.5, 1.5) / 1.5
    keep_mean = float(np.clip(keep, 0, 1).mean())
    coverage = min(density / max(keep_mean, 0.05), 1.05)
    spacing = max(r0 * np.sqrt(2 * np.pi / (np.sqrt(3.0) * coverage)), 1.55 * r0)
    jitter = rng.uniform(0.12, 0.35) if cells else rng.uniform(0.15, 0.45)
    if coverage < 0.35:
        keep = np.clip(keep, 0, 1)
    # sparse scenes: lattice at a density that fills the image, thinned uniformly
    centers = lattice_centers(rng, h, w, spacing, jitter, np.clip(keep, 0, 1), margin=1.2 * r0)
    n = len(centers)
    if n > cfg.max_objects:
        centers = centers[rng.choice(n, cfg.max_objects, replace=False)]
        n = cfg.max_objects
    radius = r0 * np.exp(rng.normal(0, spread, n))
    radius = np.clip(radius, 0.6 * cfg.radius_range[0] if not cells else 3.0, None)

    # crowded nuclei are pushed against each other but rarely overlap much
    keep_idx = drop_close_pairs(centers, radius, 0.4 if cells else rng.uniform(0.55, 0.8))
    centers, radius = centers[keep_idx], radius[keep_idx]
    n = len(centers)

    # object states: normal / mitotic (small, bright, condensed) / dividing
    p_mit = 0.0 if cells else _uniform(rng, cfg.mitotic_range)
    p_div = _uniform(rng, cfg.dividing_range)
    u = rng.random(n)
    mitotic = u < p_mit
    dividing = (u >= p_mit) & (u < p_mit + p_div)
    lobed = dividing & (rng.random(n) < 0.5)
    pairs = dividing & ~lobed

    e_max = _uniform(rng, cfg.cell_elongation_range if cells else cfg.elongation_range)
    elong = 1.0 + (e_max - 1.0) * rng.beta(2.5, 1.5, n)
    irr_r = cfg.cell_irregularity_range if cells else cfg.irregularity_range
    irr = np.full(n, _uniform(rng, irr_r)) * rng.uniform(0.5, 1.5, n)
    lobe = np.where(lobed, rng.uniform(0.3, 0.5, n), 0.0)
    radius = np.where(mitotic, radius * rng.uniform(0.45, 0.8, n), radius)
    elong = np.where(mitotic, rng.uniform(1.0, 3.2, n), elong)
    irr = np.where(mitotic, irr + rng.uniform(0.02, 0.12, n), irr)

    # daughter pairs: replace one object by two smaller ones side by side
    if pairs.any():
        k = np.nonzero(pairs)[0]
        ang = rng.uniform(0, np.pi, len(k))
        rd = radius[k] * rng.uniform(0.6, 0.8, len(k))
        sep = rd * rng.uniform(1.0, 1.5, len(k))
        off = np.stack([np.sin(ang), np.cos(ang)], axis=1) * sep[:, None]
        centers = np.concatenate([centers, centers[k] - off])
        centers[k] = centers[k] + off
        radius = np.concatenate([radius, rd])
        radius[k] = rd
        extra = len(k)
        elong = np.concatenate([elong, elong[k]])
        irr = np.concatenate([irr, irr[k]])
        lobe = np.concatenate([lobe, lobe[k]])
        mitotic = np.concatenate([mitotic, mitotic[k]])
        dividing = np.concatenate([dividing, np.ones(extra, dtype=bool)])
        n = len(centers)
    shapes = random_shapes(
        rng, centers[:, 0], centers[:, 1], radius, elong, irr, lobe, roughness=1.2 if cells else 1.7
    )
    raw, dist = rasterize(shapes, h, w)
    labels, source = clean_labels(raw, cfg.min_area)
    obj = source[1:] - 1  # object index of each final label
    return {
        "labels": labels,
        "dist": dist,
        "radius": radius[obj],
        "cy": shapes.cy[obj],
        "cx": shapes.cx[obj],
        "mitotic": mitotic[obj],
        "dividing": dividing[obj],
        "r0": r0,
        "density": density,
        "clustering": clustering,
    }


# -------------------------------------------------------------------------------------- rendering
def _lut(values: np.ndarray) -> np.ndarray:
    """Per-label lookup table with 0 for the background."""
    return np.concatenate([[0.0], values]).astype(np.float32)


def _render_objects(
    rng: np.random.Generator, cfg: SyntheticConfig, kind: str, lay: dict[str, Any], psf: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fluorophore density of all objects, blurred by the PSF (defocused ones blurred more)."""
    labels, dist = lay["labels"], lay["dist"]
    h, w = labels.shape
    n = int(labels.max())
    r0 = lay["r0"]
    inside = labels > 0
    spread = _uniform(rng, cfg.intensity_spread_range)
    bright = np.exp(rng.normal(0, spread, n))
    bright = np.where(lay["mitotic"], bright * rng.uniform(1.5, 4.0, n), bright)
    g_scene = rng.uniform(0.2, 1.0) if kind == "cells" else _uniform(rng, cfg.nuclei_dome_range)
    gamma = np.where(lay["mitotic"], 0.05, g_scene * rng.uniform(0.6, 1.4, n))
    tex_amp = _uniform(rng, cfg.texture_range) * rng.uniform(0.5, 1.5, n)
    tex_amp = np.where(lay["mitotic"], tex_amp + 0.25, tex_amp)
    lab = labels
    d2 = np.where(inside, dist, 1.0) ** 2
    # brightness left at the outline: annotators draw nuclei where the blurred edge falls to
    # ~30-45 % of the plateau, so nuclei keep most of their brightness up to the outline; whole
    # cells thin out towards a dim periphery that still belongs to the cell
    edge = rng.uniform(0.15, 0.6) if kind == "cells" else _uniform(rng, cfg.nuclei_edge_range)
    edge = np.clip(edge + rng.normal(0, 0.05, n), 0.05, 0.95)
    dome = np.power(np.clip(1.0 - d2, 0.0, 1.0), _lut(gamma)[lab])
    profile = np.where(inside, _lut(edge)[lab] + (1.0 - _lut(edge)[lab]) * dome, 0.0)
    # one side of an object brighter than the other (shape in z, uneven staining)
    tilt = rng.uniform(0.0, 0.35) * rng.uniform(0.0, 1.0, n)
    if n and tilt.max() > 0.02:
        t_ang = rng.uniform(0, 2 * np.pi, n)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (xx - _lut(lay["cx"])[lab]) * _lut(np.cos(t_ang))[lab]
        ramp += (yy - _lut(lay["cy"])[lab]) * _lut(np.sin(t_ang))[lab]
        ramp /= np.maximum(_lut(lay["radius"])[lab], 1.0)
        profile = profile * np.clip(1.0 + _lut(tilt)[lab] * ramp, 0.2, 2.0)

    # texture: fine grain + coarser chromatin / cytoplasm structure
    fine = smooth_noise(rng, (h, w), rng.uniform(0.6, 1.6))
    coarse = smooth_noise(rng, (h, w), max(1.0, r0 * rng.uniform(0.1, 0.3)))
    wf = rng.uniform(0.2, 0.8)
    texture = 1.0 + _lut(tex_amp)[lab] * (wf * fine + (1 - wf) * coarse)
    mode = "nuclei"
    if kind == "nuclei":
        # bright chromocentres and dark nucleoli
        area = h * w
        n_spk = int(rng.uniform(0, 3.0) * area / max(r0, 4) ** 2 * rng.random())
        speck = spot_field(rng, (h, w), n_spk, rng.uniform(0.6, 1.5))
        n_nuc = int(rng.uniform(0, 1.0) * area / (np.pi * r0**2) * 3 * rng.random())
        nucleoli = spot_field(rng, (h, w), n_nuc, max(0.8, r0 * rng.uniform(0.08, 0.18)))
        texture = texture + rng.uniform(0, 0.8) * speck - rng.uniform(0, 0.5) * np.minimum(nucleoli, 1.5)
        body = profile * np.clip(texture, 0.05, None)
        if rng.random() < 0.15:  # nuclear-envelope / lamina-like bright rim
            depth = (1.0 - np.where(inside, dist, 1.0)) * _lut(lay["radius"])[lab]
            body = body + rng.uniform(0.3, 1.2) * np.exp(-((depth / rng.uniform(1.0, 2.5)) ** 2)) * inside
            mode = "nuclei-rim"
        signal = _lut(bright)[lab] * body
    else:
        mode = _choice(rng, {"cytoplasm": 0.55, "membrane": 0.2, "mixed": 0.25})
        # the nucleus: an ellipse near (not at) the cell centre, brighter or darker than the cytoplasm
        rad = lay["radius"]
        ang = rng.uniform(0, 2 * np.pi, n)
        shift = rad * rng.uniform(0.0, 0.3, n)
        ny, nx = lay["cy"] + shift * np.sin(ang), lay["cx"] + shift * np.cos(ang)
        nr = rad * rng.uniform(0.3, 0.5, n)
        nuc_gain = rng.uniform(0.3, 1.8) * rng.uniform(0.8, 1.2, n)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dn = np.hypot(yy - _lut(ny)[lab], xx - _lut(nx)[lab]) / np.maximum(_lut(nr)[lab], 1.0)
        w_nuc = np.clip((1.0 - dn) * _lut(nr)[lab] / 1.5, 0.0, 1.0) * inside
        cyto = profile * np.clip(texture, 0.05, None) * (1.0 + w_nuc * (_lut(nuc_gain)[lab] - 1.0))
        ring_w = rng.uniform(0.6, 1.5)
        ring = _blur(edge_map(labels).astype(np.float32), ring_w) * (2.5 * ring_w)
        ring = np.clip(ring, 0, 1.5) * np.clip(1.0 + 0.5 * fine * rng.uniform(0, 1), 0, None)
        if mode == "cytoplasm":
            body = cyto
        elif mode == "membrane":
            body = rng.uniform(0.05, 0.35) * cyto + ring
        else:
            body = cyto + rng.uniform(0.3, 1.0) * ring
        signal = _lut(bright)[lab] * body * inside

    # touching objects: a faint dark seam along the contact line
    seam = rng.uniform(0.0, 0.6)
    if cfg.bright_contact_prob > 0 and rng.random() < cfg.bright_contact_prob:
        seam = -rng.uniform(0.2, 0.8)  # nuclei lying over each other add up where they overlap
    if abs(seam) > 0.02 and n > 1:
        signal = signal * (1.0 - seam * np.clip(_blur(contact_map(labels).astype(np.float32), 0.8), 0, 1))
    signal = signal.astype(np.float32)

    # objects from another focal plane: dimmer and more blurred
    p_def = _uniform(rng, cfg.defocus_range)
    defocus = rng.random(n) < p_def
    if defocus.any():
        dsig = psf + r0 * rng.uniform(0.04, 0.12)
        dmask = np.concatenate([[False], defocus])[lab]
        dim = rng.uniform(0.3, 0.8)
        out = _blur(np.where(dmask, 0.0, signal), psf) + _blur(np.where(dmask, signal * dim, 0.0), dsig)
    else:
        out = _blur(signal, psf)
    info = {
        "mode": mode,
        "median_brightness": float(np.median(bright)) if n else 1.0,
        "n_defocused": int(defocus.sum()),
    }
    return out.astype(np.float32), info


def _background(
    rng: np.random.Generator, cfg: SyntheticConfig, shape: tuple[int, int], r0: float, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Additive background (offset, autofluorescence, debris) and multiplicative illumination."""
    h, w = shape
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    ang = rng.uniform(0, 2 * np.pi)
    plane = np.cos(ang) * xx + np.sin(ang) * yy
    g = _uniform(rng, cfg.gradient_range)
    vig = rng.uniform(0, 1) * g
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    illum = 1.0 + (g - vig) * 0.5 * plane - vig * 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2)
    illum = np.clip(illum, 0.2, None)

    bg = np.full(shape, _uniform(rng, cfg.background_range) * level, dtype=np.float32)
    auto = _uniform(rng, cfg.autofluorescence_range) * level
    if auto > 0:
        big = smooth_noise(rng, shape, rng.uniform(15, 60))
        mid = smooth_noise(rng, shape, rng.uniform(3, 10))
        bg = bg + auto * np.clip(0.5 + 0.35 * big + 0.15 * mid, 0, None)
    debris = _uniform(rng, cfg.debris_range)
    if debris > 0.05:
        area = h * w
        small = spot_field(rng, shape, int(debris * area / 2500 * rng.uniform(0.2, 2)), rng.uniform(0.6, 1.5))
        # larger debris stays clearly smaller than the objects so it is not an unlabelled nucleus
        blob_sigma = min(rng.uniform(1.5, 4.0), 0.3 * r0)
        blobs = spot_field(rng, shape, int(debris * area / 20000 * rng.uniform(0, 2)), blob_sigma)
        bg = bg + level * (rng.uniform(0.2, 1.5) * small + rng.uniform(0.1, 0.6) * blobs)
    return bg, illum


def _camera(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    expected: np.ndarray,
    ref: float,
    contrast: float,
    bg_level: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Shot noise, read noise, offset, gain, clipping and quantisation to 8 or 16 bit.

    ``ref`` is the expected value that maps to the typical object peak. ``contrast`` (the typical
    object signal above background) and ``bg_level`` set a noise floor: photons and read noise are
    limited so that the typical object keeps a per-pixel SNR of at least ``MIN_SNR``.
    """
    bits = int(_choice(rng, cfg.bit_depth_weights))
    if bits == 8:
        full, dtype = 255.0, np.uint8
        offset = rng.uniform(0, 25)
    else:
        full = float(2 ** int(_choice(rng, {12: 0.4, 14: 0.2, 16: 0.4})) - 1)
        dtype = np.uint16
        offset = rng.uniform(0, 0.03) * full + (rng.uniform(90, 110) if rng.random() < 0.5 else 0.0)
    if rng.random() < cfg.saturation_prob:
        peak = rng.uniform(0.9, 1.4)
    else:
        peak = _loguniform(rng, (0.08, 0.85))
    span = peak * (full - offset)  # ADU of the typical object peak above the offset
    cf = max(contrast / max(ref, 1e-9), 1e-3)
    bf = max(bg_level / max(ref, 1e-9), 0.0)
    photons = _loguniform(rng, cfg.photons_range)
    # shot noise alone may use half of the noise budget, read noise the other half
    photons = max(photons, min(2.0 * MIN_SNR**2 * (bf + cf) / cf**2, 50 * cfg.photons_range[1]))
    read = _loguniform(rng, cfg.read_noise_range) * full
    read = max(min(read, span * cf / (np.sqrt(2.0) * MIN_SNR)), 0.3)
    counts = rng.poisson(np.clip(expected, 0, None) * (photons / max(ref, 1e-9))).astype(np.float32)
    adu = offset + counts * np.float32(span / photons)
    adu += rng.standard_normal(adu.shape, dtype=np.float32) * np.float32(read)
    if rng.random() < 0.2:  # hot pixels of the camera sensor
        hot = rng.integers(0, adu.size, size=int(adu.size * rng.uniform(1e-5, 2e-4)))
        adu.reshape(-1)[hot] += np.float32(rng.uniform(0.2, 1.0) * full)
    img = np.clip(np.round(adu), 0, full).astype(dtype)
    return img, {
        "bit_depth": bits,
        "full_scale": int(full),
        "photons": photons,
        "peak_fraction": peak,
        "offset": float(offset),
        "read_noise": float(read),
    }


def generate_sample(rng: np.random.Generator, config: SyntheticConfig | None = None) -> SyntheticSample:
    """One single-channel fluorescence image with exact instance labels, drawn from ``config``."""
    cfg = config or SyntheticConfig()
    h, w = cfg.size
    kind = str(_choice(rng, cfg.kind_weights))
    lay = _layout(rng, cfg, kind, h, w)
    psf = _uniform(rng, cfg.psf_sigma_range) * (1.0 if lay["r0"] > 8 else 0.7)
    signal, info = _render_objects(rng, cfg, kind, lay, psf)
    level = info["median_brightness"]
    bg, illum = _background(rng, cfg, (h, w), lay["r0"], level)
    haze = _uniform(rng, cfg.haze_range)
    if haze > 0.01:
        signal = signal + haze * _blur(signal, lay["r0"] * rng.uniform(0.6, 2.0))
    wing, wing_sigma = 0.0, 0.0
    if cfg.psf_wing_prob > 0 and rng.random() < cfg.psf_wing_prob:
        wing, wing_sigma = _uniform(rng, cfg.psf_wing_range), _loguniform(rng, cfg.psf_wing_sigma_range)
        signal = signal + wing * _blur(signal, wing_sigma)
    expected = illum * (signal + bg)
    inside = lay["labels"] > 0
    ref = float(np.percentile(expected[inside], 95)) if inside.any() else float(expected.max() + 1e-3)
    contrast, bg_level = ref, 0.0
    if inside.any() and not inside.all():
        # the typical object (the ring for membrane stains) must stand out of the noise
        contrast = float(np.percentile((illum * signal)[inside], 90 if info["mode"] == "membrane" else 50))
        bg_level = float(np.median(expected[~inside]))
    image, cam = _camera(rng, cfg, expected, ref, contrast, bg_level)
    labels = lay["labels"]
    meta = {
        "kind": kind,
        "n_objects": int(labels.max()),
        "radius": float(lay["r0"]),
        "density": float(lay["density"]),
        "coverage": float(inside.mean()),
        "clustering": float(lay["clustering"]),
        "psf_sigma": float(psf),
        "haze": float(haze),
        "psf_wing": float(wing),
        "psf_wing_sigma": float(wing_sigma),
        **info,
        **cam,
    }
    return SyntheticSample(image=image, labels=labels, meta=meta)


class SyntheticDataset:
    """Fixed-length, indexable collection of synthetic samples; item ``i`` depends only on (seed, i)."""

    def __init__(self, length: int, seed: int = 0, config: SyntheticConfig | None = None) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.config = config or SyntheticConfig()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> SyntheticSample:
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return generate_sample(np.random.default_rng([self.seed, i]), self.config)

    def __iter__(self):
        return (self[i] for i in range(self.length))


def generate_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (24, 256, 256),
    radius_range: Range = (9.0, 16.0),
    density: float = 0.3,
    anisotropy: float = 2.0,
    bit_depth: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D stack of textured ellipsoidal nuclei and its exact label volume.

    ``anisotropy`` is the z step in units of the xy pixel size (nuclei look flatter in z).
    Returns ``(image, labels)`` with image uint16 (or uint8) and labels int32, both (Z, H, W).
    """
    depth, height, width = shape
    r_mean = float(np.sqrt(radius_range[0] * radius_range[1]))
    volume_um = depth * anisotropy * height * width
    n = int(density * volume_um / (4.0 / 3.0 * np.pi * r_mean**3 * 0.7))
    n = max(n * 2, 4)
    pos = np.stack(
        [
            rng.uniform(0, depth, n),
            rng.uniform(-r_mean, height + r_mean, n),
            rng.uniform(-r_mean, width + r_mean, n),
        ],
        axis=1,
    )
    radius = np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]), n))
    scaled = pos * np.array([anisotropy, 1.0, 1.0])
    keep = drop_close_pairs(scaled, radius, 0.85)
    keep = keep[: max(1, n // 2)]
    pos, radius = pos[keep], radius[keep]
    m = len(pos)
    elong = rng.uniform(1.0, 1.6, m)
    flat = rng.uniform(0.55, 0.9, m)  # adherent nuclei are flatter than wide
    semi = np.stack([radius * flat / anisotropy, radius / np.sqrt(elong), radius * np.sqrt(elong)], axis=1)
    bump = smooth_noise(rng, shape, 3.0)
    raw, dist = rasterize_ellipsoids(
        shape, pos, semi, rng.uniform(0, np.pi, m), rng.uniform(0, 0.05, m), bump
    )
    labels, _ = clean_labels(raw, 20)
    n_obj = int(labels.max())
    bright = _lut(np.exp(rng.normal(0, 0.35, n_obj)))
    inside = labels > 0
    tex = 1.0 + 0.2 * smooth_noise(rng, shape, 1.2) + 0.1 * smooth_noise(rng, shape, 3.0)
    prof = np.power(np.clip(1.0 - np.where(inside, dist, 1.0) ** 2, 0, 1), 0.25)
    signal = bright[labels] * prof * np.clip(tex, 0.1, None)
    signal = ndimage.gaussian_filter(signal.astype(np.float32), (1.2 * 2.0 / anisotropy + 0.6, 1.0, 1.0))
    signal = signal + 0.15 * ndimage.gaussian_filter(signal, (2.0, 8.0, 8.0)) + 0.05
    photons = 200.0
    full = 255.0 if bit_depth == 8 else 4095.0
    counts = rng.poisson(signal * photons).astype(np.float32)
    adu = (100.0 if bit_depth != 8 else 5.0) + counts * (0.6 * full / photons)
    adu += rng.standard_normal(adu.shape, dtype=np.float32) * 0.004 * full
    image = np.clip(np.round(adu), 0, full).astype(np.uint8 if bit_depth == 8 else np.uint16)
    return image, labels
