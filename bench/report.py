#!/usr/bin/env python3
"""report.py turns the JSON files bench/run.sh collected into the markdown
table of bench/RESULTS.md: figures per target, ratios to the references of
the same run, and PASS/MISS against the targets of issue 9."""

import argparse
import datetime
import json
import os
import platform
import subprocess

NAMES = {
    "direct": "direct to mockllm",
    "httputil": "httputil.ReverseProxy (bare)",
    "nginx": "nginx proxy_pass, keepalive",
    "core": "LLMProxy passthrough core (no auth, no events; `bench/gatewaycore`)",
    "passthrough": "LLMProxy single binary, auth and limits off (events still on)",
    "all": "LLMProxy all features, single binary",
    "lua": "LLMProxy all features + Lua on_request (model alias)",
    "capture": "LLMProxy all features + response capture",
    "redis": "LLMProxy all features, Redis + own meter",
}


def load(work, name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(d, *path):
    # A run with no successful sample has no figures.
    if d is not None and d.get("ok", d.get("streams", 1)) == 0:
        return None
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def merge_rounds(rounds):
    """merge_rounds takes the median over the rounds of every number in
    the results (errors and counts are summed), keeping the shape."""
    rounds = [x for x in rounds if x is not None]
    if not rounds:
        return None
    out = dict(rounds[0])
    for k, v in rounds[0].items():
        if isinstance(v, dict):
            out[k] = {kk: median([x[k][kk] for x in rounds]) for kk in v}
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "concurrency":
            vals = [x[k] for x in rounds]
            out[k] = sum(vals) if k in ("errors", "ok", "streams", "events") else median(vals)
    out["rounds"] = len(rounds)
    return out


def fmt(v, unit="", digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def table(hdr, rows):
    """A markdown table: the header, its separator and a line per row."""
    return ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def machine(commit, dirty):
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
    return [
        f"- CPU: {os.cpu_count()} × {model} (`nproc` = {os.cpu_count()})",
        f"- memory: {mem}",
        f"- kernel: {platform.release()}",
        f"- {go}",
        f"- binaries built by `make build` from commit {commit or '?'}"
        + (f" with {dirty} uncommitted files under cmd/, services/, pkg/" if dirty else ""),
        f"- load average when the report was written: {open('/proc/loadavg').read().split()[:3]} "
        "(other work on the machine during the run shows up as noise, most in the p99 figures)",
        "- everything on loopback on this one machine: load generator, proxies, mockllm, NATS and Redis share the CPUs",
        f"- NATS for the Redis setup and the event consumers: {nats_server()}",
    ]


def nats_server():
    if os.environ.get("BENCH_NATS_URL"):
        return "the server at BENCH_NATS_URL (the meter and notifier figures still start their own)"
    if os.environ.get("BENCH_NATS_SERVER", "embedded") == "system":
        v = subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()
        return f"the nats-server on PATH ({v or '?'}), BENCH_NATS_SERVER=system"
    v = "?"
    try:
        for line in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "go.mod")):
            if "nats-io/nats-server/v2 " in line:
                v = line.split()[-1]
    except OSError:
        pass
    return f"`eventload nats`, nats-server {v} embedded (the release the single binary embeds)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cmdline", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--notes", action="append", default=[])
    ap.add_argument("--configs", action="append", default=[])
    # The commit the binaries were built from, and how many files under
    # cmd/, services/ and pkg/ differed from it, as run.sh read them when it
    # started: a commit made while the run goes on is not credited with it.
    ap.add_argument("--commit", default="")
    ap.add_argument("--dirty", type=int, default=0)
    a = ap.parse_args()
    work = a.work
    targets = a.targets.split()

    R = {}
    for t in targets:
        R[t] = {k: load(work, f"res-{t}-{k}.json") for k in ("idle", "rss")}
        for k in ("lat", "tput", "stream", "spread"):
            R[t][k] = merge_rounds([load(work, f"res-{t}-{k}-{i}.json") for i in range(1, a.rounds + 1)])
    d = R.get("direct", {})
    d_p50 = get(d.get("lat"), "latency", "p50_us")
    d_p99 = get(d.get("lat"), "latency", "p99_us")
    d_ttft = get(d.get("stream"), "ttft", "p99_us")
    d_lag = get(d.get("stream"), "event_lag", "p99_us")
    ds_ttft = get(d.get("spread"), "ttft", "p99_us")
    ds_lag = get(d.get("spread"), "event_lag", "p99_us")
    ref_rps = get(R.get("httputil", {}).get("tput"), "rps")
    ngx_rps = get(R.get("nginx", {}).get("tput"), "rps")

    fig = {}
    for t in targets:
        r = R[t]
        p50 = get(r["lat"], "latency", "p50_us")
        p99 = get(r["lat"], "latency", "p99_us")
        ttft = get(r["stream"], "ttft", "p99_us")
        lag = get(r["stream"], "event_lag", "p99_us")
        rps = get(r["tput"], "rps")
        rss = None
        if r["rss"] and r["rss"].get("ready") and r["rss"]["streams"]:
            rss = (r["rss"]["after_kb"] - r["rss"]["before_kb"]) / r["rss"]["streams"]
        errs = sum((get(r[k], "errors") or 0) for k in ("lat", "tput", "stream"))
        cpu = get(r["tput"], "cpu_us_per_request") or {}
        own = {k: v for k, v in cpu.items() if k not in ("mockllm", "loadgen")}
        ecpu = get(r["stream"], "cpu_us_per_event") or {}
        eown = {k: v for k, v in ecpu.items() if k not in ("mockllm", "loadgen")}
        sp = r["spread"]
        scpu = {k: v for k, v in (get(sp, "cpu_us_per_event") or {}).items() if k not in ("mockllm", "loadgen")}
        s_ttft50, s_ttft, s_lag50, s_lag = (get(sp, m, p) for m in ("ttft", "event_lag") for p in ("p50_us", "p99_us"))
        fig[t] = dict(
            cpu=sum(own.values()) if own else None, cpu_parts=own, cpu_mock=cpu.get("mockllm"),
            cpu_all=sum(cpu.values()) if cpu else None,
            ecpu=sum(eown.values()) if eown else None, ecpu_mock=ecpu.get("mockllm"),
            p50=p50, p99=p99,
            add50=None if t == "direct" or p50 is None or d_p50 is None else p50 - d_p50,
            add99=None if t == "direct" or p99 is None or d_p99 is None else p99 - d_p99,
            rps=rps, vs_ref=ratio(rps, ref_rps), vs_ngx=ratio(rps, ngx_rps),
            ttft=ttft, addttft=None if t == "direct" or ttft is None or d_ttft is None else ttft - d_ttft,
            lag=lag, addlag=None if t == "direct" or lag is None or d_lag is None else lag - d_lag,
            rss=rss, errs=errs,
            s_ttft50=s_ttft50, s_ttft=s_ttft, s_lag50=s_lag50, s_lag=s_lag,
            s_addttft=None if t == "direct" or s_ttft is None or ds_ttft is None else s_ttft - ds_ttft,
            s_addlag=None if t == "direct" or s_lag is None or ds_lag is None else s_lag - ds_lag,
            s_ecpu=sum(scpu.values()) if scpu else None, s_errs=get(sp, "errors"),
        )

    out = []
    out.append("# Benchmark results\n")
    out.append(f"Run {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
               "produced by `make bench` (bench/run.sh); every figure below comes from this one run.\n")
    out.append("## Machine\n")
    out += machine(a.commit, a.dirty)
    out.append("")
    out.append("## HTTP\n")
    out.append("Latency at concurrency 1 (non-stream chat completion, 16 tokens); throughput at the "
               "concurrency shown in the command; streams: TTFT and per-event lag "
               "(receive time − the event's `mock_sent_ns`) with many concurrent streams; "
               "RSS per idle open stream = (VmRSS with the streams open − VmRSS before) / streams. "
               f"Load figures are the median of {a.rounds} rounds; each round visits every target in turn. "
               "\"added\" = the target's percentile − the same percentile measured direct to mockllm. µs unless stated.\n")
    hdr = ["target", "p50", "p99", "added p50", "added p99", "req/s", "× httputil", "× nginx",
           "CPU / req", "mockllm CPU / req", "TTFT p99", "added TTFT p99", "lag p99", "added lag p99",
           "CPU / event", "mockllm CPU / event", "KB / idle stream", "errors"]
    out += table(hdr, ([
        NAMES.get(t, t), fmt(f["p50"]), fmt(f["p99"]), fmt(f["add50"]), fmt(f["add99"]),
        fmt(f["rps"]), fmt(f["vs_ref"], "×", 2), fmt(f["vs_ngx"], "×", 2),
        fmt(f["cpu"]), fmt(f["cpu_mock"]), fmt(f["ttft"]), fmt(f["addttft"]), fmt(f["lag"]), fmt(f["addlag"]),
        fmt(f["ecpu"], "", 1), fmt(f["ecpu_mock"], "", 1), fmt(f["rss"], "", 1), str(f["errs"]),
    ] for t, f in ((t, fig[t]) for t in targets)))
    out.append("")
    out.append("CPU / req: the CPU time (user + system, from /proc) the target's own processes used in the "
               "throughput window, divided by the requests in it (µs); mockllm's is shown beside it as a check "
               "that every target asked the same of the upstream. CPU / event: the same over the stream phase, "
               "divided by the stream events measured. Neither counts time a process waited for a CPU, "
               "but on a shared host both still grow with contention: mockllm does the same work for every "
               "target, so its column shows how much the machine itself slowed down under each target's load.")
    loop = [(NAMES.get(t, t), fig[t].get("cpu_all")) for t in ("httputil", "core", "all", "redis")
            if t in fig and fig[t].get("cpu_all")]
    if loop:
        out.append("")
        out.append("The whole loop's CPU per request in the throughput phase (the target's processes, mockllm and "
                   "the load generator, which share the machine's CPUs): " + ", ".join(f"{n} {fmt(v)} µs" for n, v in loop) +
                   ". When the CPUs are the limit, a target's throughput relative to httputil can be no better "
                   "than httputil's figure here divided by the target's.")
    parts = fig.get("redis", {}).get("cpu_parts") or {}
    if len(parts) > 1:
        out.append("")
        out.append("Redis setup, CPU per request by process: " + ", ".join(
            f"{k} {fmt(v)} µs" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])) + ".")
    out.append("")

    spread = [t for t in targets if fig[t].get("s_ttft") is not None]
    if spread:
        st0 = R[spread[0]]["spread"] or {}
        out.append("### Streams spread out\n")
        out.append("The stream phase above starts every stream at once and, since all streams have the same "
                   "length, they restart together: their events arrive in waves of "
                   f"{st0.get('concurrency', '?')} at the same instant. Here the same streams are measured again "
                   "with the workers' first streams spread evenly over one stream's length (`loadgen --stagger`), "
                   "so that streams start and send their events spread out, as independent clients do. "
                   "Same rounds, medians of the rounds; \"added\" is against direct to mockllm measured the same way.\n")
        shdr = ["target", "TTFT p50", "TTFT p99", "added TTFT p99", "lag p50", "lag p99", "added lag p99",
                "CPU / event", "errors"]
        out += table(shdr, ([
            NAMES.get(t, t), fmt(f["s_ttft50"]), fmt(f["s_ttft"]), fmt(f["s_addttft"]), fmt(f["s_lag50"]),
            fmt(f["s_lag"]), fmt(f["s_addlag"]), fmt(f["s_ecpu"], "", 1), str(f["s_errs"] or 0),
        ] for t, f in ((t, fig[t]) for t in spread)))
        out.append("")

    mr = load(work, "res-meter-redis.json")
    mb = load(work, "res-meter-redis-backlog.json")
    if mb is not None:
        mb = dict(mb, published_per_s=get(load(work, "res-meter-redis-backlog-pub.json"), "published_per_s"))
    ml = load(work, "res-meter-local.json")
    nt = load(work, "res-notifier.json")
    out.append("## Events\n")
    out.append("Events published straight to JetStream (a fresh NATS per figure), timed from the first "
               "publish until the consumer's own counter (`llmproxy_meter_events_applied_total`, "
               "`llmproxy_webhook_deliveries_total{outcome=\"success\"}`) has moved by all of them: the "
               "publisher runs on the same CPUs meanwhile, and a consumer cannot finish before the last "
               "event is published. The backlog row starts the meter after all its events were published "
               "(`eventload publish`, then `eventload measure --backlog`) and times it from its counter's "
               "first move: the meter's own rate.\n")
    out += table(["consumer", "events", "published/s", "done in", "consumed/s"], (
        [name, fmt(get(r, "events")), fmt(get(r, "published_per_s")), fmt(get(r, "done_seconds"), " s", 2),
         fmt(get(r, "per_s"))]
        for name, r in (("meter, Redis ledger, own process (`--target meter`)", mr),
                        ("meter, Redis ledger, own process, started after its events were published (backlog)", mb),
                        ("meter, local ledger, single binary", ml),
                        ("notifier, own process, one local receiver", nt))))
    out.append("")

    # Targets of issue 9.
    def verdict(ok):
        return "–" if ok is None else ("PASS" if ok else "MISS")

    def ge(v, lim):
        return None if v is None else v >= lim

    def le(v, lim):
        return None if v is None else v <= lim

    def rounds_vs_ref(t):
        """The target's req/s over httputil's in each round: the two are
        measured within seconds of each other, so these show how far the
        host's drift moves the ratio."""
        rs = []
        for i in range(1, a.rounds + 1):
            x = ratio(get(load(work, f"res-{t}-tput-{i}.json"), "rps"),
                      get(load(work, f"res-httputil-tput-{i}.json"), "rps"))
            if x is not None:
                rs.append(x)
        return f" (rounds: {min(rs):.2f}–{max(rs):.2f}×)" if len(rs) > 1 else ""

    fa, fr, fp, fh = fig.get("all", {}), fig.get("redis", {}), fig.get("passthrough", {}), fig.get("httputil", {})
    fc = fig.get("core", {})
    bare50 = fh.get("add50")
    rows = [
        ("passthrough core (no auth, no events): throughput ≥ 1.1× httputil", fmt(fc.get("vs_ref"), "×", 2) + rounds_vs_ref("core"), ge(fc.get("vs_ref"), 1.1)),
        ("(for reference, not a target) single binary, auth and limits off, events on: × httputil",
         fmt(fp.get("vs_ref"), "×", 2) + rounds_vs_ref("passthrough"), None),
        ("all features, single binary: throughput ≥ 0.8× httputil", fmt(fa.get("vs_ref"), "×", 2) + rounds_vs_ref("all"), ge(fa.get("vs_ref"), 0.8)),
        ("all features, Redis: throughput ≥ 0.7× httputil", fmt(fr.get("vs_ref"), "×", 2) + rounds_vs_ref("redis"), ge(fr.get("vs_ref"), 0.7)),
        ("(for reference, not a target) CPU per request × httputil's: passthrough core / all features / Redis setup",
         " / ".join(fmt(ratio(f.get("cpu"), fh.get("cpu")), "×", 2) for f in (fc, fa, fr)), None),
        ("all features: added p50 ≤ bare proxy's added p50 + 30 µs",
         f"{fmt(fa.get('add50'))} µs vs {fmt(bare50)} + 30 µs",
         None if fa.get("add50") is None or bare50 is None else fa["add50"] <= bare50 + 30),
        ("all features: added p99 ≤ 1 ms", f"{fmt(fa.get('add99'))} µs", le(fa.get("add99"), 1000)),
        ("all features: added TTFT p99 ≤ 1 ms", f"{fmt(fa.get('addttft'))} µs", le(fa.get("addttft"), 1000)),
        ("all features: added per-event lag p99 ≤ 0.5 ms", f"{fmt(fa.get('addlag'))} µs", le(fa.get("addlag"), 500)),
        ("(for reference, not a target) streams spread out, added TTFT p99 / added lag p99: "
         "nginx / httputil / all features",
         " ; ".join(f"{fmt(f.get('s_addttft'))} / {fmt(f.get('s_addlag'))} µs"
                    for f in (fig.get("nginx", {}), fh, fa)), None),
        ("all features: ≤ 40 KB RSS per idle stream", f"{fmt(fa.get('rss'), ' KB', 2)}", le(fa.get("rss"), 40)),
        ("Redis setup: added p50 ≤ bare + 30 µs",
         f"{fmt(fr.get('add50'))} µs vs {fmt(bare50)} + 30 µs",
         None if fr.get("add50") is None or bare50 is None else fr["add50"] <= bare50 + 30),
        ("Redis setup: added p99 ≤ 1 ms", f"{fmt(fr.get('add99'))} µs", le(fr.get("add99"), 1000)),
        ("Redis setup: added TTFT p99 ≤ 1 ms", f"{fmt(fr.get('addttft'))} µs", le(fr.get("addttft"), 1000)),
        ("Redis setup: added per-event lag p99 ≤ 0.5 ms", f"{fmt(fr.get('addlag'))} µs", le(fr.get("addlag"), 500)),
        ("Redis setup: ≤ 40 KB RSS per idle stream", f"{fmt(fr.get('rss'), ' KB', 2)}", le(fr.get("rss"), 40)),
        ("meter (Redis) ≥ 20,000 events/s, publishing at the same time", fmt(get(mr, "per_s")), ge(get(mr, "per_s"), 20000)),
        ("meter (Redis) ≥ 20,000 events/s, backlog", fmt(get(mb, "per_s")), ge(get(mb, "per_s"), 20000)),
        ("meter (local ledger) ≥ 20,000 events/s", fmt(get(ml, "per_s")), ge(get(ml, "per_s"), 20000)),
        ("notifier ≥ 2,000 deliveries/s", fmt(get(nt, "per_s")), ge(get(nt, "per_s"), 2000)),
    ]
    out.append("## Targets (issue 9)\n")
    out.append("A throughput ratio is the target's median req/s over httputil's; in brackets, the lowest and "
               "highest of the same ratio taken round by round (the two measured seconds apart), which shows "
               "how far the host's drift moves it.\n")
    out += table(["target", "measured", "verdict"], ([name, val, verdict(ok)] for name, val, ok in rows))
    out.append("")

    # What a feature adds on top of the all-features single binary, each
    # measured in the same rounds as the all-features row.
    fl, fcap = fig.get("lua", {}), fig.get("capture", {})

    def diff(x, y):
        return None if x is None or y is None else x - y

    frows = []
    if "lua" in fig:
        frows += [
            ("Lua on_request rewriting the model (issue 7): latency p50 at concurrency 1",
             fmt(fa.get("p50")), fmt(fl.get("p50")), fmt(diff(fl.get("p50"), fa.get("p50")))),
            ("Lua on_request rewriting the model (issue 7): latency p99 at concurrency 1",
             fmt(fa.get("p99")), fmt(fl.get("p99")), fmt(diff(fl.get("p99"), fa.get("p99")))),
        ]
    if "capture" in fig:
        frows += [
            ("response capture (issue 11): stream per-event lag p99",
             fmt(fa.get("lag")), fmt(fcap.get("lag")), fmt(diff(fcap.get("lag"), fa.get("lag")))),
            ("response capture (issue 11): stream TTFT p99",
             fmt(fa.get("ttft")), fmt(fcap.get("ttft")), fmt(diff(fcap.get("ttft"), fa.get("ttft")))),
        ]
    if frows:
        out.append("## Feature costs (issues 7 and 11)\n")
        out.append("Each feature row is the all-features single binary with one thing added, measured in the "
                   "same rounds as the all-features row and only for the figure it is there for. "
                   "\"added by the feature\" = the feature row − the all-features row (µs); at p99, "
                   "differences within the run-to-run spread of the all-features row are noise.\n")
        out += table(["figure", "all features", "with the feature", "added by the feature"], frows)
        out.append("")
        if "capture" in fig:
            cl, al = fcap.get("addlag"), fa.get("addlag")
            out += table(["check", "measured", "verdict"], [
                ["capture on: added per-event lag p99 ≤ 0.5 ms (the proxy engine's bound, issue 9)",
                 f"{fmt(cl)} µs", verdict(le(cl, 500))],
                ["capture on: added per-event lag p99 ≤ the same figure with capture off + 0.5 ms",
                 f"{fmt(cl)} µs vs {fmt(al)} + 500 µs",
                 verdict(None if cl is None or al is None else cl <= al + 500)],
            ])
            out.append("")

    notes = [n.strip() for n in a.notes if n.strip()]
    notes.append("the load generator runs on the same CPUs as the proxy and mockllm; on a small machine "
                 "throughput is shared three ways, so ratios are more meaningful than absolute req/s")
    notes.append("passthrough core: `bench/gatewaycore` serves the real gateway (`services/gateway`, "
                 "`gateway.New` with the same config as the single-binary passthrough row, loaded by pkg/config: "
                 "one backend, auth, rate limits and Lua off, log level warn) with `Events: nil` and no JetStream, "
                 "so it publishes nothing and runs no NATS, outbox or meter; the http.Server has the read-header and "
                 "idle timeouts `llmproxy serve` uses. This is the row issue 9's passthrough target is judged on")
    notes.append("the single binary with auth and limits off still publishes one event per request to its embedded "
                 "NATS and runs the meter: the binary has no switch to turn events off; auth, rate limits, webhooks "
                 "and the access log are off. It is kept so that the cost of the event pipeline stays visible")
    notes.append("feature rows: \"+ Lua on_request\" adds `lua: { scripts: [examples/lua/model_alias.lua] }` to "
                 "all.yaml and its requests name model `gpt-4o`, which the script rewrites to `qwen2.5-72b` (and adds "
                 "max_tokens 512; the run checks the rewrite before measuring); measured for latency at concurrency 1 "
                 "only. \"+ response capture\" sets `logging: { capture_response: true, max_capture_bytes: 65536 }`; "
                 "measured for streams only. Neither has an RSS, throughput or (Lua) stream figure")
    notes.append("\"all features\": file key + auth, rate limits on (memory, or Redis in the Redis setup) with "
                 "limits high enough that nothing is refused, quota admission, RequestCompleted events to "
                 "JetStream through the outbox, the meter (local ledger in the single binary, its own process "
                 "on Redis in the Redis setup), metrics, access log; no webhooks unless BENCH_WEBHOOK=1")
    notes.append("the all-features processes log every request at info (the access log, JSON lines on stderr) "
                 "to a file in the run's work directory")
    notes.append("errors: failed requests or streams in the measured window, not counted in the figures; the bare "
                 "httputil proxy drops a few streams (\"ReverseProxy read error during body copy: use of closed "
                 "network connection\" in its log)")
    notes.append("the httputil reference raises the transport's idle connections per host from 2 to 1024, "
                 "so that it does not redial under concurrency 64; nothing else is changed")
    out.append("## Notes\n")
    out += [f"- {n}" for n in notes]
    out.append("")

    out.append("## Commands\n")
    out.append("```sh")
    out.append(a.cmdline)
    out.append("```\n")
    out.append("Per target (URL = the target's `/v1/chat/completions`; LLMProxy with auth adds `--header 'Authorization: Bearer <key>'`):\n")
    out.append("```sh")
    out.append("loadgen --mode request --concurrency 1 --duration … --url URL --body "
               "'{\"model\":\"gpt-4o\",\"stream\":false,\"messages\":[…]}'   # the Lua row")
    lat = R[targets[0]]["lat"] or {}
    tp = R[targets[0]]["tput"] or {}
    st = R[targets[0]]["stream"] or {}
    out.append(f"loadgen --mode request --concurrency 1 --duration {lat.get('seconds', 0):g}s --url URL")
    out.append(f"loadgen --mode request --concurrency {tp.get('concurrency', '?')} --duration {tp.get('seconds', 0):g}s --url URL "
               "--cpu mockllm=PID --cpu proxy=PID   # Redis setup: --cpu gateway=… meter=… nats=… redis=…")
    out.append(f"loadgen --mode stream --concurrency {st.get('concurrency', '?')} --duration {st.get('seconds', 0):g}s --url URL "
               "--header 'X-Mock-Gap: …' --header 'X-Mock-Tokens: …' --cpu mockllm=PID --cpu proxy=PID")
    out.append(f"loadgen --mode stream --concurrency {st.get('concurrency', '?')} --stagger {os.environ.get('BENCH_STREAM_STAGGER', '400ms')} --duration {st.get('seconds', 0):g}s --url URL "
               "--header 'X-Mock-Gap: …' --header 'X-Mock-Tokens: …' --cpu mockllm=PID --cpu proxy=PID   # streams spread out")
    out.append("loadgen --mode idle --concurrency N --url URL --header 'X-Mock-Ttft: 1h' --inflight-url MOCK/metrics --ready-file F")
    out.append("eventload measure --nats URL --n N --metrics ADMIN/metrics --metric llmproxy_meter_events_applied_total")
    out.append("eventload publish --nats URL --n N; llmproxy serve --target meter …; "
               "eventload measure --backlog --n N --metrics ADMIN/metrics --metric llmproxy_meter_events_applied_total")
    out.append("eventload measure --nats URL --n N --metrics ADMIN/metrics --metric llmproxy_webhook_deliveries_total --match 'outcome=\"success\"'")
    out.append("```\n")
    for c in a.configs:
        try:
            text = open(c).read()
        except OSError:
            continue
        out.append(f"<details><summary>{os.path.basename(c)}</summary>\n\n```\n{text.rstrip()}\n```\n</details>\n")

    md = "\n".join(out)
    with open(a.out, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
