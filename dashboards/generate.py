#!/usr/bin/env python3
"""Writes dashboards/edgewatch.json, the Grafana dashboard edgewatch ships.

Built with Grafana's own dashboards-as-code SDK (grafana-foundation-sdk, the
build for Grafana 11.6's schema), installed into .venv by
`scripts/quickstart install`:

    .venv/bin/python3 dashboards/generate.py           # rewrite the JSON
    .venv/bin/python3 dashboards/generate.py --check   # exit 1 if it is stale

Every panel has a description, a unit and thresholds. Where a panel has an
alert in deploy/prometheus/rules.yml, its red threshold is the alert's
level; pure volume panels (events, packets, calls per second) have no level
that is wrong on every node, so they keep a single base colour and say so.

tests/repo/dashboards.rs checks that the JSON is what this script writes, that
every panel has those three things, and that every metric a panel queries
is one edgewatch exports; tests/e2e/dashboards.rs runs every query, with
its variables substituted, against a real Prometheus scraping a loaded
edgewatch.
"""
import os
import sys

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    GridPos,
    Threshold,
    ThresholdsConfig,
    ThresholdsMode,
    VariableRefresh,
)

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
I = 'instance=~"$instance"'

# Threshold steps: (value from which the colour applies, colour); the first
# step is the base (None = minus infinity).
BASE = [(None, "green")]
ANY_IS_BAD = [(None, "green"), (0.001, "red")]
ANY_IS_WARNING = [(None, "green"), (0.001, "yellow")]


def thresholds(steps):
    return ThresholdsConfig(
        mode=ThresholdsMode.ABSOLUTE,
        steps=[Threshold(value=v, color=c) for v, c in steps],
    )


def thresholds_builder(steps):
    t = thresholds(steps)
    return dashboard.ThresholdsConfig().mode(t.mode).steps(t.steps)


def queries(targets, instant_table=False):
    out = []
    for i, (expr, legend) in enumerate(targets):
        q = prometheus.Dataquery().ref_id(chr(ord("A") + i)).expr(expr).legend_format(legend).datasource(DS)
        if instant_table:
            # A table shows the current value per series, one row each.
            q = q.instant().format(PromQueryFormat.TABLE)
        out.append(q)
    return out


def panel(kind, title, description, unit, steps, targets, width=None):
    """A panel of `kind` (timeseries, stat, table) with its description,
    unit, thresholds and Prometheus queries."""
    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}[kind]()
    p = (
        builder.title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds_builder(steps))
        .datasource(DS)
        .targets(queries(targets, instant_table=kind == "table"))
        .height(8)
        .span(width or (6 if kind == "stat" else 12))
    )
    if kind == "timeseries" and len(steps) > 1:
        # Draw the levels on the graph, so a line crossing one is obvious.
        p = p.thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
    if kind == "stat":
        p = p.color_mode(common.BigValueColorMode.BACKGROUND)
    return p


