#!/usr/bin/env python3
"""perfsum.py summarises `perf script -F comm,tid,ip,sym` output of a Go
process: the share of samples whose stack contains each function
(inclusive), for the frames that say where the time goes (LLMProxy's own
packages, the libraries on its request path, the runtime's allocator and
GC, system calls), and the hottest leaf functions (self time)."""

import collections
import re
import sys

KEEP = re.compile(
    r"llmproxy/|labstack/echo|encoding/json|log/slog|nats-io/|prometheus/|bbolt|redis/go-redis|"
    r"net/http\.|bufio\.|crypto/|^runtime\.(mallocgc|gcBgMarkWorker|gcDrain|scanobject|newobject|growslice|makeslice|concatstrings|mapassign|selectgo|schedule|findRunnable)$|"
    r"^syscall\.|^internal/poll\.\(\*FD\)\.(Read|Write)$|^compress/|^time\.Now$"
)


def frames(path):
    stack = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if stack:
                    yield stack
                stack = []
                continue
            if not line.startswith((" ", "\t")):
                # header line: comm tid
                stack = []
                continue
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                sym = re.sub(r"\+0x[0-9a-f]+$", "", parts[1])
                sym = re.sub(r"\s+\(.*\)$", "", sym)
                stack.append(sym)
    if stack:
        yield stack


# GROUPS attribute samples to the parts of the single binary; a sample
# counts for every group whose frames are on its stack.
GROUPS = [
    ("gateway request path (Gateway.serveProxy)", r"gateway\.\(\*Gateway\)\.serveProxy$"),
    ("net/http client transport loops (upstream side)", r"persistConn\)\.(readLoop|writeLoop)$"),
    ("events: embedded NATS server", r"nats-server/"),
    ("events: meter in the same process", r"llmproxy/services/meter"),
    ("events: notifier in the same process", r"llmproxy/services/notifier"),
    ("events: gateway publisher and outbox", r"gateway/internal/publish"),
    ("access log (log/slog)", r"^log/slog\."),
    ("encoding/json, anywhere", r"^encoding/json\."),
    ("runtime.mallocgc", r"^runtime\.mallocgc$"),
    ("GC background workers", r"^runtime\.gcBgMarkWorker"),
    ("prometheus", r"prometheus/"),
]


def main():
    incl = collections.Counter()
    self_ = collections.Counter()
    groups = collections.Counter()
    rx = [(name, re.compile(p)) for name, p in GROUPS]
    n = 0
    for st in frames(sys.argv[1]):
        n += 1
        self_[st[0]] += 1
        fns = set(st)
        for fn in fns:
            incl[fn] += 1
        for name, r in rx:
            if any(r.search(fn) for fn in fns):
                groups[name] += 1
    if n == 0:
        print("no samples")
        return
    print(f"-- {n} samples; share by part of the process")
    for name, _ in GROUPS:
        print(f"  {100 * groups[name] / n:5.1f}%  {name}")
    print(f"-- self time (leaf function), top 20")
    for fn, c in self_.most_common(20):
        print(f"  {100 * c / n:5.1f}%  {fn}")
    print("-- inclusive time (stack contains the function), filtered to what explains it, >= 2%")
    for fn, c in incl.most_common():
        if 100 * c / n < 2:
            break
        if KEEP.search(fn):
            print(f"  {100 * c / n:5.1f}%  {fn}")


if __name__ == "__main__":
    main()
