"""Block-graph pictures (bitlab/viz/graph.py): layout and drawing of an x-debug-query-block-graph reply."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from bitlab import Machine
from bitlab.viz import graph_layout, plot_block_graph

from .test_block_graph import DRIVE_BACKUP_RUNNING, drive_backup_running

NODES = [{"node-name": "tgt", "drv": "qcow2"}, {"node-name": "tgtF", "drv": "file"}]


def test_layers_follow_the_links_of_qemus_answer():
    """The system emulator's answer during a backup: drive0 and the job on top, the filter below them,
    the two qcow2 nodes, then their files."""
    layout = graph_layout(DRIVE_BACKUP_RUNNING, NODES)
    layers = {b.id: b.layer for b in layout.boxes}
    assert layers == {1: 0, 3: 0, 2: 1, 4: 2, 6: 2, 5: 3, 7: 3}
    assert (layout.layers, layout.width) == (4, 2)
    assert layout.box("tgt").label == "tgt\nqcow2" and layout.box("j1").label == "j1\nblock job"
    assert layout.box("drive0").label == "drive0\nBlockBackend"
    # each file node sits under its qcow2 node; drive0's side stays left, the job's target right
    assert layout.box("tgtF").x == layout.box("tgt").x > [b for b in layout.boxes if b.id == 6][0].x


def test_link_labels_read_the_permissions():
    layout = graph_layout(DRIVE_BACKUP_RUNNING)
    labels = {(link.parent, link.role): link.label for link in layout.links}
    assert labels[(1, "root")] == "root\ntakes read write\nshares all"
    assert labels[(3, "main node")] == "main node\ntakes nothing\nshares all"
    assert labels[(2, "target")] == "target\ntakes write\nshares read write unchanged"
    assert [link.job for link in layout.links].count(True) == 2
    assert [(link.parent, link.role) for link in layout.links][0] == (1, "root")  # QEMU's walk order


def test_filter_nodes_named_by_their_driver():
    vm = Machine()
    drive_backup_running(vm)
    layout = graph_layout(vm.qmp("x-debug-query-block-graph"), vm.qmp("query-named-block-nodes"))
    filters = [b for b in layout.boxes if b.kind == "filter"]
    assert len(filters) == 1 and filters[0].label.endswith("\ncopy-before-write") and filters[0].layer == 1


def test_figure_draws_every_box_and_link():
    fig = plot_block_graph(DRIVE_BACKUP_RUNNING, nodes=NODES, title="during a backup")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    gids = {p.get_gid() for p in ax.patches} | {t.get_gid() for t in ax.texts}
    assert {f"box:{i}" for i in range(1, 8)} <= gids
    assert sum(1 for t in ax.texts if (t.get_gid() or "").startswith("label:")) == 7
    assert sum(1 for c in ax.get_children() if (getattr(c, "get_gid", lambda: None)() or "").startswith("link:")) == 7
    assert ax.get_title() == "during a backup"
    texts = {t.get_text() for t in ax.texts}
    assert "file\ntakes read write resize\nshares read unchanged" in texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["BlockBackend (device, export)", "block job", "node"]  # no filter named without drivers


def test_roles_only():
    ax = plot_block_graph(DRIVE_BACKUP_RUNNING, perms=False).axes[0]
    labels = sorted(t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("label:"))
    assert labels == ["file", "file", "file", "main node", "root", "target", "target"]


def test_an_empty_machine_says_so():
    ax = plot_block_graph(Machine().qmp("x-debug-query-block-graph")).axes[0]
    assert [t.get_text() for t in ax.texts] == ["no BlockBackends, jobs or nodes"]


def test_a_loop_is_refused():
    loop = {"nodes": [{"id": 1, "type": "block-driver", "name": "a"}, {"id": 2, "type": "block-driver", "name": "b"}],
            "edges": [{"parent": 1, "child": 2, "name": "file", "perm": [], "shared-perm": []},
                      {"parent": 2, "child": 1, "name": "file", "perm": [], "shared-perm": []}]}
    with pytest.raises(ValueError, match="loop"):
        graph_layout(loop)
