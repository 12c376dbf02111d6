#!/usr/bin/env python3
"""Writes dashboards/edgewatch.json, the Grafana dashboard edgewatch ships.

Run after changing panels: python3 dashboards/generate.py. tests/dashboards.rs
checks that every metric a panel queries is one edgewatch exports (it must
appear in a golden exposition under tests/golden/).
"""
import json
import os

PANELS = [
    # (row title, [(panel title, type, unit, [(expr, legend)])])
    ("Overview", [
        ("Probes attached", "stat", "none",
         [("sum by (probe, mode) (edgewatch_probe_attached{instance=~\"$instance\"})", "{{probe}} ({{mode}})")]),
        ("Ring-buffer events/s", "timeseries", "ops",
         [("sum by (probe) (rate(edgewatch_ringbuf_events_total{instance=~\"$instance\"}[$__rate_interval]))", "{{probe}}")]),
        ("Lost events/s (ring full)", "timeseries", "ops",
         [("sum by (probe) (rate(edgewatch_ringbuf_lost_events_total{instance=~\"$instance\"}[$__rate_interval]))", "{{probe}}")]),
        ("Probe runs the kernel skipped/s", "timeseries", "ops",
         [("sum by (probe) (rate(edgewatch_probe_missed_events_total{instance=~\"$instance\"}[$__rate_interval]))", "{{probe}}")]),
        ("Decode errors/s", "timeseries", "ops",
         [("sum by (probe) (rate(edgewatch_decode_errors_total{instance=~\"$instance\"}[$__rate_interval]))", "{{probe}}")]),
    ]),
    ("connect()", [
        ("connect() calls/s by result", "timeseries", "ops",
         [("sum by (result) (rate(edgewatch_connect_calls_total{instance=~\"$instance\"}[$__rate_interval]))", "{{result}}")]),
        ("TCP handshakes/s by outcome", "timeseries", "ops",
         [("sum by (outcome) (rate(edgewatch_tcp_connects_total{instance=~\"$instance\"}[$__rate_interval]))", "{{outcome}}")]),
        ("Handshake failure ratio", "timeseries", "percentunit",
         [("sum(rate(edgewatch_tcp_connects_total{instance=~\"$instance\",outcome!=\"established\"}[$__rate_interval])) / sum(rate(edgewatch_tcp_connects_total{instance=~\"$instance\"}[$__rate_interval]))", "failed")]),
        ("Handshake duration p50 / p99 (established)", "timeseries", "s",
         [("histogram_quantile(0.5, sum by (le) (rate(edgewatch_tcp_connect_duration_seconds_bucket{instance=~\"$instance\",outcome=\"established\"}[$__rate_interval])))", "p50"),
          ("histogram_quantile(0.99, sum by (le) (rate(edgewatch_tcp_connect_duration_seconds_bucket{instance=~\"$instance\",outcome=\"established\"}[$__rate_interval])))", "p99")]),
    ]),
 ("TCP retransmissions", [
        ("Retransmitted segments/s (= TcpRetransSegs)", "timeseries", "ops",
         [("sum by (family) (rate(edgewatch_tcp_retransmitted_segments_total{instance=~\"$instance\"}[$__rate_interval]))", "{{family}}")]),
        ("Retransmits/s by socket state", "timeseries", "ops",
         [("sum by (state) (rate(edgewatch_tcp_retransmits_total{instance=~\"$instance\"}[$__rate_interval]))", "{{state}}")]),
        ("Abandoned retransmit attempts/s by reason", "timeseries", "ops",
         [("sum by (reason) (rate(edgewatch_tcp_retransmits_skipped_total{instance=~\"$instance\"}[$__rate_interval]))", "{{reason}}")]),
    ]),
 ("BPF maps and programs", [
        ("Fullest maps (pressure)", "timeseries", "percentunit",
         [("topk(10, max by (map_id, map_name, map_type) (edgewatch_bpf_map_pressure{instance=~\"$instance\"}))", "{{map_name}} ({{map_type}}, id {{map_id}})")]),
        ("Map update failures/s by map and result", "timeseries", "ops",
         [("topk(10, sum by (map_name, result) (rate(edgewatch_bpf_map_updates_total{instance=~\"$instance\",result!=\"ok\"}[$__rate_interval])))", "{{map_name}} {{result}}")]),
        ("Map updates/s by map", "timeseries", "ops",
         [("topk(10, sum by (map_name) (rate(edgewatch_bpf_map_updates_total{instance=~\"$instance\",result=\"ok\"}[$__rate_interval])))", "{{map_name}}")]),
        ("Seconds since last successful update", "table", "s",
         [("time() - max by (map_id, map_name) (edgewatch_bpf_map_last_update_timestamp_seconds{instance=~\"$instance\"})", "{{map_name}}")]),
        ("Map update syscall p99", "timeseries", "s",
         [("histogram_quantile(0.99, sum by (le, map_type) (rate(edgewatch_bpf_map_update_duration_seconds_bucket{instance=~\"$instance\"}[$__rate_interval])))", "{{map_type}}")]),
        ("Program CPU (run seconds/s)", "timeseries", "percentunit",
         [("topk(10, sum by (prog_name, prog_type) (rate(edgewatch_bpf_prog_run_seconds_total{instance=~\"$instance\"}[$__rate_interval])))", "{{prog_name}} ({{prog_type}})")]),
        ("Program ns per run", "timeseries", "ns",
         [("topk(10, 1e9 * sum by (prog_name) (rate(edgewatch_bpf_prog_run_seconds_total{instance=~\"$instance\"}[$__rate_interval])) / sum by (prog_name) (rate(edgewatch_bpf_prog_runs_total{instance=~\"$instance\"}[$__rate_interval])))", "{{prog_name}}")]),
        ("Maps on the host", "stat", "none",
         [("count(edgewatch_bpf_map_info{instance=~\"$instance\"})", "maps")]),
    ]),
 ("XDP datapath", [
        ("Packets/s by action and protocol", "timeseries", "pps",
         [("sum by (interface, action, proto) (rate(edgewatch_xdp_packets_total{instance=~\"$instance\"}[$__rate_interval]))", "{{interface}} {{action}} {{proto}}")]),
        ("Bits/s by interface and action", "timeseries", "bps",
         [("8 * sum by (interface, action) (rate(edgewatch_xdp_bytes_total{instance=~\"$instance\"}[$__rate_interval]))", "{{interface}} {{action}}")]),
        ("Dropped share (blocklist)", "timeseries", "percentunit",
         [("sum by (interface) (rate(edgewatch_xdp_packets_total{instance=~\"$instance\",action=\"drop\"}[$__rate_interval])) / sum by (interface) (rate(edgewatch_xdp_packets_total{instance=~\"$instance\"}[$__rate_interval]))", "{{interface}}")]),
        ("Blocklist prefixes", "stat", "none",
         [("sum by (family) (edgewatch_xdp_blocklist_entries{instance=~\"$instance\"})", "{{family}}")]),
        ("Attached interfaces", "stat", "none",
         [("sum by (interface, mode) (edgewatch_xdp_attached{instance=~\"$instance\"})", "{{interface}} ({{mode}})")]),
        ("Blocklist reloads", "stat", "none",
         [("sum by (result) (increase(edgewatch_xdp_blocklist_reloads_total{instance=~\"$instance\"}[1h]))", "{{result}}")]),
    ]),
]



