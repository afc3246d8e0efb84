"""Drawing synthetic H&E tissue: layout fields on a coarse mask grid and tile textures.

The layout is two smooth scalar fields on the mask grid: ``f`` (tissue where ``f > 0``) and
``g`` (tumour where ``f > 0 and g > 0``); ``interp_tile`` samples them bilinearly at the pixel
centres of any pyramid level, so painted tissue matches the ground-truth masks at every level.
Textures (glass, stroma, tumour) are rendered one tile at a time at a given µm/px from a
Beer-Lambert optical-density model of haematoxylin and eosin. ``gpfm.slide.synthetic`` puts
these together into a pyramidal TIFF.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

_MAX_MASK_SIDE = 4096  # auto mask_downsample keeps the mask's longer side <= this
_MASK_MPP = 8.0  # auto mask_downsample aims at masks of about this many µm/px

GLASS, STROMA, TUMOUR, MIXED = 0, 1, 2, 3  # classes of a tile by what it shows

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]
UInt8Array = NDArray[np.uint8]


def _od(rgb: tuple[float, float, float]) -> NDArray[np.float32]:
    """Optical density of an RGB colour (Beer-Lambert, 255 = no absorption)."""
    return (-np.log(np.asarray(rgb, dtype=np.float64) / 255.0)).astype(np.float32)


# Stain optical densities at unit concentration.
_OD_EOSIN = _od((236.0, 140.0, 190.0))
_OD_HAEM = _od((88.0, 58.0, 138.0))
_OD_GLASS = _od((244.0, 243.0, 246.0))

# --------------------------------------------------------------------------------------------
# noise helpers


def _bspline_weights(n_out: int, cell: float) -> tuple[NDArray[np.int64], FloatArray]:
    """Cubic B-spline taps for upsampling: first tap index per output and (n_out, 4) weights.

    Control points are ``cell`` output pixels apart; output ``i`` is the weighted sum of
    control points ``idx[i] .. idx[i] + 3`` of a grid of ``ceil(n_out / cell) + 4`` points.
    """
    t = (np.arange(n_out, dtype=np.float64) + 0.5) / cell + 1.0
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.stack(
        [
            (1 - f) ** 3 / 6,
            (3 * f**3 - 6 * f**2 + 4) / 6,
            (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
            f**3 / 6,
        ],
        axis=1,
    ).astype(np.float32)
    return i - 1, w


def _upsample_axis(g: FloatArray, n_out: int, cell: float, axis: int) -> FloatArray:
    """Cubic B-spline upsampling of ``g`` along ``axis`` (4 gathers; no BLAS, no threads)."""
    idx, w = _bspline_weights(n_out, cell)
    shape = (n_out, 1) if axis == 0 else (1, n_out)
    out: FloatArray = g.take(idx, axis=axis) * w[:, 0].reshape(shape)
    for k in range(1, 4):
        out += g.take(idx + k, axis=axis) * w[:, k].reshape(shape)
    return out


def _anisotropic_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell_y: float, cell_x: float
) -> FloatArray:
    """Smooth noise (unit std) with features about ``cell_y`` x ``cell_x`` pixels across."""
    h, w = shape
    g = rng.standard_normal(
        (math.ceil(h / cell_y) + 4, math.ceil(w / cell_x) + 4), dtype=np.float32
    )
    out = _upsample_axis(_upsample_axis(g, h, cell_y, 0), w, cell_x, 1)
    std = float(out.std())
    if std > 0:
        out /= std
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> FloatArray:
    """Smooth Gaussian-like noise (unit std) with features about ``cell`` pixels across."""
    if cell <= 1.0:
        return rng.standard_normal(shape, dtype=np.float32)
    return _anisotropic_noise(rng, shape, cell, cell)


# --------------------------------------------------------------------------------------------
# layout: tissue and tumour fields on the mask grid


def auto_mask_downsample(width: int, height: int, mpp: float) -> int:
    """Power of two nearest to 8 µm/px, raised until the mask's longer side is <= 4,096."""
    ds = 2 ** max(0, round(math.log2(_MASK_MPP / mpp)))
    while math.ceil(max(width, height) / ds) > _MAX_MASK_SIDE:
        ds *= 2
    return ds


