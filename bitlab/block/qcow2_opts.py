"""qcow2's runtime options at open (block/qcow2.c qcow2_update_options_prepare, read_cache_sizes).

QEMU's checks come first, with its texts and in its order. Options QEMU accepts but bitlab does not
simulate — metadata caches that cannot hold every table (evictions change when metadata reaches the
file), lazy refcounts, discard pass-through other than the default — are refused with a message that
says so, rather than accepted and ignored. ``overlap-check`` and ``cache-clean-interval`` change
nothing bitlab simulates (no image here is ever corrupted; dropping clean cache entries writes nothing).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..qmp_order import wire_member_order

SIZE_OPTIONS = ("cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size")
MIN_CLUSTER = 512
MIN_L2_CACHE_ENTRIES, MIN_REFCOUNT_CACHE_ENTRIES = 2, 4
DEFAULT_L2_CACHE_MAX = 32 << 20  # DEFAULT_L2_CACHE_MAX_SIZE on Linux
INT_MAX, UINT_MAX = (1 << 31) - 1, (1 << 32) - 1
NOT_SIMULATED = "bitlab does not simulate "


def _cache_sizes(opts: dict, cluster: int, disk: int) -> tuple[int, int, int]:
    """read_cache_sizes: (L2 cache bytes, L2 cache entry size, refcount cache bytes); ValueError with
    QEMU's text."""
    max_l2 = -(-(-(-disk // cluster) * 8) // cluster) * cluster  # every L2 table, whole clusters
    min_refcount = MIN_REFCOUNT_CACHE_ENTRIES * cluster
    combined = opts.get("cache-size")
    l2_setting = opts.get("l2-cache-size", DEFAULT_L2_CACHE_MAX)
    refcount = opts.get("refcount-cache-size", 0)
    entry = opts.get("l2-cache-entry-size", cluster)
    l2 = min(max_l2, l2_setting)
    if combined is not None:
        if "l2-cache-size" in opts and "refcount-cache-size" in opts:
            raise ValueError("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
        if "l2-cache-size" in opts and l2_setting > combined:
            raise ValueError("l2-cache-size may not exceed cache-size")
        if refcount > combined:
            raise ValueError("refcount-cache-size may not exceed cache-size")
        if "l2-cache-size" in opts:
            refcount = combined - l2
        elif "refcount-cache-size" in opts:
            l2 = combined - refcount
        elif combined >= max_l2 + min_refcount:
            l2, refcount = max_l2, combined - max_l2
        else:
            refcount = min(combined, min_refcount)
            l2 = combined - refcount
    if l2 < max_l2 and "l2-cache-entry-size" not in opts:  # smaller entries where the cache cannot hold all
        entry = min(cluster, 4096)
    if entry < MIN_CLUSTER or entry > cluster or entry & (entry - 1):
        raise ValueError(f"L2 cache entry size must be a power of two between {MIN_CLUSTER} and the cluster "
                         f"size ({cluster})")
    return l2, entry, refcount


@lru_cache(maxsize=256)
def _default_sizes(cluster: int, disk: int) -> tuple[int, int, int]:
    """:func:`_cache_sizes` without options (a pure function of the image's geometry)."""
    return _cache_sizes({}, cluster, disk)


def _sizes(opts: dict, cluster: int, disk: int) -> tuple[int, int, int]:
    """:func:`_cache_sizes`, the defaults remembered where ``opts`` set none of the sizes."""
    if any(key in opts for key in SIZE_OPTIONS):
        return _cache_sizes(opts, cluster, disk)
    return _default_sizes(cluster, disk)


def l2_slice_bytes(cluster: int, disk: int) -> int:
    """The guest bytes one L2 slice maps with the default cache options (read_cache_sizes: a slice is a cache
    entry, the whole table unless the default cache cannot hold every table and the clusters exceed 4 KiB).
    qcow2_get_host_offset answers one slice at most: block status, reads and writes stop at its end."""
    _, entry, _ = _default_sizes(cluster, disk)
    return entry // 8 * cluster


def open_error(opts: dict, image: Any) -> str | None:
    """QEMU's error for opening a qcow2 node with runtime options ``opts`` over ``image``, if any."""
    for key in wire_member_order(tuple(k for k in opts if k in SIZE_OPTIONS)):  # qemu_opts_absorb_qdict
        if opts[key] < 0:
            return f"Parameter '{key}' expects a non-negative number below 2^64"
    cluster = image.cluster_size
    try:
        l2, entry, refcount = _sizes(opts, cluster, image.size)
    except ValueError as err:
        return str(err)
    if max(l2 // entry, MIN_L2_CACHE_ENTRIES) > INT_MAX:
        return "L2 cache size too big"
    if max(refcount // cluster, MIN_REFCOUNT_CACHE_ENTRIES) > INT_MAX:
        return "Refcount cache size too big"
    if opts.get("cache-clean-interval", 0) % (1 << 64) > UINT_MAX:
        return "Cache clean interval too big"
    v2 = image.compat == "0.10"
    if opts.get("lazy-refcounts") and v2:
        return "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
    if "encrypt" in opts:  # bitlab's images are never encrypted
        return f"No encryption in image header, but options specified format '{opts['encrypt']['format']}'"
    return None


def not_simulated(opts: dict, image: Any) -> str | None:
    """bitlab's refusal of options QEMU accepts (after :func:`open_error` found none) but bitlab does
    not simulate, naming the option."""
    cluster = image.cluster_size
    l2, entry, _ = _sizes(opts, cluster, image.size)
    default_l2, default_entry, _ = _default_sizes(cluster, image.size)
    for key in ("cache-size", "l2-cache-size", "l2-cache-entry-size"):
        if key in opts and (l2 < default_l2 or entry != default_entry):
            return (NOT_SIMULATED + f"a qcow2 L2 cache smaller than QEMU's default or with other entry sizes "
                    f"(option '{key}')")
    if opts.get("lazy-refcounts"):
        return NOT_SIMULATED + "lazy refcounts (option 'lazy-refcounts')"
    defaults = {"pass-discard-snapshot": True, "pass-discard-other": False}  # (pass-discard-request is simulated)
    for key, default in defaults.items():
        if key in opts and opts[key] != default:
            return NOT_SIMULATED + f"qcow2 discard pass-through other than QEMU's default (option '{key}')"
    return None
