"""scripts/xyz_grid.py (v1.10.1), the parts extensions use: ``AxisOption``, ``axis_options`` and how a cell applies
its values (``confirm`` over the typed value list, then ``apply`` on a shallow copy of ``p`` per cell).

In the WebUI this is a script module loaded by file name ("xyz_grid.py"); the glue harness registers it in
``modules.scripts.scripts_data`` the same way.
"""

import copy


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
]


class Script:
    """Stands for the XYZ script class (its __module__ is what extensions look for)."""


Script.__module__ = "xyz_grid.py"


def run_cells(p, axis_label, values, process_images):
    """One row of an X/Y/Z plot: confirm, then for each value a shallow copy of ``p`` with the axis applied."""
    opt = next(o for o in axis_options if o.label == axis_label)
    valslist = [opt.type(x) for x in values]
    if opt.confirm:
        opt.confirm(p, valslist)
    results = []
    for x in valslist:
        pc = copy.copy(p)
        opt.apply(pc, x, valslist)
        results.append((x, process_images(pc)))
    return results
