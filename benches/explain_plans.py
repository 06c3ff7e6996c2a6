#!/usr/bin/env python3
"""Judges the query plans auto_explain reported to a transplant-audit server.

    benches/explain_plans.py SERVER_LOG PLANS_LOG

SERVER_LOG is the server's stderr with LOG_FORMAT=json and
RUST_LOG=...,sqlx::postgres::notice=info, its Postgres sessions running
auto_explain with log_format=json and log_level=notice (benches/explain.sh
sets all this up). Every plan arrives as one notice, "duration: … ms
plan:\n{json}".

Prints one verdict line per distinct statement (whitespace collapsed,
numeric literals folded, so that one statement sent with different
constants counts once): a short hash of it, its runs, its slowest run in
ms, the most rows one scan of a large table read in one run (returned plus
filtered out, over all loops), the verdict and the first 80 characters.
Writes to PLANS_LOG, per statement, its full text and one plan of each
distinct shape (the slowest of that shape).
Exits 1 when any plan reads a large table whole:

- a Seq Scan of a large table;
- an Index Scan or Index Only Scan of a large table without an Index Cond
  (it walks the whole index), unless a Limit stops it early (an ordered
  walk: ListFlags' first page) and it discarded at most WALK_DISCARDS rows
  by its Filter per loop.

Small tables (clinics, clinic_versions, keys, ledger_blocks, …) grow with
the registry's configuration, not its records, and may be read whole. So
may the few statements of WHOLE_BY_DESIGN, each with its reason: they are
reported as "whole", not failed. They are matched on a fragment of their
text, so a statement that changes is judged again.
"""

import hashlib
import json
import re
import sys
from collections import defaultdict

# Tables that grow with the records: none of them may be read whole.
LARGE = {"records", "flags", "flag_events", "record_versions", "access_log"}
# An ordered index walk under a Limit may discard this many rows per loop
# by its Filter before it counts as reading the index whole.
WALK_DISCARDS = 1000
# Nodes that pass rows on as they come, so a Limit above them still stops
# the scan below early; any other node (Sort, Hash, Aggregate, …) reads its
# input to the end first.
STREAMING = {
    "Limit", "Result", "Subquery Scan", "Append", "Merge Append", "Unique",
    "Gather Merge", "Incremental Sort", "Nested Loop", "ProjectSet", "LockRows",
}
NOTICE = "sqlx::postgres::notice"
# Statements that read a large table whole on purpose: fragment of the
# normalised text -> why.
WHOLE_BY_DESIGN = {
    'SELECT rule_id, status, count(*) AS "n!" FROM flags':
        "rule counts of every flag, recounted by src/kept.rs when notified of a change",
    "WHERE f.status IN ('OPEN', 'IN_REVIEW') AND NOT EXISTS (SELECT N FROM case_flags c "
    "WHERE c.flag_id = f.id) ORDER BY f.id":
        "every open flag outside a case, regrouped by src/kept.rs and SuggestCases",
}


def normalise(text):
    """The statement with whitespace collapsed and numeric constants folded."""
    text = " ".join(text.split())
    return re.sub(r"(?<![\w$.])\d+(\.\d+)?\b", "N", text)


def scans(node, limited=False, out=None):
    """Every scan of a large table in the plan: (table, how, problem or None, rows read)."""
    if out is None:
        out = []
    kind = node.get("Node Type", "")
    table = node.get("Relation Name")
    loops = node.get("Actual Loops", 1) or 1
    discarded = node.get("Rows Removed by Filter", 0)
    read = (node.get("Actual Rows", 0) + discarded) * loops
    if table in LARGE and kind in ("Seq Scan", "Index Scan", "Index Only Scan",
                                   "Bitmap Heap Scan", "Tid Scan", "Tid Range Scan"):
        how = kind + (" using " + node["Index Name"] if "Index Name" in node else "")
        problem = None
        if kind == "Seq Scan":
            problem = f"Seq Scan on {table}"
        elif kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node:
            if not limited:
                problem = f"{how} on {table} without Index Cond"
            elif discarded > WALK_DISCARDS:
                problem = f"{how} on {table} under a Limit filtering out {discarded} rows"
            else:
                how += " (walk under a Limit)"
        out.append((table, how, problem, read))
    children = node.get("Plans", [])
    for i, child in enumerate(children):
        # A Limit stops the scans it streams from; a Nested Loop streams
        # its outer side only (its inner side runs once per outer row).
        if kind == "Limit":
            child_limited = True
        elif kind in STREAMING and not (kind == "Nested Loop" and i > 0):
            child_limited = limited
        else:
            child_limited = False
        scans(child, child_limited, out)
    return out