def _shift_reduce(a: FloatArray, op: Any, radius: int) -> FloatArray:
    """Separable running min/max over a (2 * radius + 1)^2 window, edges clamped."""
    out: FloatArray = a
    for axis in (0, 1):
        n = out.shape[axis]
        first = out[:1] if axis == 0 else out[:, :1]
        last = out[-1:] if axis == 0 else out[:, -1:]
        padded = np.concatenate([first] * radius + [out] + [last] * radius, axis=axis)
        acc = padded[:n].copy() if axis == 0 else padded[:, :n].copy()
        for k in range(1, 2 * radius + 1):
            op(acc, padded[k : k + n] if axis == 0 else padded[:, k : k + n], out=acc)
        del padded
        out = acc
    return out


_BSPLINE_NOISE_STD = 0.4795  # std of 2-D cubic B-spline interpolated unit white noise


class _LayoutNoise:
    """Smooth unit-std noise over a large grid, evaluated a block of rows at a time."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], cell: float) -> None:
        self.shape = shape
        self.cell = max(2.0, cell)
        h, w = shape
        self.grid = rng.standard_normal(
            (math.ceil(h / self.cell) + 4, math.ceil(w / self.cell) + 4), dtype=np.float32
        )
        self.row_idx, self.row_w = _bspline_weights(h, self.cell)

    def rows(self, r0: int, r1: int) -> FloatArray:
        idx, w = self.row_idx[r0:r1], self.row_w[r0:r1]
        part = self.grid[idx] * w[:, :1]
        for k in range(1, 4):
            part += self.grid[idx + k] * w[:, k : k + 1]
        out = _upsample_axis(part, self.shape[1], self.cell, 1)
        out *= np.float32(1.0 / _BSPLINE_NOISE_STD)
        return out


_LAYOUT_BLOCK_ROWS = 256


def make_layout(
    rng: np.random.Generator,
    shape: tuple[int, int],
    tissue_fraction: float,
    n_pieces: int,
    tumour_fraction: float,
) -> tuple[FloatArray, FloatArray]:
    """Return the tissue field ``f`` and tumour field ``g`` on the mask grid (float32).

    Tissue is ``f > 0``: a union of ``n_pieces`` ellipses with noisy outlines, thresholded so
    that ``tissue_fraction`` of the grid is tissue.  Tumour is ``f > 0 and g > 0`` with ``g``
    smooth noise thresholded so that ``tumour_fraction`` of the tissue is tumour.  Computed in
    blocks of rows so that peak memory stays a few times the size of ``f``.
    """
    mh, mw = shape
    size = float(max(mh, mw))
    # jittered grid of piece centres
    cols = max(1, round(math.sqrt(n_pieces * mw / mh)))
    rows = max(1, math.ceil(n_pieces / cols))
    while rows * cols < n_pieces:
        cols += 1
    cells = rng.permutation(rows * cols)[:n_pieces]
    cw, ch = mw / cols, mh / rows
    area = tissue_fraction * mh * mw / n_pieces
    pieces = []
    for cell in cells:
        r, c = divmod(int(cell), cols)
        cy = (r + 0.5 + rng.uniform(-0.15, 0.15)) * ch
        cx = (c + 0.5 + rng.uniform(-0.15, 0.15)) * cw
        aspect = rng.uniform(1.0, 2.2)
        b = math.sqrt(area / (math.pi * aspect))
        a = b * aspect
        scale = min(1.0, 0.55 * max(cw, ch) / a)  # keep the piece near its grid cell
        theta = rng.uniform(0, math.pi)
        pieces.append((cy, cx, a * scale, b * scale, math.cos(theta), math.sin(theta)))
    rmean = float(np.mean([math.sqrt(p[2] * p[3]) for p in pieces]))
    f_noise = [
        (0.30, _LayoutNoise(rng, shape, 0.45 * rmean)),
        (0.10, _LayoutNoise(rng, shape, 0.10 * rmean)),
        (0.03, _LayoutNoise(rng, shape, 0.025 * rmean)),
    ]
    g_noise = [
        (1.0, _LayoutNoise(rng, shape, 0.35 * rmean)),
        (0.35, _LayoutNoise(rng, shape, 0.08 * rmean)),
    ]
    margin = max(1.0, 0.08 * size)  # tissue fades out towards the slide border
    xx = np.arange(mw, dtype=np.float32)[None, :] + 0.5
    f = np.empty(shape, dtype=np.float32)
    g = np.empty(shape, dtype=np.float32)
    for r0 in range(0, mh, _LAYOUT_BLOCK_ROWS):
        r1 = min(mh, r0 + _LAYOUT_BLOCK_ROWS)
        yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        raw = f[r0:r1]
        raw[...] = -10.0
        for cy, cx, a, b, ct, st in pieces:
            dx, dy = xx - cx, yy - cy
            u = (dx * ct + dy * st) / a
            v = (-dx * st + dy * ct) / b
            np.maximum(raw, 1.0 - np.sqrt(u * u + v * v), out=raw)
        for amp, noise in f_noise:
            raw += amp * noise.rows(r0, r1)
        edge = np.minimum(np.minimum(yy, mh - yy), np.minimum(xx, mw - xx))
        raw -= 1.5 * np.clip(1.0 - edge / margin, 0.0, 1.0) ** 2
        gb = g[r0:r1]
        gb[...] = 0.0
        for amp, noise in g_noise:
            gb += amp * noise.rows(r0, r1)
    sample = f[:: max(1, mh // 1024), :: max(1, mw // 1024)]
    f -= np.float32(np.quantile(sample, 1.0 - tissue_fraction))
    tissue = f > 0
    if tumour_fraction <= 0 or not tissue.any():
        g[...] = -1.0
    else:
        g -= np.float32(np.quantile(g[tissue], 1.0 - tumour_fraction))
    return f, g


def classify_tiles(
    f: FloatArray, g: FloatArray, ds: int, d: int, tile: int, n_rows: int, n_cols: int
) -> NDArray[np.int8]:
    """Classify level tiles as glass / pure stroma / pure tumour / mixed (conservatively)."""
    mh, mw = f.shape
    ys = np.minimum(np.arange(n_rows, dtype=np.int64) * tile * d // ds, mh - 1)
    xs = np.minimum(np.arange(n_cols, dtype=np.int64) * tile * d // ds, mw - 1)

    def reduce(a: FloatArray, op: Any) -> FloatArray:
        # op over the 5 x 5 neighbourhood, then over each tile's block of grid points
        filtered = _shift_reduce(a, op, 2)
        out: FloatArray = op.reduceat(op.reduceat(filtered, ys, axis=0), xs, axis=1)
        return out

    tf_min, tf_max = reduce(f, np.minimum), reduce(f, np.maximum)
    tg_min, tg_max = reduce(g, np.minimum), reduce(g, np.maximum)
    cls = np.full((n_rows, n_cols), MIXED, dtype=np.int8)
    cls[tf_max <= 0] = GLASS
    cls[(tf_min > 0) & (tg_max <= 0)] = STROMA
    cls[(tf_min > 0) & (tg_min > 0)] = TUMOUR
    return cls


def _interp_axis(n_grid: int, start: int, n: int, d: int, ds: int) -> tuple[Any, ...]:
    """Bilinear sampling indices/weights for ``n`` level pixels starting at ``start``."""
    g = ((start + np.arange(n, dtype=np.float64) + 0.5) * d) / ds - 0.5
    i0f = np.floor(g)
    w = (g - i0f).astype(np.float32)
    i0 = np.clip(i0f.astype(np.int64), 0, n_grid - 1)
    i1 = np.clip(i0f.astype(np.int64) + 1, 0, n_grid - 1)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    return i0 - lo, i1 - lo, w, lo, hi


def interp_tile(fld: FloatArray, ds: int, d: int, y0: int, x0: int, tile: int) -> FloatArray:
    """Bilinear interpolation of a mask-grid field at the pixel centres of one level tile."""
    iy0, iy1, wy, ylo, yhi = _interp_axis(fld.shape[0], y0, tile, d, ds)
    ix0, ix1, wx, xlo, xhi = _interp_axis(fld.shape[1], x0, tile, d, ds)
    sub = fld[ylo:yhi, xlo:xhi]
    r = sub[iy0] * (1 - wy)[:, None] + sub[iy1] * wy[:, None]
    out: FloatArray = r[:, ix0] * (1 - wx)[None, :] + r[:, ix1] * wx[None, :]
    return out


# --------------------------------------------------------------------------------------------
# textures


def _to_rgb(od: FloatArray) -> UInt8Array:
    rgb = np.exp(-od)
    rgb *= 255.0
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def render_glass(rng: np.random.Generator, tile: int) -> UInt8Array:
    """Background glass: ~RGB 240-250 with slight noise."""
    base = np.array([244.0, 243.5, 246.0], dtype=np.float32)
    noise = rng.normal(0.0, 1.0, (tile, tile, 3)).astype(np.float32)
    img = base + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _nuclei_coverage(
    rng: np.random.Generator,
    tile: int,
    s: float,
    density: float,
    radii_um: tuple[float, float, float, float],
    darkness: float,
    theta: float | None,
    modulation: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Rasterise nuclei into one tile; return (coverage in [0, 1], haematoxylin map).

    ``s`` is the pixel size in µm, ``density`` the number of nuclei per µm² (thinned by
    ``modulation / 1.6``), ``radii_um`` = (min, max) semi-major axis in µm and (min, max)
    minor/major axis ratio, ``darkness`` the mean haematoxylin concentration of a nucleus and
    ``theta`` the preferred orientation (``None``: random).  Nuclei whose minor semi-axis is
    below ~0.6 px are not drawn but replaced by the expected coverage of a Poisson count of
    nuclei per pixel, which is what a downsampled image of them looks like.
    """
    a_lo, a_hi, q_lo, q_hi = radii_um
    cov = np.zeros((tile, tile), dtype=np.float32)
    hval = np.zeros((tile, tile), dtype=np.float32)
    b_mean_px = 0.5 * (a_lo + a_hi) * 0.5 * (q_lo + q_hi) / s
    if b_mean_px < 0.6:
        # nuclei are sub-pixel: expected coverage from a Poisson count per pixel
        a_m = 0.5 * (a_lo + a_hi)
        area_um2 = math.pi * a_m * a_m * 0.5 * (q_lo + q_hi)
        lam = density * s * s * modulation
        count = rng.poisson(np.maximum(lam, 0.0)).astype(np.float32)
        np.minimum(count * np.float32(area_um2 / (s * s)), 1.0, out=cov)
        hval[...] = (
            cov * np.float32(darkness) * rng.uniform(0.85, 1.15, (tile, tile)).astype(np.float32)
        )
        return cov, hval
    pad = math.ceil(a_hi / s) + 1
    span = tile + 2 * pad
    n_cand = rng.poisson(density * (span * s) ** 2 * 1.6)
    cy = rng.uniform(-pad, tile + pad, n_cand)
    cx = rng.uniform(-pad, tile + pad, n_cand)
    iy = np.clip(cy.astype(np.int64), 0, tile - 1)
    ix = np.clip(cx.astype(np.int64), 0, tile - 1)
    keep = rng.random(n_cand) * 1.6 < modulation[iy, ix]
    cy, cx = cy[keep], cx[keep]
    n = cy.size
    if n == 0:
        return cov, hval
    a = rng.uniform(a_lo, a_hi, n) / s
    b = a * rng.uniform(q_lo, q_hi, n)
    ang = rng.uniform(0, math.pi, n) if theta is None else theta + rng.normal(0, 0.25, n)
    dark = darkness * rng.uniform(0.8, 1.2, n)
    k = 2 * pad + 1
    off = np.arange(k, dtype=np.float64) - pad
    ciy = np.floor(cy).astype(np.int64)
    cix = np.floor(cx).astype(np.int64)
    # pixel centre minus nucleus centre, shape (n, k, k)
    dy = (ciy - cy + 0.5)[:, None, None] + off[None, :, None]
    dx = (cix - cx + 0.5)[:, None, None] + off[None, None, :]
    ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    u = (dx * ca + dy * sa) / a[:, None, None]
    v = (-dx * sa + dy * ca) / b[:, None, None]
    dist = np.sqrt(u * u + v * v)
    c = np.clip((1.0 - dist) * b[:, None, None] + 0.5, 0.0, 1.0).astype(np.float32)
    py = ciy[:, None, None] + off[None, :, None].astype(np.int64)
    px = cix[:, None, None] + off[None, None, :].astype(np.int64)
    py, px = np.broadcast_to(py, c.shape), np.broadcast_to(px, c.shape)
    ok = (py >= 0) & (py < tile) & (px >= 0) & (px < tile) & (c > 0)
    py, px, c = py[ok], px[ok], c[ok]
    hv = (c * np.broadcast_to(dark[:, None, None], ok.shape)[ok]).astype(np.float32)
    np.maximum.at(cov, (py, px), c)
    np.maximum.at(hval, (py, px), hv)
    return cov, hval


