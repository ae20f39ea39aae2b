#!/usr/bin/env python3
"""Measure `sluice analyze` against the table of Istio's analyzer tests.

A dev tool (not run by CI). From a read-only git mirror of istio/istio it parses the `testGrid`
table of pkg/config/analysis/analyzers/analyzers_test.go: each case names its input files, an
optional mesh config file, the analyzer under test and the messages Istio expects
(`{msg.ReferencedResourceNotFound, "VirtualService default/foo"}`). For each case the input
files are written (with `git show`) to a temporary directory and `sluice analyze -A -o json DIR`
runs on it. Nothing is copied into this repository.

Only the codes sluice claims (`sluice analyze -L`) are measured, and in each case only the codes
the case's analyzer can report (the `msg.NewX` calls of the Go file that defines it): Istio's
test runs that one analyzer, sluice runs all of them. Per case the *set* of (code, resource)
pairs is compared:
  recall    = expected pairs sluice prints / expected pairs
  precision = printed pairs Istio expects / printed pairs

Resource names: Istio's test writes `Kind name` for a resource without a namespace in its YAML
and `Kind ns/name` otherwise; sluice puts resources without a namespace in `default` and prints
`Kind default/name`, so the former is read as `Kind default/name`.

Cases with a mesh config or mesh networks file are run only when sluice's analyze takes the
matching flag (`--meshConfigFile`); otherwise they are listed as not run and left out of the
totals.

Usage:
    cargo build -p sluice
    python3 scripts/conformance/analysis.py [--sluice PATH] [--only SUBSTR] [-v]

Environment: ISTIO_REPO (default /work/.mirror/istio+istio/repo), ISTIO_REF (default HEAD).
Exit status: 0 when total recall and precision are both at least 95%, 1 otherwise.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

ANALYZERS_DIR = "pkg/config/analysis/analyzers"
TEST_FILE = ANALYZERS_DIR + "/analyzers_test.go"
MESSAGES = "pkg/config/analysis/msg/messages.yaml"


def git(repo, ref, path):
    return subprocess.run(
        ["git", "-C", repo, "show", f"{ref}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def ls_tree(repo, ref, path):
    out = subprocess.run(
        ["git", "-C", repo, "ls-tree", "-r", "--name-only", ref, path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def message_codes(repo, ref):
    """messages.yaml: message name → code, and code → its template as a regex."""
    codes, templates, code = {}, {}, None
    name = None
    for line in git(repo, ref, MESSAGES).splitlines():
        m = re.match(r'\s*-\s*name:\s*"?(\w+)"?', line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"\s*code:\s*(\w+)", line)
        if m and name:
            code = codes[name] = m.group(1)
            continue
        m = re.match(r'\s*template:\s*"(.*)"\s*$', line)
        if m and code:
            text = m.group(1).replace('\\"', '"')
            parts = re.split(r"%[a-z]", text)
            templates[code] = re.compile("^" + "(.*)".join(map(re.escape, parts)) + "$", re.S)
            code = None
    return codes, templates


def analyzer_codes(repo, ref, names):
    """`pkg.Type` → (codes its Go file reports (`msg.NewX`), the kinds of reference it reports
    missing: the `reftype` of IST0101 ReferencedResourceNotFound, `host`, `gateway`…)."""
    out, reftypes, reads = {}, {}, {}
    for path in ls_tree(repo, ref, ANALYZERS_DIR):
        if not path.endswith(".go") or path.endswith("_test.go"):
            continue
        pkg = path.split("/")[-2]
        text = git(repo, ref, path)
        reported = set(re.findall(r"msg\.New(\w+)\(", text))
        types = set(re.findall(r"^type (\w+) struct", text, re.M))
        types |= set(re.findall(r"^func \(\w+ \*?(\w+)\) Analyze\(", text, re.M))
        refs = set(re.findall(r'msg\.NewReferencedResourceNotFound\(\w+,\s*"([^"]+)"', text))
        kinds = set(re.findall(r"gvk\.(\w+)", text))
        for t in types:
            out.setdefault(f"{pkg}.{t}", set()).update(reported)
            reftypes.setdefault(f"{pkg}.{t}", set()).update(refs)
            reads.setdefault(f"{pkg}.{t}", set()).update(kinds)
    # The schema validation analyzer for one collection reports what ValidationAnalyzer does.
    out["schemaValidation.CollectionValidationAnalyzer"] = out.get(
        "schema.ValidationAnalyzer", set()
    )
    codes = {k: {names[n] for n in v if n in names} for k, v in out.items()}
    return codes, reftypes, reads


def blocks(text, start):
    """The top-level `{…}` blocks of the composite literal opening at `text[start] == '{'`."""
    depth, i, cur = 0, start, None
    in_str = None
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\" and in_str == '"':
                i += 2
                continue
            if c == in_str:
                in_str = None
        elif c in "\"`":
            in_str = c
        elif c == "/" and text[i : i + 2] == "//":
            i = text.index("\n", i)
            continue
        elif c == "{":
            depth += 1
            if depth == 2:
                cur = i
        elif c == "}":
            if depth == 2:
                yield text[cur : i + 1]
            depth -= 1
            if depth == 0:
                return
        i += 1


def strip_comments(block):
    return re.sub(r"//[^\n]*", "", block)


def parse_cases(repo, ref):
    text = git(repo, ref, TEST_FILE)
    start = text.index("var testGrid = []testCase{")
    start = text.index("{", start + len("var testGrid = []testCase"))
    cases = []
    for b in blocks(text, start):
        b = strip_comments(b)
        name = re.search(r"\bname:\s*(\"[^\"]*\"|`[^`]*`)", b)
        files = re.search(r"inputFiles:\s*\[\]string\{([^}]*)\}", b)
        mesh = re.search(r"meshConfigFile:\s*\"([^\"]*)\"", b)
        networks = re.search(r"meshNetworksFile:\s*\"([^\"]*)\"", b)
        analyzer = re.search(r"analyzer:\s*&?(\w+)\.(\w+)", b)
        expected = re.findall(r"\{msg\.(\w+),\s*\"([^\"]*)\"\}", b)
        cases.append(
            {
                "name": name.group(1)[1:-1] if name else "?",
                "files": re.findall(r"\"([^\"]+)\"", files.group(1)) if files else [],
                "mesh": mesh.group(1) if mesh else None,
                "networks": networks.group(1) if networks else None,
                "analyzer": f"{analyzer.group(1)}.{analyzer.group(2)}" if analyzer else "?",
                "expected": expected,
            }
        )
    return cases


def claimed_codes(sluice):
    out = subprocess.run([sluice, "analyze", "-L"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+(IST\d{4}) \[", out, re.M))


def sluice_help(sluice):
    return subprocess.run(
        [sluice, "analyze", "--help"], capture_output=True, text=True
    ).stdout


def normalise(origin):
    """`Kind name` → `Kind default/name`; `Kind ns/name` unchanged."""
    kind, _, name = origin.partition(" ")
    if "/" not in name:
        name = "default/" + name
    return f"{kind} {name}"


IGNORED = re.compile(r"kind (\w+) (?:of \S+ )?is not used by sluice; ignored")


def ignored_kinds(messages):
    """Kinds in the case's files that sluice reads past (its IST0133 says so), named as Istio's
    gvk constants (`Pod`; a Gateway API Gateway is `KubernetesGateway`)."""
    out = set()
    for m in messages:
        for kind in IGNORED.findall(m.get("message", "")):
            out.add("KubernetesGateway" if kind == "Gateway" else kind)
    return out


REFTYPE = re.compile(r"^Referenced (.+) not found: ")


def reported_by(message, refs):
    """False for an IST0101 about a kind of reference the case's analyzer does not check
    (Istio's DestinationRuleAnalyzer reports missing subsets, not missing hosts)."""
    if message.get("code") != "IST0101":
        return True
    m = REFTYPE.match(message.get("message", ""))
    return not m or m.group(1) in refs


def run_case(repo, ref, sluice, case, extra_args):
    with tempfile.TemporaryDirectory(prefix="sluice-analysis-") as d:
        for i, f in enumerate(case["files"]):
            path = os.path.join(d, f"{i:02d}-{os.path.basename(f)}")
            with open(path, "w") as out:
                out.write(git(repo, ref, f"{ANALYZERS_DIR}/{f}"))
        args = [sluice, "analyze", "-A", "-o", "json", *extra_args, d]
        proc = subprocess.run(args, capture_output=True, text=True)
        try:
            messages = json.loads(proc.stdout or "[]")
        except json.JSONDecodeError:
            return None, proc.stderr.strip() or proc.stdout.strip()
        return messages, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sluice", default="target/debug/sluice")
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args()
    repo = os.environ.get("ISTIO_REPO", "/work/.mirror/istio+istio/repo")
    ref = os.environ.get("ISTIO_REF", "HEAD")

    names, templates = message_codes(repo, ref)
    by_analyzer, reftypes, reads = analyzer_codes(repo, ref, names)
    claimed = claimed_codes(args.sluice)
    help_text = sluice_help(args.sluice)
    if not claimed:
        sys.exit(f"{args.sluice} analyze -L lists no IST codes")

    expected_n = collections.Counter()
    found_n = collections.Counter()
    printed_n = collections.Counter()
    correct_n = collections.Counter()
    misses, false_pos, not_run, errors = [], [], [], []
    wording = []  # sluice messages whose text is not Istio's template
    # The same counts without the cases that need kinds sluice does not read.
    s_expected = s_found = s_printed = s_correct = 0
    structural_cases = []

    for case in parse_cases(repo, ref):
        if args.only and args.only not in case["name"]:
            continue
        codes = by_analyzer.get(case["analyzer"], set()) & claimed
        if not codes:
            continue
        extra = []
        if case["mesh"]:
            if "--meshConfigFile" not in help_text:
                not_run.append((case["name"], "needs --meshConfigFile"))
                continue
            extra += ["--meshConfigFile", None]
        if case["networks"]:
            not_run.append((case["name"], "needs a mesh networks file"))
            continue
        with tempfile.TemporaryDirectory(prefix="sluice-mesh-") as md:
            if case["mesh"]:
                extra[1] = os.path.join(md, "mesh.yaml")
                with open(extra[1], "w") as out:
                    out.write(git(repo, ref, f"{ANALYZERS_DIR}/{case['mesh']}"))
            messages, err = run_case(repo, ref, args.sluice, case, extra)
        if err is not None:
            errors.append((case["name"], err))
            continue
        want = {
            (names[m], normalise(o))
            for m, o in case["expected"]
            if m in names and names[m] in codes
        }
        refs = reftypes.get(case["analyzer"], set())
        for m in messages:
            t = templates.get(m.get("code"))
            if m.get("code") in claimed and t and not t.match(m.get("message", "")):
                wording.append((case["name"], m.get("code"), m.get("message", "")))
        got = {
            (m["code"], m.get("origin", ""))
            for m in messages
            if m.get("code") in codes and reported_by(m, refs)
        }
        text = {}
        for m in messages:
            if reported_by(m, refs):
                text.setdefault((m.get("code"), m.get("origin", "")), m.get("message", ""))
        ignored = ignored_kinds(messages) & reads.get(case["analyzer"], set())
        if ignored:
            structural_cases.append((case["name"], sorted(ignored)))
        else:
            s_expected += len(want)
            s_found += len(want & got)
            s_printed += len(got)
            s_correct += len(got & want)
        tag = f" (reads {', '.join(sorted(ignored))})" if ignored else ""
        for code, origin in want:
            expected_n[code] += 1
            if (code, origin) in got:
                found_n[code] += 1
            else:
                misses.append((case["name"] + tag, code, origin))
        for code, origin in got:
            printed_n[code] += 1
            if (code, origin) in want:
                correct_n[code] += 1
            else:
                false_pos.append((case["name"] + tag, code, origin, text[(code, origin)]))
        if args.verbose:
            print(f"{case['name']} [{case['analyzer']}]: want {sorted(want)} got {sorted(got)}")

    def pct(a, b):
        return f"{100.0 * a / b:5.1f}%" if b else "    -"

    print(f"{'code':8} {'expected':>8} {'found':>6} {'recall':>7} {'printed':>8} {'correct':>8} {'precision':>9}")
    for code in sorted(set(expected_n) | set(printed_n)):
        print(
            f"{code:8} {expected_n[code]:8} {found_n[code]:6} {pct(found_n[code], expected_n[code]):>7} "
            f"{printed_n[code]:8} {correct_n[code]:8} {pct(correct_n[code], printed_n[code]):>9}"
        )
    te, tf = sum(expected_n.values()), sum(found_n.values())
    tp, tc = sum(printed_n.values()), sum(correct_n.values())
    print(f"{'total':8} {te:8} {tf:6} {pct(tf, te):>7} {tp:8} {tc:8} {pct(tc, tp):>9}")
    print(
        f"{'readable':8} {s_expected:8} {s_found:6} {pct(s_found, s_expected):>7} "
        f"{s_printed:8} {s_correct:8} {pct(s_correct, s_printed):>9}"
        "   (without cases whose analyzer reads kinds sluice ignores)"
    )
    if structural_cases:
        print("\ncases whose analyzer reads kinds sluice ignores (Pods, Namespaces, …):")
        for name, kinds in structural_cases:
            print(f"  {name}: {', '.join(kinds)}")
    if misses:
        print("\nmisses (Istio reports, sluice does not):")
        for name, code, origin in sorted(misses):
            print(f"  {code} {origin}  [{name}]")
    if false_pos:
        print("\nfalse positives (sluice reports, Istio does not):")
        for name, code, origin, msg in sorted(false_pos):
            print(f"  {code} {origin}  [{name}]: {msg}")
    if wording:
        print("\nmessages not worded as Istio's template:")
        for name, code, msg in sorted(set(wording)):
            print(f"  {code} [{name}]: {msg}")
    if not_run:
        print("\nnot run:")
        for name, why in not_run:
            print(f"  {name}: {why}")
    if errors:
        print("\nsluice failed:")
        for name, err in errors:
            print(f"  {name}: {err}")
    ok = te and tf / te >= 0.95 and (not tp or tc / tp >= 0.95) and not errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