ROWS = [
    ("Overview", [
        panel("stat", "Probes attached",
              "1 per attached probe, with its attach mode (tp_btf, fentry, kprobe, tracepoint). "
              "0 with mode none: the probe failed to attach and its metrics stay empty; the log names the hook "
              "(alert EdgewatchProbeNotAttached).",
              "none", [(None, "red"), (1, "green")],
              [(f"sum by (probe, mode) (edgewatch_probe_attached{{{I}}})", "{{probe}} ({{mode}})")]),
        panel("table", "Versions running",
              "Nodes per edgewatch version and git commit (edgewatch_build_info): a rollout is complete when one row is left.",
              "none", BASE,
              [(f"count by (version, revision) (edgewatch_build_info{{{I}}})", "{{version}} {{revision}}")],
              width=6),
        panel("timeseries", "Ring-buffer events/s",
              "Records read from the BPF ring buffer and decoded, per probe. Volume follows the node's workload. "
              "The consumer handles about 2.6 million records/s per core (BENCHMARKS.md): yellow at 250k/s, "
              "red at 1M/s, where edgewatch uses a large share of a core.",
              "ops", [(None, "green"), (250_000, "yellow"), (1_000_000, "red")],
              [(f"sum by (probe) (rate(edgewatch_ringbuf_events_total{{{I}}}[$__rate_interval]))", "{{probe}}")]),
        panel("timeseries", "Lost events/s (ring full)",
              "Events the kernel could not record (ring buffer full, or a full in-flight table), counted in BPF. "
              "Any loss means counts are low: raise ringbuf.size_bytes (alert EdgewatchLosingEvents).",
              "ops", ANY_IS_BAD,
              [(f"sum by (probe) (rate(edgewatch_ringbuf_lost_events_total{{{I}}}[$__rate_interval]))", "{{probe}}")]),
        panel("timeseries", "Probe runs the kernel skipped/s",
              "Runs of the probe's programs the kernel skipped (recursion_misses): a kprobe or classic-tracepoint "
              "program does not run while another one, or a bpf() map syscall, holds the CPU. Counts are then lower "
              "bounds (alert EdgewatchProbeRunsSkipped, info).",
              "ops", ANY_IS_WARNING,
              [(f"sum by (probe) (rate(edgewatch_probe_missed_events_total{{{I}}}[$__rate_interval]))", "{{probe}}")]),
        panel("timeseries", "Decode errors/s",
              "Ring-buffer records that could not be decoded (truncated, wrong size, unknown kind). "
              "Should stay 0: anything else is a bug or a kernel/user-space version mismatch.",
              "ops", ANY_IS_BAD,
              [(f"sum by (probe) (rate(edgewatch_decode_errors_total{{{I}}}[$__rate_interval]))", "{{probe}}")]),
    ]),
    ("connect()", [
        panel("timeseries", "connect() calls/s by result",
              "Every connect() syscall by its return: ok, einprogress (non-blocking, the handshake goes on) or the "
              "errno name. No level: volume follows the node's workload; see the failure ratio beside it.",
              "ops", BASE,
              [(f"sum by (result) (rate(edgewatch_connect_calls_total{{{I}}}[$__rate_interval]))", "{{result}}")]),
        panel("timeseries", "TCP handshakes/s by outcome",
              "TCP handshakes leaving SYN_SENT, by outcome (established, refused, timeout, reset, unreachable, "
              "other), non-blocking connects included. No level: volume follows the workload.",
              "ops", BASE,
              [(f"sum by (outcome) (rate(edgewatch_tcp_connects_total{{{I}}}[$__rate_interval]))", "{{outcome}}")]),
        panel("timeseries", "Handshake failure ratio",
              "Share of TCP handshakes that did not reach ESTABLISHED. Red above 5%, the level of the alert "
              "EdgewatchTcpConnectFailures; yellow from 1%.",
              "percentunit", [(None, "green"), (0.01, "yellow"), (0.05, "red")],
              [(f'sum(rate(edgewatch_tcp_connects_total{{{I},outcome!="established"}}[$__rate_interval])) '
                f'/ sum(rate(edgewatch_tcp_connects_total{{{I}}}[$__rate_interval]))', "failed")]),
        panel("timeseries", "Handshake duration p50 / p99 (established)",
              "Time from SYN_SENT to ESTABLISHED. Yellow from 100 ms; red from 1 s, the first SYN retransmission "
              "timeout: a p99 there means SYNs or SYN-ACKs are lost.",
              "s", [(None, "green"), (0.1, "yellow"), (1, "red")],
              [(f'histogram_quantile(0.5, sum by (le) (rate(edgewatch_tcp_connect_duration_seconds_bucket{{{I},outcome="established"}}[$__rate_interval])))', "p50"),
               (f'histogram_quantile(0.99, sum by (le) (rate(edgewatch_tcp_connect_duration_seconds_bucket{{{I},outcome="established"}}[$__rate_interval])))', "p99")]),
    ]),
    ("TCP retransmissions", [
        panel("timeseries", "Retransmitted segments/s (= TcpRetransSegs)",
              "Segments the kernel retransmitted, exactly its TcpRetransSegs counter, host-wide. "
              "No level: what is normal depends on the traffic; compare nodes, and with the past.",
              "ops", BASE,
              [(f"sum by (family) (rate(edgewatch_tcp_retransmitted_segments_total{{{I}}}[$__rate_interval]))", "{{family}}")]),
        panel("timeseries", "Retransmits/s by socket state",
              "Retransmitted skbs by the socket's state: syn_sent are lost SYNs (the client side), syn_recv lost "
              "SYN-ACKs (the server side), established lost data. No level: depends on the traffic.",
              "ops", BASE,
              [(f"sum by (state) (rate(edgewatch_tcp_retransmits_total{{{I}}}[$__rate_interval]))", "{{state}}")]),
        panel("timeseries", "Abandoned retransmit attempts/s by reason",
              "Retransmissions the kernel gave up before sending (6.12+): EBUSY (the original still in a host "
              "queue), EAGAIN (zero window), ENOMEM, EHOSTUNREACH. Not counted as retransmits. "
              "Yellow from any: a sustained rate means a congested host queue or a closed window.",
              "ops", ANY_IS_WARNING,
              [(f"sum by (reason) (rate(edgewatch_tcp_retransmits_skipped_total{{{I}}}[$__rate_interval]))", "{{reason}}")]),
    ]),
    ("BPF maps and programs", [
        panel("timeseries", "Fullest maps (pressure)",
              "Entries / max_entries for the ten fullest hash, LRU and LPM maps (where the count is exact). "
              "Red above 90%, the level of the alert EdgewatchBpfMapNearlyFull: a full hash map refuses inserts "
              "(E2BIG), a full LRU evicts live entries. Yellow from 75%.",
              "percentunit", [(None, "green"), (0.75, "yellow"), (0.9, "red")],
              [(f"topk(10, max by (map_id, map_name, map_type) (edgewatch_bpf_map_pressure{{{I}}}))", "{{map_name}} ({{map_type}}, id {{map_id}})")]),
        panel("timeseries", "Map update failures/s by map and result",
              "Failed map writes by errno: e2big (map full), enomem, ebusy mean the data plane acts on old values "
              "(alert EdgewatchBpfMapUpdatesFailing); eexist and enoent are often expected (BPF_NOEXIST races, "
              "deleting what is gone). Any failure shows.",
              "ops", ANY_IS_BAD,
              [(f'topk(10, sum by (map_name, result) (rate(edgewatch_bpf_map_updates_total{{{I},result!="ok"}}[$__rate_interval])))', "{{map_name}} {{result}}")]),
        panel("timeseries", "Map updates/s by map",
              "Successful writes per map, the ten busiest. No level: volume follows the control planes.",
              "ops", BASE,
              [(f'topk(10, sum by (map_name) (rate(edgewatch_bpf_map_updates_total{{{I},result="ok"}}[$__rate_interval])))', "{{map_name}}")]),
        panel("table", "Seconds since last successful update",
              "Age of each map's last successful write: a map a control plane should refresh but that grows old "
              "is stale. Yellow after 5 minutes, red after an hour.",
              "s", [(None, "green"), (300, "yellow"), (3600, "red")],
              [(f"time() - max by (map_id, map_name) (edgewatch_bpf_map_last_update_timestamp_seconds{{{I}}})", "{{map_name}}")]),
        panel("timeseries", "Map update syscall p99",
              "99th percentile of one map update or delete syscall, by map type. One update costs about 1 µs here "
              "(BENCHMARKS.md): yellow from 100 µs, red from 1 ms (lock contention, allocation under memory pressure).",
              "s", [(None, "green"), (0.0001, "yellow"), (0.001, "red")],
              [(f"histogram_quantile(0.99, sum by (le, map_type) (rate(edgewatch_bpf_map_update_duration_seconds_bucket{{{I}}}[$__rate_interval])))", "{{map_type}}")]),
        panel("timeseries", "Program CPU (run seconds/s)",
              "CPU time spent in each BPF program, as a share of one CPU (the kernel's run_time_ns, while BPF stats "
              "are on). Yellow from 10% of a CPU, red from 50%.",
              "percentunit", [(None, "green"), (0.1, "yellow"), (0.5, "red")],
              [(f"topk(10, sum by (prog_name, prog_type) (rate(edgewatch_bpf_prog_run_seconds_total{{{I}}}[$__rate_interval])))", "{{prog_name}} ({{prog_type}})")]),
        panel("timeseries", "Program ns per run",
              "Average run time per program run. Tracing programs usually run in well under a microsecond: "
              "yellow from 1 µs, red from 10 µs per run.",
              "ns", [(None, "green"), (1_000, "yellow"), (10_000, "red")],
              [(f"topk(10, 1e9 * sum by (prog_name) (rate(edgewatch_bpf_prog_run_seconds_total{{{I}}}[$__rate_interval])) "
                f"/ sum by (prog_name) (rate(edgewatch_bpf_prog_runs_total{{{I}}}[$__rate_interval])))", "{{prog_name}}")]),
        panel("stat", "Maps on the host",
              "BPF maps the kernel holds, every owner's. No level: it depends on what runs on the node.",
              "none", BASE,
              [(f"count(edgewatch_bpf_map_info{{{I}}})", "maps")]),
    ]),
    ("XDP datapath", [
        panel("timeseries", "Packets/s by action and protocol",
              "Packets the XDP program saw, by interface, verdict (pass, drop = blocklist) and protocol. "
              "In skb mode TCP counts are GSO aggregates (README). No level: volume follows the traffic.",
              "pps", BASE,
              [(f"sum by (interface, action, proto) (rate(edgewatch_xdp_packets_total{{{I}}}[$__rate_interval]))", "{{interface}} {{action}} {{proto}}")]),
        panel("timeseries", "Bits/s by interface and action",
              "Frame bits the XDP program saw, Ethernet header included. No level: volume follows the traffic.",
              "bps", BASE,
              [(f"8 * sum by (interface, action) (rate(edgewatch_xdp_bytes_total{{{I}}}[$__rate_interval]))", "{{interface}} {{action}}")]),
        panel("timeseries", "Dropped share (blocklist)",
              "Share of packets dropped by the blocklist, per interface. Yellow from 10%, red from 50%: "
              "a large share is either an attack being absorbed or a prefix listed by mistake.",
              "percentunit", [(None, "green"), (0.1, "yellow"), (0.5, "red")],
              [(f'sum by (interface) (rate(edgewatch_xdp_packets_total{{{I},action="drop"}}[$__rate_interval])) '
                f'/ sum by (interface) (rate(edgewatch_xdp_packets_total{{{I}}}[$__rate_interval]))', "{{interface}}")]),
        panel("stat", "Blocklist prefixes",
              "Source prefixes in the blocklist, per address family. No level: the list is yours.",
              "none", BASE,
              [(f"sum by (family) (edgewatch_xdp_blocklist_entries{{{I}}})", "{{family}}")]),
        panel("stat", "Attached interfaces",
              "1 per interface the XDP program is attached to, with the mode (driver or skb). "
              "Red below 1: not attached.",
              "none", [(None, "red"), (1, "green")],
              [(f"sum by (interface, mode) (edgewatch_xdp_attached{{{I}}})", "{{interface}} ({{mode}})")]),
        panel("stat", "Blocklist reloads (1h)",
              "SIGHUP reloads in the last hour by result. A rejected file (error, red) leaves the previous list "
              "in force; the log has the line (alert EdgewatchXdpBlocklistReloadRejected).",
              "none", BASE,
              [(f"sum by (result) (increase(edgewatch_xdp_blocklist_reloads_total{{{I}}}[1h]))", "{{result}}")])
        .override_by_name("error", [DynamicConfigValue(id_val="thresholds", value=thresholds(ANY_IS_BAD))]),
    ]),
    ("BPF map hot-update doctor", [
        panel("timeseries", "Writes to maps no program uses/s",
              "Elements written (and accepted) into maps that no loaded program references: writes that cannot take "
              "effect, often a control plane still holding the old map after the data plane was reloaded. Any is red "
              "(alert EdgewatchBpfMapWritesUnreferenced fires after 10 minutes).",
              "ops", ANY_IS_BAD,
              [(f"topk(10, sum by (map_name, map_id, comm) (rate(edgewatch_bpf_map_unreferenced_writes_total{{{I}}}[$__rate_interval])))",
                "{{comm}} -> {{map_name}} (id {{map_id}})")]),
        panel("table", "Stale twins",
              "Maps that are written while a newer map of the same name is the one programs use: the classic reload "
              "bug, named with its successor (alert EdgewatchBpfMapStaleTwin).",
              "none", ANY_IS_BAD,
              [(f"max by (map_name, map_id, successor_id) (edgewatch_bpf_map_stale_twin{{{I}}})",
                "{{map_name}} {{map_id}} -> {{successor_id}}")]),
        panel("timeseries", "Writer processes per map (5 min)",
              "Distinct processes that wrote each map in the last 5 minutes. Yellow from 2: two writers may fight "
              "over the same keys.",
              "none", [(None, "green"), (2, "yellow")],
              [(f"topk(10, max by (map_name, map_id) (edgewatch_bpf_map_writers{{{I}}}))", "{{map_name}} (id {{map_id}})")]),
        panel("stat", "Maps written but used by no program",
              "Maps written in the last 5 minutes that no loaded program references. Red from 1.",
              "none", ANY_IS_BAD,
              [(f"count(max by (instance, map_id) (edgewatch_bpf_map_writers{{{I}}}) "
                f"and on (instance, map_id) max by (instance, map_id) (edgewatch_bpf_map_programs{{{I}}}) == 0) or vector(0)",
                "maps")]),
    ]),
]