def _bilinear(img: FloatArray, y: FloatArray, x: FloatArray) -> FloatArray:
    """Sample ``img`` bilinearly at float pixel coordinates (clamped to the edges)."""
    h, w = img.shape
    y = np.clip(y, 0, h - 1.001)
    x = np.clip(x, 0, w - 1.001)
    y0 = y.astype(np.int64)
    x0 = x.astype(np.int64)
    wy = (y - y0).astype(np.float32)
    wx = (x - x0).astype(np.float32)
    top = img[y0, x0] * (1 - wx) + img[y0, x0 + 1] * wx
    bottom = img[y0 + 1, x0] * (1 - wx) + img[y0 + 1, x0 + 1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32, copy=False)


def _fibres(rng: np.random.Generator, tile: int, s: float, theta: float) -> FloatArray:
    """Wavy collagen-fibre intensity in [0, 1] (0.5 where fibres are below pixel size)."""
    across, along = 2.2 / s, 30.0 / s  # feature sizes in px across / along the fibres
    vis = float(np.clip((across - 0.7) / 1.3, 0.0, 1.0))
    if vis <= 0:
        return np.full((tile, tile), 0.5, dtype=np.float32)
    n = math.ceil(tile * 1.5) + 8
    base = _anisotropic_noise(rng, (n, n), max(1.0, across), along)
    # rotate and bend: sample the anisotropic noise along warped rotated coordinates
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
    yy -= tile / 2
    xx -= tile / 2
    bend = (6.0 / s) * _smooth_noise(rng, (tile, tile), 60.0 / s)
    ct, st = math.cos(theta), math.sin(theta)
    v = -xx * st + yy * ct + n / 2 + bend
    u = xx * ct + yy * st + n / 2
    fib = _bilinear(base, v, u)
    out = (0.5 + 0.5 * np.tanh(1.3 * fib)).astype(np.float32)
    return (0.5 + vis * (out - 0.5)).astype(np.float32)


