"""Geometry for the synthetic microscopy generator: object shapes, placement and exact rasterisation.

Objects are star-convex shapes (an ellipse whose radius is modulated by a few random harmonics),
optionally made of two lobes (a dividing nucleus). Every object gets a *normalised distance*
``d`` (0 at the centre, 1 on its outline). A pixel belongs to the object with the smallest ``d``
among those with ``d < 1``, so touching objects share a clean boundary and never share pixels.
All work is vectorised over groups of objects with the same bounding-box size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as cc_label

N_HARMONICS = 6
_LADDER = np.unique(np.round(3.0 * 1.22 ** np.arange(40)).astype(int))


@dataclass
class Shapes:
    """Parameters of N star-convex objects (all arrays have length N; ``amp``/``phase`` are (N, K))."""

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray  # semi-major axis (px)
    b: np.ndarray  # semi-minor axis (px)
    phi: np.ndarray  # orientation (rad)
    amp: np.ndarray  # harmonic amplitudes, relative radius modulation
    phase: np.ndarray
    lobe: np.ndarray  # 0 = single body; s in (0, 0.6) = two lobes centred at +-s*a (dividing)

    def __len__(self) -> int:
        return int(self.cy.shape[0])

    @property
    def extent(self) -> np.ndarray:
        """Upper bound of the distance from the centre to the outline."""
        return self.a * (1.0 + np.abs(self.amp).sum(axis=1))

    def subset(self, idx: np.ndarray) -> Shapes:
        """The objects at ``idx``."""
        return Shapes(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def random_shapes(
    rng: np.random.Generator,
    cy: np.ndarray,
    cx: np.ndarray,
    radius: np.ndarray,
    elongation: np.ndarray,
    irregularity: np.ndarray,
    lobe: np.ndarray,
    roughness: float = 1.6,
) -> Shapes:
    """Shapes of equivalent radius ``radius`` with axis ratio ``elongation`` and harmonic noise.

    ``irregularity`` is the typical relative radius modulation (0 = perfect ellipse);
    ``roughness`` is how slowly harmonic amplitudes decay with order (higher = smoother outline).
    """
    n = len(cy)
    e = np.maximum(elongation, 1.0)
    a = radius * np.sqrt(e)
    b = radius / np.sqrt(e)
    # two-lobe bodies need a longer major axis so that each lobe stays round-ish
    a = np.where(lobe > 0, a * (1.0 + lobe), a)
    k = np.arange(2, 2 + N_HARMONICS, dtype=np.float64)
    amp = rng.normal(size=(n, N_HARMONICS)) * irregularity[:, None] / k[None, :] ** roughness * 2.0
    total = np.abs(amp).sum(axis=1, keepdims=True)
    amp *= np.minimum(1.0, 0.6 / np.maximum(total, 1e-9))
    phase = rng.uniform(0, 2 * np.pi, size=(n, N_HARMONICS))
    phi = rng.uniform(0, np.pi, size=n)
    return Shapes(
        cy.astype(np.float64), cx.astype(np.float64), a, b, phi, amp, phase, lobe.astype(np.float64)
    )


def _group_distance(sh: Shapes, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised distance of every pixel in a (2h+1)^2 window around each object."""
    off = np.arange(-h, h + 1, dtype=np.float32)
    iy0 = np.round(sh.cy).astype(np.int64)
    ix0 = np.round(sh.cx).astype(np.int64)
    ry = (iy0 - sh.cy).astype(np.float32)[:, None, None] + off[None, :, None]
    rx = (ix0 - sh.cx).astype(np.float32)[:, None, None] + off[None, None, :]
    cos = np.cos(sh.phi).astype(np.float32)[:, None, None]
    sin = np.sin(sh.phi).astype(np.float32)[:, None, None]
    u = rx * cos + ry * sin
    v = -rx * sin + ry * cos
    s = sh.lobe.astype(np.float32)[:, None, None]
    a = sh.a.astype(np.float32)[:, None, None]
    b = sh.b.astype(np.float32)[:, None, None]
    a_l = a * (1.0 - s)
    shift = s * a
    d = None
    for sign in (0.0,) if not np.any(sh.lobe > 0) else (1.0, -1.0):
        un = (u - sign * shift) / a_l
        vn = v / b
        rho = np.sqrt(un * un + vn * vn)
        theta = np.arctan2(vn, un)
        fac = np.ones_like(rho)
        for j in range(N_HARMONICS):
            amp = sh.amp[:, j].astype(np.float32)[:, None, None]
            ph = sh.phase[:, j].astype(np.float32)[:, None, None]
            fac += amp * np.cos((j + 2) * theta + ph)
        dl = rho / fac
        d = dl if d is None else np.minimum(d, dl)
    yy = iy0[:, None, None] + off.astype(np.int64)[None, :, None]
    xx = ix0[:, None, None] + off.astype(np.int64)[None, None, :]
    return d, np.broadcast_to(yy, d.shape), np.broadcast_to(xx, d.shape)