def build():
    d = (
        dashboard.Dashboard("edgewatch")
        .uid("edgewatch-overview")
        .description("edgewatch: connect() and TCP handshakes, TCP retransmissions, BPF maps and programs, "
                     "and the XDP datapath of every node, from edgewatch's Prometheus metrics.")
        .tags(["edgewatch", "ebpf"])
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Instance")
            .datasource(DS)
            .query("label_values(edgewatch_build_info, instance)")
            .multi(True)
            .include_all(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    )
    # Our own grid: panels fill 24 columns left to right, a row title
    # starts a new line (the SDK's automatic layout lets a wide panel
    # overflow a line that a narrow one started).
    pid, y = 1, 0
    for title, panels in ROWS:
        d = d.with_row(dashboard.Row(title).id(pid).grid_pos(GridPos(h=1, w=24, x=0, y=y)))
        pid, y, x = pid + 1, y + 1, 0
        for p in panels:
            w = p.build().grid_pos.w
            if x + w > 24:
                x, y = 0, y + 8
            d = d.with_panel(p.id(pid).grid_pos(GridPos(h=8, w=w, x=x, y=y)))
            pid, x = pid + 1, x + w
        y += 8
    return d.build()


def render():
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edgewatch.json")
    text = render()
    if sys.argv[1:] == ["--check"]:
        with open(out) as f:
            if f.read() != text:
                sys.exit(f"{out} is stale: run .venv/bin/python3 dashboards/generate.py")
        sys.exit(0)
    with open(out, "w") as f:
        f.write(text)
