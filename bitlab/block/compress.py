"""How many bytes qcow2 writes for a compressed cluster (QEMU 7.2 block/qcow2-threads.c ``qcow2_zlib_compress``).

QEMU deflates one cluster at a time, raw deflate (``deflateInit2(Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9)``),
into a buffer of ``cluster_size - 1`` bytes: what does not fit there is written as a normal cluster
(``qcow2_co_pwritev_compressed_task``). The image's last cluster, when the disk ends inside it, is padded with
zeroes to a whole cluster first. zlib here is the one QEMU uses, so the sizes are QEMU's (measured: 64 KiB of
one byte deflate to 79 bytes, of zeroes to 78).

A cluster's content is a few runs of pattern bytes (:mod:`bitlab.block.extents`); the size is remembered by
the cluster's *shape* (its runs relative to its start), so a disk of a million clusters costs a handful of
deflates. Opaque tokens (values past 255) have no bytes bitlab knows: :func:`cluster_sizes` refuses them.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

NOT_COMPRESSIBLE = -1  # the cluster does not deflate into cluster_size - 1 bytes (written as a normal cluster)


@lru_cache(maxsize=4096)
def deflated_size(cluster_size: int, shape: tuple[tuple[int, int], ...]) -> int:
    """The bytes qcow2_zlib_compress makes of one cluster whose bytes are runs ``(length, byte)`` in order
    (whole cluster), or :data:`NOT_COMPRESSIBLE`."""
    lengths = np.array([n for n, _ in shape], dtype=np.int64)
    values = np.array([v for _, v in shape], dtype=np.uint8)
    raw = np.repeat(values, lengths).tobytes()
    stream = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
    out = len(stream.compress(raw)) + len(stream.flush())
    return out if out <= cluster_size - 1 else NOT_COMPRESSIBLE


def cluster_sizes(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, clusters: np.ndarray,
                  cluster_size: int) -> np.ndarray:
    """The compressed size of each of ``clusters`` (ascending) holding the runs ``[starts, ends)`` of byte
    ``values`` (sorted, covering the clusters but for the zero padding of the disk's last one; zeroes as 0).
    Raises ValueError for an opaque token. No loop per cluster: clusters of one byte are looked up by that
    byte, only clusters a run boundary falls inside are looked at one by one (at most one a run)."""
    cs = cluster_size
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    values = np.maximum(np.asarray(values, dtype=np.int64), 0)  # (zero clusters, holes: zeroes)
    if values.size and int(values.max()) > 255:
        raise ValueError("opaque token")
    end = (int(clusters[-1]) + 1) * cs
    if int(ends[-1]) < end:  # the disk's last cluster, padded with zeroes
        starts, ends, values = np.append(starts, ends[-1]), np.append(ends, end), np.append(values, 0)
    first = clusters * cs
    at = np.searchsorted(starts, first, "right") - 1
    sizes = np.empty(clusters.size, dtype=np.int64)
    one = values[at]
    for v in np.unique(one).tolist():  # (at most 256 bytes)
        sizes[one == v] = deflated_size(cs, ((cs, v),))
    inner = np.unique(starts[1:][starts[1:] % cs != 0] // cs)
    inner = inner[np.isin(inner, clusters)]
    for c in inner.tolist():  # clusters a run boundary falls inside
        lo, hi = c * cs, (c + 1) * cs
        i, j = int(np.searchsorted(starts, lo, "right")) - 1, int(np.searchsorted(starts, hi, "left"))
        s, e = np.maximum(starts[i:j], lo), np.minimum(ends[i:j], hi)
        shape = tuple(zip((e - s).tolist(), values[i:j].tolist()))
        sizes[int(np.searchsorted(clusters, c))] = deflated_size(cs, _merged(shape))
    return sizes


def _merged(shape: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Runs of one cluster with neighbours of the same byte joined (one shape for the same bytes)."""
    out: list[tuple[int, int]] = []
    for n, v in shape:
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0] + n, v)
        elif n:
            out.append((n, v))
    return tuple(out)