def render_tissue(rng: np.random.Generator, tile: int, s: float, tumour: bool) -> UInt8Array:
    """One tile of stroma or tumour texture at ``s`` µm/px."""
    shape = (tile, tile)
    mottle = _smooth_noise(rng, shape, 25.0 / s)
    theta = float(rng.uniform(0, math.pi))
    if tumour:
        nests = _smooth_noise(rng, shape, 40.0 / s)
        modulation = np.clip(1.0 + 0.3 * nests, 0.3, 1.6).astype(np.float32)
        e_conc = (0.62 + 0.07 * mottle).astype(np.float32)
        h_bg = (0.26 + 0.05 * mottle + 0.04 * nests).astype(np.float32)
        cov, hval = _nuclei_coverage(
            rng, tile, s, 0.009, (3.6, 6.2, 0.65, 0.95), 1.25, None, modulation
        )
        e_conc *= 1.0 - 0.5 * cov
    else:
        fib = _fibres(rng, tile, s, theta)
        fibre = 0.8 + 0.75 * (fib - 0.5)
        clefts = np.clip(_smooth_noise(rng, shape, 12.0 / s) - 1.2, 0.0, None) * 0.35
        e_conc = (0.95 * fibre * (1.0 + 0.12 * mottle) - clefts).astype(np.float32)
        np.clip(e_conc, 0.3, None, out=e_conc)
        h_bg = np.full(shape, 0.05, dtype=np.float32)
        modulation = np.ones(shape, dtype=np.float32)
        cov, hval = _nuclei_coverage(
            rng, tile, s, 0.0018, (3.5, 6.5, 0.25, 0.45), 0.95, theta, modulation
        )
        e_conc *= 1.0 - 0.6 * cov
    grain = rng.normal(1.0, 0.05, shape).astype(np.float32)
    chromatin = rng.normal(1.0, 0.12, shape).astype(np.float32)
    h_conc = h_bg * (1.0 - cov) + hval * chromatin
    od = (e_conc * grain)[..., None] * _OD_EOSIN + h_conc[..., None] * _OD_HAEM + _OD_GLASS
    return _to_rgb(od.astype(np.float32))
