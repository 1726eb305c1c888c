"""Every planned path of the star lab, traced on the real guests (pytest-testinfra, the topology file as inventory).

The tests are generated from the plan's reachability matrix (plugins/plugin_utils/_lab_paths.py, the same code as
playbooks/verify_paths.yml): one per source - every VM and the lab host's port - which runs the TTL-limited ping
probe once toward every lab address of every other node and compares each hop with the planned path. The plan is
compiled from what `ansible-inventory --list` shows testinfra, so the topology plugin's output is what is checked.
"""
import os
import shlex
import subprocess
import sys

import pytest
import testinfra.utils.ansible_runner

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.dirname(os.path.dirname(os.path.dirname(SCENARIO)))
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))

from ansible_collections.qemulab.network.plugins.filter.lab_paths import lab_paths  # noqa: E402
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_compiler import compile_lab  # noqa: E402
from ansible_collections.qemulab.network.plugins.plugin_utils._lab_paths import path_problems  # noqa: E402

INVENTORY = os.path.join(REPO, "topologies", "star.qemulab.yml")
PROBE = os.path.join(REPO, "playbooks", "files", "path_probe.sh")
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
PLAN = compile_lab(RUNNER.inventory["_meta"]["hostvars"], RUNNER.get_variables("localhost")["groups"],
                   check_files=False)
PATHS = lab_paths(PLAN)


def probe_output(source):
    """The probe's stdout on `source` (a guest over its inventory connection, or the lab host's namespace)."""
    arguments = PATHS["arguments"][source]
    if source == PATHS["lab_host"]:
        result = subprocess.run(["ip", "netns", "exec", PLAN["netns"], "sh", PROBE] + arguments,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout
    with open(PROBE) as handle:
        script = handle.read()
    guest = testinfra.get_host("ansible://%s?ansible_inventory=%s" % (source, INVENTORY))
    result = guest.run("sh -c %s path_probe %s" % (shlex.quote(script), " ".join(map(shlex.quote, arguments))))
    assert result.rc == 0, result.stderr
    return result.stdout


def test_the_plan_gives_every_pair_a_traceable_path():
    assert PLAN["errors"] == []
    assert PATHS["unchecked"] == []
    # four routers, three hosts and the lab host's port, each toward every address of the others
    assert sorted(PATHS["arguments"]) == ["h1", "h2", "h3", "hub", "lab_host", "leaf1", "leaf2", "leaf3"]


@pytest.mark.parametrize("source", sorted(PATHS["arguments"]))
def test_every_path_from_the_source_is_the_planned_one(source):
    assert path_problems(probe_output(source), PATHS, source) == []
