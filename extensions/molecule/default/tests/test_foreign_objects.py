"""The objects prepare planted in the lab's namespace (the lab's names plus "x", unmarked or another lab's) are the
same objects after the bring-up and its idempotence run: the lab neither adopted, changed nor removed them.

The record is prepare's (foreign_objects.py wrote it as each object appeared); the check reads the kernel again.
"""
import json
import os
import subprocess
import sys

import testinfra.utils.ansible_runner

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(SCENARIO, "foreign_objects.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(SCENARIO)))
LOCAL = testinfra.utils.ansible_runner.AnsibleRunner(os.path.join(REPO, "inventories", "seed")).get_variables(
    "localhost")


def state_file():
    directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    assert directory, "MOLECULE_EPHEMERAL_DIRECTORY is not set: run these tests through molecule verify"
    return os.path.join(directory, "foreign_objects.json")


def test_the_planted_objects_survived_the_bring_up_as_themselves():
    with open(state_file()) as handle:
        recorded = json.load(handle)["objects"]
    links = sorted(record["name"] for record in recorded if record["type"] == "link")
    # what prepare plants: a bridge and a veth pair without a qemulab mark, a bridge of another lab
    assert len(links) == 4, recorded
    assert all(record["netns"] == LOCAL["lab_netns"] for record in recorded), recorded
    assert any(record["alias"].startswith("qemulab:") for record in recorded), recorded
    proc = subprocess.run([sys.executable, HELPER, state_file(), "check"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["changed"] == [] and report["gone"] == [], report
    assert sorted(report["same"]) == links, report
