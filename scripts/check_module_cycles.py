#!/usr/bin/env python3
"""Fails when a module of src/ imports a module that imports it back, directly or around
a longer circle. Edges are the `crate::…` and `super::…` paths of each file (outside its
`#[cfg(test)] mod tests`, comments left out), resolved to the deepest module that exists; a module's use of
its own ancestors (a child reaching its parent's items) is not an edge. Run by `make lint`."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                found["::".join(parts)] = path
    return found


def resolve(mods, current, path):
    segments = path.split("::")
    base = current.split("::") if current else []
    if segments[0] == "crate":
        base, segments = [], segments[1:]
    else:
        while segments and segments[0] == "super":
            base, segments = base[:-1], segments[1:]
    candidate = base + segments
    while candidate:
        name = "::".join(candidate)
        if name in mods:
            return name
        candidate = candidate[:-1]
    return None


def edges(mods):
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        text = open(path, encoding="utf-8").read()
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)[0]
        # Comments name modules too (doc links); they are not imports.
        text = re.sub(r"//.*", "", text)
        for used in re.findall(r"\b((?:crate|super)(?:::\w+)+)", text):
            target = resolve(mods, module, used)
            if target and target != module and not module.startswith(target + "::"):
                graph[module].add(target)
    return graph


def cycles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    mods = modules()
    found = cycles(edges(mods))
    for component in found:
        print("import circle: " + " ⇄ ".join(component))
    print(f"{len(mods)} modules, {len(found)} import circles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