def hot_update_doctor_row():
    """[F11] Map writes that cannot take effect: writes to maps no program
    uses, stale twins (the reload bug), writers per map, programs per map."""
    sel = 'instance=~\"$instance\"'
    return ("BPF map hot-update doctor", [
        ("Writes to maps no program uses/s", "timeseries", "ops",
         [(f"topk(10, sum by (map_name, map_id, comm) (rate(edgewatch_bpf_map_unreferenced_writes_total{{{sel}}}[$__rate_interval])))",
           "{{comm}} -> {{map_name}} (id {{map_id}})")]),
        ("Stale twins (written, replaced by a newer map of the same name)", "table", "none",
         [(f"max by (map_name, map_id, successor_id) (edgewatch_bpf_map_stale_twin{{{sel}}})",
           "{{map_name}} {{map_id}} -> {{successor_id}}")]),
        ("Writer processes per map (5 min)", "timeseries", "none",
         [(f"topk(10, max by (map_name, map_id) (edgewatch_bpf_map_writers{{{sel}}}))", "{{map_name}} (id {{map_id}})")]),
        ("Maps written but used by no program", "stat", "none",
         [(f"count(max by (instance, map_id) (edgewatch_bpf_map_writers{{{sel}}}) and on (instance, map_id) max by (instance, map_id) (edgewatch_bpf_map_programs{{{sel}}}) == 0) or vector(0)",
           "maps")]),
    ])


PANELS.append(hot_update_doctor_row())

def panel(pid, title, ptype, unit, targets, x, y):
    return {
        "id": pid,
        "type": ptype,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12 if ptype != "stat" else 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def build():
    panels, pid, y = [], 1, 0
    for row_title, row in PANELS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        for title, ptype, unit, targets in row:
            p = panel(pid, title, ptype, unit, targets, x, y)
            panels.append(p)
            pid += 1
            x += p["gridPos"]["w"]
            if x >= 24:
                x = 0
                y += 8
        if x:
            y += 8
    return {
        "title": "edgewatch",
        "uid": "edgewatch-overview",
        "tags": ["edgewatch", "ebpf"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "instance", "type": "query", "label": "Instance", "multi": True, "includeAll": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(edgewatch_build_info, instance)", "refId": "instance"},
             "refresh": 2},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edgewatch.json")
    with open(out, "w") as f:
        json.dump(build(), f, indent=2)
        f.write("\n")
