"""QOM's ``/objects`` container: the user-creatable objects of ``object-add`` (qom/object_interfaces.c).

bitlab simulates one object type, ``throttle-group`` (block/throttle-groups.c); the others QEMU 7.2 knows
are refused as such. ``qom-get``, ``qom-set`` and ``qom-list`` reach the container and its objects: a
path ``/objects/ID``, ``/objects``, or the partial path ``ID``. The order ``qom-list`` answers in is
QEMU's: it prepends each property of GLib's hash tables (the object's, then its class's) to a list.
"""

from __future__ import annotations

from typing import Any

from ..block.graph import id_wellformed
from ..block.throttle import LIMIT_KEYS, UINT_MAX, ThrottleConfig, ThrottleGroup
from ..errors import QMPError, generic
from .ghash import GHashSet
from .qapi import Visitor
from .qjson import qdict_order
from .types import ThrottleLimits

X_PROPS = tuple(f"x-{key}" for key in LIMIT_KEYS)
"""throttle-group's legacy properties (``x-bps-total`` ...), in ThrottleGroupProperties' order."""
GROUP_PROPS = ("limits", *X_PROPS)


def _class_order(names: tuple[str, ...]) -> list[str]:
    """The order qom-list gives properties added in this order to one hash table: the reverse of its walk."""
    table = GHashSet()
    for name in names:
        table.insert(name)
    return list(table)[::-1]


_GROUP_LIST = [{"name": "type", "type": "string"}] + [
    {"name": name, "type": "ThrottleLimits" if name == "limits" else "int"}
    for name in _class_order((*X_PROPS, "limits"))]  # (class_init adds the x- properties first)


class ObjectRoot:
    """The ``/objects`` container: throttle groups by id, in creation order."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.groups: dict[str, ThrottleGroup] = {}
        self._children = GHashSet()  # the container's child properties (failed adds leave tombstones)
        self.exists = False  # object_get_objects_root makes the container the first time it is asked for

    def touch(self) -> None:
        """object_get_objects_root: an object looked up by id (object-add's child, object-del, a TLS
        credentials or secret id) makes ``/objects`` exist from then on."""
        self.exists = True

    # -- object-add / object-del -------------------------------------------------------------
    def add(self, qom_type: str, obj_id: str, props: dict) -> None:
        """user_creatable_add_type: the id, the type, the properties in QDict order, the child, complete."""
        if not id_wellformed(obj_id):
            raise generic("Parameter 'id' expects an identifier")
        if qom_type != "throttle-group":
            if obj_id in self.groups and not props:  # (no property set first: the child's name is taken)
                raise generic(f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
            raise generic(f"bitlab does not simulate the '{qom_type}' object type (only throttle-group)")
        cfg = ThrottleConfig()
        ordered = qdict_order({name: props[name] for name in GROUP_PROPS if name in props})
        for name, value in ordered.items():
            cfg = cfg.with_limits(value) if name == "limits" else _set_x_prop(cfg, name, value)
        self.touch()
        if obj_id in self.groups:
            raise generic(f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
        self._children.insert(obj_id)
        try:
            cfg.check()  # throttle_group_obj_complete
        except QMPError:
            self._children.remove(obj_id)
            raise
        self.groups[obj_id] = ThrottleGroup(obj_id, cfg, self.scheduler)

    def delete(self, obj_id: str) -> None:
        """user_creatable_del."""
        self.touch()
        group = self.groups.get(obj_id)
        if group is None:
            raise generic(f"object '{obj_id}' not found")
        if group.members:
            raise generic(f"object '{obj_id}' is in use, can not be deleted")
        del self.groups[obj_id]
        self._children.remove(obj_id)

    def group(self, name: str) -> ThrottleGroup | None:
        return self.groups.get(name)

    # -- qom-get / qom-set / qom-list ----------------------------------------------------------
    def resolve(self, path: str) -> ThrottleGroup | None:
        """object_resolve_path: a group, or None for the container itself (absolute, or the partial path
        ``objects``). DeviceNotFound for a path that leads nowhere; the rest of QEMU's tree (``/``,
        ``/machine``, ``/chardevs``) is refused: bitlab has only ``/objects``."""
        name = path[len("/objects/"):] if path.startswith("/objects/") else path
        if "/" not in name and name in self.groups:
            return self.groups[name]
        if path.rstrip("/") in ("/objects", "objects") and self.exists:
            return None
        top = path.lstrip("/").split("/", 1)[0]
        if path == "/" or top in ("machine", "chardevs") or (path.startswith("/") and top == "objects"
                                                             and self.exists and "/" in path[9:]):
            raise generic(f"bitlab does not simulate the QOM path '{path}' (only /objects and the objects in it)")
        raise QMPError(f"Device '{path}' not found", "DeviceNotFound")

    def list(self, path: str) -> list[dict]:
        if path == "":  # (qmp_qom_list tells an ambiguous partial path: the empty one matches every object)
            raise generic("Path '' is ambiguous")
        group = self.resolve(path)
        if group is not None:
            return [dict(entry) for entry in _GROUP_LIST]
        return [{"name": "type", "type": "string"}] + [
            {"name": name, "type": "child<throttle-group>"} for name in list(self._children)[::-1]]

    def get(self, path: str, prop: str) -> Any:
        group = self.resolve(path)
        if group is None:
            if prop == "type":
                return "container"
            if prop in self.groups:
                return f"/objects/{prop}"
            raise generic(f"Property 'container.{prop}' not found")
        if prop == "type":
            return "throttle-group"
        if prop == "limits":
            return group.cfg.limits()
        if prop in X_PROPS:
            return group.cfg.limits()[prop[2:]]
        raise generic(f"Property 'throttle-group.{prop}' not found")

    def set(self, path: str, prop: str, value: Any) -> None:
        group = self.resolve(path)
        kind = "container" if group is None else "throttle-group"
        known = prop == "type" or (prop in self.groups if group is None else prop in GROUP_PROPS)
        if not known:
            raise generic(f"Property '{kind}.{prop}' not found")
        if group is None or prop == "type":
            raise generic(f"Property '{kind}.{prop}' is not writable")
        if prop != "limits":
            raise generic("Property cannot be set after initialization")
        limits = Visitor().visit(ThrottleLimits, value, "limits", "limits")
        group.configure(group.cfg.with_limits(limits))


def _set_x_prop(cfg: ThrottleConfig, name: str, value: int) -> ThrottleConfig:
    """throttle_group_set: one legacy property, before the object is complete (checked at completion)."""
    if value < 0:
        raise generic("Property values cannot be negative")
    key = name[2:]
    if key.endswith("-max-length") and value > UINT_MAX:
        raise generic(f"{name} value must be in therange [0, {UINT_MAX}]")  # (QEMU's text, its space missing)
    new = cfg.copy()
    if key == "iops-size":
        new.op_size = value
        return new
    bucket, _, attr = key.partition("-max")
    bkt = new.buckets[bucket]
    if attr == "-length":
        bkt.burst_length = value
    elif key.endswith("-max"):
        bkt.max = value
    else:
        bkt.avg = value
    return new


__all__ = ["ObjectRoot"]
