"""QOM commands: object-add, object-del, qom-list, qom-get, qom-set (qom/qom-qmp-cmds.c), over the
machine's ``/objects`` container (bitlab.qmp.qom)."""

from __future__ import annotations

from typing import Any

from .commands import TABLE
from .qapi import ANY, Array
from .types import ObjectDel, ObjectOptions, ObjectPropertyInfo, QomGet, QomList, QomSet


@TABLE.command("object-add", ObjectOptions, boxed=True)
def qmp_object_add(vm: Any, args: dict) -> None:
    props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
    vm.objects.add(args["qom-type"], args["id"], props)


@TABLE.command("object-del", ObjectDel)
def qmp_object_del(vm: Any, args: dict) -> None:
    vm.objects.delete(args["id"])


@TABLE.command("qom-list", QomList, returns=Array(ObjectPropertyInfo))
def qmp_qom_list(vm: Any, args: dict) -> list:
    return vm.objects.list(args["path"])


@TABLE.command("qom-get", QomGet, returns=ANY)
def qmp_qom_get(vm: Any, args: dict) -> Any:
    return vm.objects.get(args["path"], args["property"])


@TABLE.command("qom-set", QomSet)
def qmp_qom_set(vm: Any, args: dict) -> None:
    vm.objects.set(args["path"], args["property"], args["value"])
