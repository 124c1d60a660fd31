#!/usr/bin/env python3
"""Median table of `bench/run.sh` results.

Reads the JSON lines run.sh collected (one per `junction load` run, each the
summary line `junction load` prints last, plus the target, sync policy,
connections, messages and repetition added by run.sh) and prints a markdown
table of medians per (target, connections), then the ratio of Junction's
sync = full throughput to the ACK-only peer's at each connection count.
"""

import json
import statistics
import sys

FIELDS = ("msgs_per_sec", "p50_ms", "p90_ms", "p99_ms", "max_ms")
TARGET_ORDER = {"junction": 0, "peer": 1}
SYNC_ORDER = {"full": 0, "normal": 1, "-": 2}


def main(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    if not runs:
        print("no results in %s" % path, file=sys.stderr)
        return 1

    groups = {}
    for run in runs:
        key = (run["target"], run["sync"], run["connections"], run["messages"])
        groups.setdefault(key, []).append(run)

    def order(key):
        target, sync, connections, _ = key
        return (connections, TARGET_ORDER.get(target, 9), SYNC_ORDER.get(sync, 9))

    print("| server | sync | connections | messages | runs | msgs/s | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    medians = {}
    for key in sorted(groups, key=order):
        target, sync, connections, messages = key
        med = {f: statistics.median(r[f] for r in groups[key]) for f in FIELDS}
        medians[key] = med
        name = "junction" if target == "junction" else "@medplum/hl7 Hl7Server (ACK only, no disk)"
        print(
            "| %s | %s | %d | %d | %d | %.0f | %.2f | %.2f | %.2f | %.2f |"
            % (name, sync, connections, messages, len(groups[key]),
               med["msgs_per_sec"], med["p50_ms"], med["p90_ms"], med["p99_ms"], med["max_ms"])
        )
    print()
    for key, med in sorted(medians.items(), key=lambda kv: order(kv[0])):
        target, sync, connections, _ = key
        if target != "junction":
            continue
        peer = [m for k, m in medians.items() if k[0] == "peer" and k[2] == connections]
        if peer and peer[0]["msgs_per_sec"] > 0:
            print("- %d connection(s): junction sync = %s is %.2fx the ACK-only peer (median msgs/s)"
                  % (connections, sync, med["msgs_per_sec"] / peer[0]["msgs_per_sec"]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: summarize.py RESULTS.jsonl", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
