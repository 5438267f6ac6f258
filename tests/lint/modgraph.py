#!/usr/bin/env python3
"""The module graph has no cycle, and STATE_DIR paths are built in one place.

  modgraph.py [ROOT]

1. Module X uses module Y when src/X.c or include/X.h includes "Y.h" and
   src/Y.c exists.  The graph of all modules must be acyclic (STYLE.md:
   daemon -> control -> failover -> {primary, replica} -> {store,
   tracker, wire}); a cycle is printed, with the files that make it.
2. No file but src/layout.c formats a path under STATE_DIR: no printf-
   family call elsewhere takes state_dir, and the names of STATE_DIR's
   files (include/layout.h) appear in no other source file as a path.

Exit 0 if both hold, 1 otherwise (each problem on its own line).
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
SRC, INC = os.path.join(ROOT, "src"), os.path.join(ROOT, "include")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_0-9]+)\.h"', re.M)


def read(path):
    with open(path) as f:
        return f.read()


def modules():
    return sorted(f[:-2] for f in os.listdir(SRC) if f.endswith(".c"))


def edges(mods):
    """{module: {used module: file that includes it}}"""
    out = {m: {} for m in mods}
    for m in mods:
        for path in (os.path.join(SRC, m + ".c"), os.path.join(INC, m + ".h")):
            if not os.path.exists(path):
                continue
            for used in INCLUDE.findall(read(path)):
                if used != m and used in out:
                    out[m].setdefault(used, os.path.relpath(path, ROOT))
    return out


def find_cycle(graph):
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack = []

    def visit(m):
        colour[m] = GREY
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE:
                c = visit(n)
                if c:
                    return c
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(graph):
        if colour[m] == WHITE:
            c = visit(m)
            if c:
                return c
    return None


def calls(text, names):
    """The full text of each call to one of names (nested parentheses)."""
    for m in re.finditer(r"\b(%s)\s*\(" % "|".join(names), text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        yield text.count("\n", 0, m.start()) + 1, text[m.start():i + 1]


# The files of include/layout.h, as they would appear in a path literal.
STATE_NAMES = ["catalog.db", "control.sock", '"replicas"', "tracker/", "/tracker",
               ".map", "app-point", "nbd.sock", ".fleece", ".empty", ".device",
               "/hooks", '"hooks"', ".on_promote", ".handover"]
PRINTF = ["snprintf", "xasprintf", "asprintf", "sprintf", "vsnprintf"]


def layout_problems():
    out = []
    for f in sorted(os.listdir(SRC)):
        if not f.endswith(".c") or f == "layout.c":
            continue
        text = read(os.path.join(SRC, f))
        for line, call in calls(text, PRINTF):
            args = call.split(",", 2)[2:] if "snprintf" in call else call.split(",", 1)[1:]
            code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', "".join(args))
            if re.search(r"\bstate_dir\b", code):
                out.append("src/%s:%d: formats a path under STATE_DIR (use layout.h)" % (f, line))
            for lit in re.findall(r'"(?:[^"\\]|\\.)*"', call):
                for name in STATE_NAMES:
                    if name.strip('"') in lit and (name.startswith('"') and lit == name
                                                   or not name.startswith('"')):
                        if "%s" in lit or "/" in lit:
                            out.append("src/%s:%d: builds %s (a STATE_DIR file: use layout.h)"
                                       % (f, line, name.strip('"')))
    return out


def main():
    mods = modules()
    graph = edges(mods)
    problems = []
    cycle = find_cycle(graph)
    if cycle:
        steps = ["%s -> %s (%s)" % (a, b, graph[a][b]) for a, b in zip(cycle, cycle[1:])]
        problems.append("module cycle: " + "; ".join(steps))
    problems += layout_problems()
    for p in problems:
        print(p)
    if not problems:
        n = sum(len(v) for v in graph.values())
        print("modules: %d, uses: %d, no cycle; STATE_DIR paths only in src/layout.c" % (len(mods), n))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
