# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured differences between actual and desired state, for `changed` and `--diff`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class DifferenceTracker:
    """Collects (field, before, after) for one object; `changed` and the diff come from the same data."""

    def __init__(self):
        self._fields = []

    def add(self, field, before, after):
        self._fields.append((field, before, after))

    def compare(self, field, before, after):
        """Record `field` only when the values differ; returns whether they did."""
        if before != after:
            self.add(field, before, after)
            return True
        return False

    @property
    def changed(self):
        return bool(self._fields)

    @property
    def fields(self):
        return [field for field, _before, _after in self._fields]

    def has(self, field):
        return field in self.fields

    def get(self, field):
        for name, before, after in self._fields:
            if name == field:
                return before, after
        raise KeyError(field)

    def diff(self, before_extra=None, after_extra=None):
        """{'before': {...}, 'after': {...}} holding only the differing fields (plus the extras given)."""
        before = dict(before_extra or {})
        after = dict(after_extra or {})
        for field, old, new in self._fields:
            before[field] = old
            after[field] = new
        return {"before": before, "after": after}


def finish_items(module, results, **out):
    """Exit a module that ran one object's task per item (qemu_vms, links): the items' warnings become the module's,
    their diffs one diff keyed by item name, `changed` if any item changed; fails naming every failed item."""
    diff = {"before": {}, "after": {}}
    for result in results:
        for warning in result.pop("warnings", []):
            module.warn(warning)
        item_diff = result.pop("diff", None)
        if item_diff:
            diff["before"][result["name"]] = item_diff["before"]
            diff["after"][result["name"]] = item_diff["after"]
    out["changed"] = any(result.get("changed") for result in results)
    if module._diff:
        out["diff"] = diff
    failed = [result["msg"] for result in results if result.get("failed")]
    if failed:
        module.fail_json(msg="; ".join(failed), **out)
    module.exit_json(**out)