def rasterize(shapes: Shapes, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact label image (object index + 1, 0 = background) and the normalised-distance map.

    Pixels claimed by several objects go to the one whose outline is relatively farthest away,
    which yields straight-ish contact lines between touching objects.
    """
    best = np.full(height * width, np.inf, dtype=np.float32)
    pix_parts, d_parts, id_parts = [], [], []
    if len(shapes):
        h_need = np.ceil(shapes.extent).astype(int) + 1
        h_bin = _LADDER[np.minimum(np.searchsorted(_LADDER, h_need), len(_LADDER) - 1)]
        for h in np.unique(h_bin):
            idx = np.nonzero(h_bin == h)[0]
            # bound the temporary memory of one group to ~4M pixels
            step = max(1, int(4_000_000 // (2 * h + 1) ** 2))
            for start in range(0, len(idx), step):
                sub = idx[start : start + step]
                d, yy, xx = _group_distance(shapes.subset(sub), int(h))
                ok = (d < 1.0) & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                obj = np.broadcast_to(sub[:, None, None], d.shape)
                pix_parts.append(yy[ok] * width + xx[ok])
                d_parts.append(d[ok])
                id_parts.append(obj[ok])
    labels = np.zeros(height * width, dtype=np.int32)
    if pix_parts:
        pix = np.concatenate(pix_parts)
        dv = np.concatenate(d_parts)
        ids = np.concatenate(id_parts)
        np.minimum.at(best, pix, dv)
        win = dv <= best[pix]
        labels[pix[win]] = ids[win].astype(np.int32) + 1
    best[labels == 0] = 1.0
    return labels.reshape(height, width), best.reshape(height, width)


def clean_labels(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest connected piece of every object, drop tiny ones, renumber 1..N.

    Returns the new label image and ``source`` with ``source[new_id] = old_id`` (``source[0] = 0``).
    """
    comps = cc_label(labels, background=0, connectivity=1)
    ncomp = int(comps.max())
    if ncomp == 0:
        return labels.astype(np.int32), np.zeros(1, dtype=np.int64)
    sizes = np.bincount(comps.ravel(), minlength=ncomp + 1)
    comp_label = np.zeros(ncomp + 1, dtype=np.int64)
    comp_label[comps.ravel()] = labels.ravel()
    order = np.argsort(-sizes[1:], kind="stable") + 1
    _, first = np.unique(comp_label[order], return_index=True)
    keep = np.zeros(ncomp + 1, dtype=bool)
    keep[order[first]] = True
    keep &= sizes >= min_area
    keep[0] = False
    kept = np.nonzero(keep)[0]
    kept = kept[np.argsort(comp_label[kept], kind="stable")]
    lut = np.zeros(ncomp + 1, dtype=np.int32)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    source = np.concatenate([[0], comp_label[kept]])
    return lut[comps], source


def lattice_centers(
    rng: np.random.Generator,
    height: int,
    width: int,
    spacing: float,
    jitter: float,
    keep: np.ndarray,
    margin: float,
) -> np.ndarray:
    """Jittered, randomly rotated hexagonal lattice thinned by a keep-probability map (H, W).

    Returns (N, 2) float centres (y, x) that may lie up to ``margin`` px outside the image.
    """
    half = 0.5 * np.hypot(height + 2 * margin, width + 2 * margin) + spacing
    dy = spacing * np.sqrt(3.0) / 2.0
    rows = np.arange(-half, half + dy, dy)
    cols = np.arange(-half, half + spacing, spacing)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    gx = gx + (np.arange(len(rows))[:, None] % 2) * spacing / 2.0
    ang = rng.uniform(0, np.pi)
    py = gy.ravel() * np.cos(ang) - gx.ravel() * np.sin(ang) + height / 2.0
    px = gy.ravel() * np.sin(ang) + gx.ravel() * np.cos(ang) + width / 2.0
    py = py + rng.normal(0, jitter * spacing, py.shape)
    px = px + rng.normal(0, jitter * spacing, px.shape)
    inside = (py > -margin) & (py < height + margin) & (px > -margin) & (px < width + margin)
    py, px = py[inside], px[inside]
    iy = np.clip(np.round(py), 0, height - 1).astype(int)
    ix = np.clip(np.round(px), 0, width - 1).astype(int)
    sel = rng.random(py.shape) < keep[iy, ix]
    return np.stack([py[sel], px[sel]], axis=1)


def drop_close_pairs(centers: np.ndarray, radius: np.ndarray, min_frac: float) -> np.ndarray:
    """Indices of objects to keep so that no two centres are closer than ``min_frac * (r_i + r_j)``."""
    n = len(centers)
    if n < 2:
        return np.arange(n)
    tree = cKDTree(centers)
    pairs = tree.query_pairs(r=float(min_frac * 2 * radius.max()), output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n)
    dist = np.linalg.norm(centers[pairs[:, 0]] - centers[pairs[:, 1]], axis=1)
    close = pairs[dist < min_frac * (radius[pairs[:, 0]] + radius[pairs[:, 1]])]
    drop = np.zeros(n, dtype=bool)
    drop[close.max(axis=1)] = True
    return np.nonzero(~drop)[0]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of linear interpolation between pixel centres (edge values held)."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    frac = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
    mat = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(mat, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(mat, (np.arange(n_out), hi), frac)
    return mat


def resize2d(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D array with two small matrix products (fast for smooth fields)."""
    return (
        _interp_matrix(shape[0], img.shape[0])
        @ img.astype(np.float32)
        @ _interp_matrix(shape[1], img.shape[1]).T
    )


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas are applied on a block-averaged copy and upsampled (2-D)."""
    if sigma <= 0.05:
        return img
    if sigma <= 4.0 or img.ndim != 2:
        return ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=3.0)
    f = int(sigma // 2)
    h, w = img.shape
    hc, wc = -(-h // f), -(-w // f)
    pad = np.pad(img, ((0, hc * f - h), (0, wc * f - w)), mode="edge")
    small = pad.reshape(hc, f, wc, f).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, np.sqrt(max(sigma**2 - f**2 / 4.0, 0.25)) / f, mode="nearest")
    full = resize2d(small, (hc * f, wc * f))
    return full[:h, :w]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation (float32).

    Large sigmas are computed on a coarse grid and upsampled, so the cost stays small.
    """
    sigma = max(float(sigma), 0.3)
    factor = int(max(1, sigma // 3))
    coarse = tuple(max(2, -(-s // factor)) for s in shape)
    field = rng.standard_normal(coarse).astype(np.float32)
    field = ndimage.gaussian_filter(field, sigma / factor, mode="wrap", truncate=3.0)
    if factor > 1:
        if len(shape) == 2:
            field = resize2d(field, (coarse[0] * factor, coarse[1] * factor))
        else:
            field = ndimage.zoom(field, factor, order=1)
        field = field[tuple(slice(0, s) for s in shape)]
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def spot_field(rng: np.random.Generator, shape: tuple[int, ...], count: int, sigma: float) -> np.ndarray:
    """Sum of ``count`` Gaussian spots of width ``sigma`` at random places, peak ~1 (float32)."""
    field = np.zeros(shape, dtype=np.float32)
    if count <= 0:
        return field
    flat = rng.integers(0, field.size, size=count)
    np.add.at(field.reshape(-1), flat, rng.uniform(0.5, 1.5, size=count).astype(np.float32))
    sigma = max(float(sigma), 0.4)
    field = ndimage.gaussian_filter(field, sigma)
    return field * np.float32(2 * np.pi * sigma**2) ** (len(shape) / 2.0)


def contact_map(labels: np.ndarray) -> np.ndarray:
    """Boolean map of object pixels that touch a *different* object (4-neighbourhood)."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = np.swapaxes(labels, 0, axis)
        o = np.swapaxes(out, 0, axis)
        diff = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        o[1:] |= diff
        o[:-1] |= diff
    return out


def edge_map(labels: np.ndarray) -> np.ndarray:
    """Boolean map of object pixels on the object's outline (next to background or another object)."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = np.swapaxes(labels, 0, axis)
        o = np.swapaxes(out, 0, axis)
        diff = a[1:] != a[:-1]
        o[1:] |= diff & (a[1:] > 0)
        o[:-1] |= diff & (a[:-1] > 0)
    return out


def rasterize_ellipsoids(
    shape: tuple[int, int, int],
    centers: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
    bumpiness: np.ndarray,
    bump_field: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Label volume of ellipsoids (z semi-axis along Z, in-plane rotation ``angles``).

    ``bump_field`` (same shape as the volume, ~unit std) perturbs each ellipsoid's surface by
    ``bumpiness`` (relative), so outlines are slightly irregular yet consistent across slices.
    Returns labels (object index + 1) and the normalised distance map.
    """
    depth, height, width = shape
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(len(centers)):
        cz, cy, cx = centers[i]
        rz, ry, rx = semi_axes[i]
        ext = max(ry, rx) * (1.0 + 2 * bumpiness[i]) + 1
        ez = rz * (1.0 + 2 * bumpiness[i]) + 1
        z0, z1 = max(0, int(cz - ez)), min(depth, int(cz + ez) + 2)
        y0, y1 = max(0, int(cy - ext)), min(height, int(cy + ext) + 2)
        x0, x1 = max(0, int(cx - ext)), min(width, int(cx + ext) + 2)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        zz = (np.arange(z0, z1, dtype=np.float32) - cz)[:, None, None]
        yy = (np.arange(y0, y1, dtype=np.float32) - cy)[None, :, None]
        xx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, None, :]
        c, s = np.cos(angles[i]), np.sin(angles[i])
        u = xx * c + yy * s
        v = -xx * s + yy * c
        d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2 + (zz / rz) ** 2)
        d = d / (1.0 + bumpiness[i] * np.clip(bump_field[z0:z1, y0:y1, x0:x1], -2.5, 2.5))
        view_best = best[z0:z1, y0:y1, x0:x1]
        win = (d < 1.0) & (d < view_best)
        view_best[win] = d[win]
        labels[z0:z1, y0:y1, x0:x1][win] = i + 1
    best[labels == 0] = 1.0
    return labels, best
