#!/usr/bin/env python3
"""Import circles between the files of a crate: each .rs file's `crate::a::b` and `super::x` paths
resolved to the file they name, then every cycle of the file graph printed (none: exit 0).

    python3 tools/import_cycles.py crates/tensor/src [crates/cli/src ...]
"""
import os, re, sys

def files(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                rel = os.path.relpath(p, root)[:-3].split(os.sep)
                if rel[-1] in ("mod", "lib", "main"):
                    rel = rel[:-1]
                out[tuple(rel)] = p
    return out

def resolve(mods, path):
    """The longest module prefix of `path` that is a file."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None

def graph(root):
    mods = files(root)
    g = {m: set() for m in mods}
    for m, p in mods.items():
        text = re.sub(r"//[^\n]*", "", open(p).read())
        refs = []
        for seg in re.findall(r"\bcrate((?:::\w+)+)", text):
            refs.append(seg.strip(":").split("::"))
        for seg in re.findall(r"\bsuper((?:::\w+)+)", text):
            refs.append(list(m[:-1]) + seg.strip(":").split("::"))
        for grp in re.findall(r"\buse crate::\{([^;]*)\}", text):
            for part in re.findall(r"\b(\w+)::", grp):
                refs.append([part])
        for r in refs:
            t = resolve(mods, r)
            if t is not None and t != m and t != ():
                g[m].add(t)
    return g

def cycles(g):
    found, seen = [], set()
    def dfs(n, stack, on):
        for t in sorted(g[n]):
            if t in on:
                c = stack[stack.index(t):]
                k = frozenset(c)
                if k not in seen:
                    seen.add(k)
                    found.append(c + [t])
            elif len(stack) < 12:
                dfs(t, stack + [t], on | {t})
    for n in sorted(g):
        dfs(n, [n], {n})
    return found

bad = 0
for root in sys.argv[1:]:
    cs = cycles(graph(root))
    for c in cs:
        print(f"{root}: " + " -> ".join("/".join(x) or "lib" for x in c))
    print(f"{root}: {len(cs)} import circle(s)")
    bad += len(cs)
sys.exit(1 if bad else 0)
