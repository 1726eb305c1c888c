"""What a rootless image build checks before it starts, and the id map its user namespace gets (docs/rootless.md)."""
import os
import pwd

import pytest

from ansible_collections.qemulab.network.plugins.module_utils import _guest_image_userns as gu

pytestmark = pytest.mark.unit

ME = pwd.getpwuid(os.geteuid()).pw_name


def _files(tmp_path, subuid="", subgid="", max_userns="15000", clone=None):
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    (tmp_path / "sys" / "user").mkdir(parents=True)
    (tmp_path / "sys" / "user" / "max_user_namespaces").write_text(max_userns + "\n")
    if clone is not None:
        (tmp_path / "sys" / "kernel").mkdir()
        (tmp_path / "sys" / "kernel" / "unprivileged_userns_clone").write_text(clone + "\n")
    return dict(subuid=str(tmp_path / "subuid"), subgid=str(tmp_path / "subgid"), proc_sys=str(tmp_path / "sys"))


def all_tools(tool):
    return "/usr/bin/" + tool


def test_subid_range_is_the_first_entry_of_the_user_by_name_or_uid(tmp_path):
    (tmp_path / "subuid").write_text("other:100000:65536\n# note\nbroken line\n%s:200000:65536\n%s:300000:10\n"
                                     % (ME, ME))
    assert gu.subid_range(ME, os.geteuid(), str(tmp_path / "subuid")) == (200000, 65536)
    (tmp_path / "subuid").write_text("%d:400000:65536\n" % os.geteuid())
    assert gu.subid_range(ME, os.geteuid(), str(tmp_path / "subuid")) == (400000, 65536)
    assert gu.subid_range("nobody-here", 4242, str(tmp_path / "subuid")) is None
    assert gu.subid_range(ME, 0, str(tmp_path / "missing")) is None


def test_nothing_missing_when_tools_ranges_and_namespaces_are_there(tmp_path):
    line = "%s:100000:65536\n" % ME
    assert gu.problems(which=all_tools, **_files(tmp_path, line, line, clone="1")) == []


def test_no_subordinate_range_names_the_admin_step_for_this_user(tmp_path):
    (tmp_path / "short").mkdir()
    (tmp_path / "none").mkdir()
    found = gu.problems(which=all_tools, **_files(tmp_path / "short", subuid="%s:100000:65536\n" % ME,
                                                  subgid="%s:100000:1000\n" % ME))
    assert len(found) == 1
    assert "has only 1000 subordinate gids" in found[0]
    assert "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s" % ME in found[0]
    assert "The one admin step" in found[0]
    found = gu.problems(which=all_tools, **_files(tmp_path / "none", subuid="", subgid=""))
    assert [f.split(" subordinate ")[1].split(" ")[0] for f in found] == ["uids", "gids"]
    assert all("has none" in f for f in found)


def test_missing_tools_name_the_packages_to_install(tmp_path):
    line = "%s:100000:65536\n" % ME
    found = gu.problems(which=lambda tool: None if tool in ("mmdebstrap", "newgidmap") else all_tools(tool),
                        **_files(tmp_path, line, line))
    assert found == ["mmdebstrap, newgidmap not found: the administrator installs it once (`apt-get install "
                     "mmdebstrap uidmap`, docs/rootless.md, 'The one admin step')"]


def test_user_namespaces_switched_off_are_named_with_the_sysctl(tmp_path):
    line = "%s:100000:65536\n" % ME
    found = gu.problems(which=all_tools, **_files(tmp_path, line, line, max_userns="0", clone="0"))
    assert len(found) == 2
    assert "user.max_user_namespaces" in found[0] and "kernel.unprivileged_userns_clone=1" in found[1]


def test_the_map_is_mmdebstraps_plus_the_users_own_ids_after_the_range():
    uid_map, gid_map = gu.id_maps(1000, 1001, (100000, 65536), (200000, 70000))
    # guest root is the first subordinate id, as mmdebstrap --mode=unshare wrote the tree
    assert uid_map == ["0", "100000", "65536", "65536", "1000", "1"]
    assert gid_map == ["0", "200000", "70000", "70000", "1001", "1"]
    assert gu.user_ids_inside((100000, 65536), (200000, 70000)) == (65536, 70000)
