"""Lists every default-domain signature change between consecutive opsets, from 8 up to 21.

For each op and each schema version v in (7, 21] that follows an earlier version, compares
onnx.defs.get_schema(op, v) with the previous schema: inputs and outputs (name, optionality, and
whether their allowed types still include all the old ones), attributes (presence, type,
required-ness, default), and deprecation. Prints one JSON object per line:
{"op", "since", "changes": [...]} for the steps where something other than a widening of types
or documentation changed.
"""
import json
from collections import defaultdict

import onnx.defs as defs

LAST = 21


def allowed(schema, type_str):
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}


def params(schema, formal):
    return [(p.name, str(p.option).split(".")[-1], allowed(schema, p.type_str)) for p in formal]


def attrs(schema):
    out = {}
    for name, a in schema.attributes.items():
        default = a.default_value.SerializeToString() if a.default_value.name else b""
        out[name] = (str(a.type).split(".")[-1], a.required, default)
    return out


def diff(old, new):
    changes = []
    if new.deprecated:
        changes.append("deprecated")
    for kind, o, n in [("input", old.inputs, new.inputs), ("output", old.outputs, new.outputs)]:
        po, pn = params(old, o), params(new, n)
        if [(x[0], x[1]) for x in po] != [(x[0], x[1]) for x in pn]:
            changes.append(f"{kind}s {[(x[0], x[1]) for x in po]} -> {[(x[0], x[1]) for x in pn]}")
        for a, b in zip(po, pn):
            if not a[2] <= b[2]:
                changes.append(f"{kind} {a[0]} loses types {sorted(a[2] - b[2])}")
    ao, an = attrs(old), attrs(new)
    for name in sorted(set(ao) | set(an)):
        a, b = ao.get(name), an.get(name)
        if a == b:
            continue
        if a is None:
            changes.append(f"attribute {name} added (required={b[1]})")
        elif b is None:
            changes.append(f"attribute {name} removed")
        elif a[:2] != b[:2]:
            changes.append(f"attribute {name} {a[:2]} -> {b[:2]}")
        else:
            changes.append(f"attribute {name} default changed")
    return changes


def main():
    history = defaultdict(dict)
    for s in defs.get_all_schemas_with_history():
        if s.domain in ("", "ai.onnx"):
            history[s.name][s.since_version] = s
    for op in sorted(history):
        versions = sorted(v for v in history[op] if v <= LAST)
        for old, new in zip(versions, versions[1:]):
            if new <= 7:
                continue
            changes = diff(history[op][old], history[op][new])
            if changes:
                print(json.dumps({"op": op, "since": new, "changes": changes}))


if __name__ == "__main__":
    main()