def shape(node):
    """The plan's shape: node types, tables and indexes, without figures."""
    parts = [node.get("Node Type", ""), node.get("Relation Name", ""), node.get("Index Name", "")]
    return "(" + " ".join(p for p in parts if p) + "".join(shape(c) for c in node.get("Plans", [])) + ")"


def plans(path):
    """(duration in ms, plan document) of every auto_explain notice in the log."""
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line that is not the server's JSON log (a panic, say)
            if event.get("target") != NOTICE:
                continue
            message = event.get("fields", {}).get("message", "")
            head, sep, body = message.partition("plan:\n")
            if not sep or not head.startswith("duration:"):
                continue
            duration = float(head.split()[1])
            yield duration, json.loads(body)


def main(server_log, plans_log):
    statements = {}  # normalised text -> summary
    for duration, doc in plans(server_log):
        text = doc.get("Query Text", "")
        key = normalise(text)
        s = statements.setdefault(key, {
            "text": text, "runs": 0, "max_ms": 0.0, "scans": defaultdict(int),
            "problems": set(), "shapes": {}, "read": 0,
        })
        s["runs"] += 1
        s["max_ms"] = max(s["max_ms"], duration)
        found = scans(doc["Plan"])
        for table, how, problem, read in found:
            s["scans"][f"{table}: {how}"] += 1
            s["read"] = max(s["read"], read)
            if problem:
                s["problems"].add(problem)
        sig = shape(doc["Plan"])
        kept = s["shapes"].get(sig)
        if kept is None or duration > kept[0]:
            s["shapes"][sig] = (duration, doc, [p for *_, p, _ in found if p])
    if not statements:
        print("no plans in " + server_log + ": did auto_explain load?", file=sys.stderr)
        return 2

    for key, s in statements.items():
        s["design"] = next((why for fragment, why in WHOLE_BY_DESIGN.items()
                            if fragment in key), None)
    failed = [k for k, s in statements.items() if s["problems"] and not s["design"]]
    # Failures first, then statements on large tables, slowest first.
    order = sorted(statements, key=lambda k: (not statements[k]["problems"],
                                              not statements[k]["scans"],
                                              -statements[k]["max_ms"]))
    print(f"{'statement':9} {'runs':>5}  {'max ms':>8}  {'max rows':>8}  {'verdict':7}  text")
    with open(plans_log, "w", encoding="utf-8") as out:
        for key in order:
            s = statements[key]
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            verdict = ("ok" if not s["problems"] else "whole" if s["design"] else "FAIL")
            print(f"{digest:8}  {s['runs']:5}  {s['max_ms']:8.2f}  {s['read']:8}  {verdict:7}  "
                  f"{' '.join(s['text'].split())[:80]}")
            if s["problems"]:
                print(f"{'':47}{'; '.join(sorted(s['problems']))}")
                if s["design"]:
                    print(f"{'':47}by design: {s['design']}")
            out.write(f"=== {digest} {verdict} {'; '.join(sorted(s['problems']))}\n")
            if s["design"]:
                out.write(f"by design: {s['design']}\n")
            out.write(f"runs {s['runs']}, slowest {s['max_ms']:.3f} ms, "
                      f"{len(s['shapes'])} plan shape(s); large-table scans: "
                      f"{'; '.join(sorted(s['scans'])) or 'none'}\n\n{s['text'].strip()}\n\n")
            for duration, doc, problems in sorted(s["shapes"].values(), key=lambda x: -x[0]):
                out.write(f"--- slowest plan of this shape: {duration:.3f} ms"
                          f"{'; ' + '; '.join(problems) if problems else ''}\n")
                out.write(json.dumps(doc["Plan"], indent=2) + "\n\n")
    whole = sum(1 for s in statements.values() if s["problems"] and s["design"])
    print(f"\n{len(statements)} statements, {len(failed)} failing, {whole} whole by design; "
          f"large tables: {', '.join(sorted(LARGE))}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
