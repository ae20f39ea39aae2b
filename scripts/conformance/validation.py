#!/usr/bin/env python3
"""Measure `sluice validate` against Istio's own validation corpus.

A dev tool (not run by CI). It reads, from a read-only git mirror of istio/istio, every
pkg/config/validation/testdata/crds/*-valid.yaml and *-invalid.yaml with `git show`, splits
each file into YAML documents, writes each document to a temporary directory and runs
`sluice validate FILE` on it. A document from a *-valid.yaml file must be accepted (exit 0);
one from a *-invalid.yaml file must be refused (exit non-zero).

Nothing is copied into this repository: the corpus is read from the mirror at run time.

The corpus annotates invalid documents with a top-level `_err:` key (the error Istio expects);
that key is a harness annotation, not part of the resource, so it is removed before sluice sees
the document and shown in the failure list instead.

Kinds sluice does not (yet) support as resources are measured in a separate section.

Usage:
    cargo build -p sluice
    python3 scripts/conformance/validation.py [--sluice PATH] [--only SUBSTR] [-q]

Environment: ISTIO_REPO (default /work/.mirror/istio+istio/repo), ISTIO_REF (default HEAD).
Exit status: 0 when every supported-kind document is classified as Istio classifies it, 1 otherwise.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

CORPUS_DIR = "pkg/config/validation/testdata/crds"

# Kinds that sluice does not decode as typed resources at the time of writing; another
# engineer adds them. Their documents are reported in their own section.
UNSUPPORTED_KINDS = {
    "RequestAuthentication",
    "Telemetry",
    "WorkloadGroup",
    "ProxyConfig",
    "EnvoyFilter",
    "WasmPlugin",
}

SEPARATOR = re.compile(r"^---\s*(#.*)?$")
KIND = re.compile(r"^kind:\s*['\"]?([A-Za-z0-9]+)")
NAME = re.compile(r"^\s+name:\s*['\"]?([^'\"\s]+)")
ERR = re.compile(r"^_err:\s*(.*)$")


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", repo, *args], check=True, capture_output=True, text=True
    ).stdout


def corpus_files(repo, ref):
    names = git(repo, "ls-tree", "-r", "--name-only", ref, CORPUS_DIR).split()
    return sorted(
        n for n in names if n.endswith("-valid.yaml") or n.endswith("-invalid.yaml")
    )


def split_documents(text):
    """YAML documents of `text` with their first line number (1-based), blank ones dropped."""
    docs, cur, start = [], [], 1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if SEPARATOR.match(line):
            docs.append((start, cur))
            cur, start = [], lineno + 1
        else:
            cur.append(line)
    docs.append((start, cur))
    out = []
    for start, lines in docs:
        meaningful = [
            l for l in lines if l.strip() and not l.lstrip().startswith("#")
        ]
        if meaningful:
            out.append((start, lines))
    return out


def strip_annotation(lines):
    """(lines without the top-level `_err:` key, the expected error or None)."""
    kept, expected, skipping = [], None, False
    for line in lines:
        m = ERR.match(line)
        if m:
            expected = m.group(1).strip().strip("'\"")
            skipping = True
            continue
        if skipping and (line.startswith(" ") or line.startswith("\t")):
            # A continuation of a multi-line `_err` value.
            expected = (expected + " " + line.strip()).strip()
            continue
        skipping = False
        kept.append(line)
    return kept, expected


def describe(lines):
    kind, name = "?", "?"
    in_meta = False
    for line in lines:
        m = KIND.match(line)
        if m:
            kind = m.group(1)
        if line.startswith("metadata:"):
            in_meta = True
            continue
        if in_meta:
            if line and not line[0].isspace():
                in_meta = False
            else:
                m = NAME.match(line)
                if m and name == "?":
                    name = m.group(1)
    return kind, name


def spec_excerpt(lines, count):
    """The first `count` lines from `spec:` on (or of the document when it has none)."""
    for i, line in enumerate(lines):
        if line.startswith("spec:"):
            return lines[i : i + count]
    return lines[:count]


def run_sluice(sluice, path):
    try:
        proc = subprocess.run(
            [sluice, "validate", path], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return 124, "(timed out after 60s)"
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode, output


def pct(n, d):
    return "  n/a" if d == 0 else f"{100.0 * n / d:5.1f}%"


class Tally:
    def __init__(self):
        self.valid = self.valid_ok = self.invalid = self.invalid_ok = 0

    def add(self, other):
        self.valid += other.valid
        self.valid_ok += other.valid_ok
        self.invalid += other.invalid
        self.invalid_ok += other.invalid_ok

    def line(self):
        return (
            f"accepted-valid {self.valid_ok}/{self.valid} {pct(self.valid_ok, self.valid)}   "
            f"rejected-invalid {self.invalid_ok}/{self.invalid} {pct(self.invalid_ok, self.invalid)}"
        )

    def perfect(self):
        return self.valid_ok == self.valid and self.invalid_ok == self.invalid


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--repo",
        default=os.environ.get("ISTIO_REPO", "/work/.mirror/istio+istio/repo"),
        help="git directory of istio/istio (env ISTIO_REPO)",
    )
    ap.add_argument("--ref", default=os.environ.get("ISTIO_REF", "HEAD"))
    ap.add_argument(
        "--sluice",
        default=None,
        help="the sluice binary (default: target/debug/sluice of this workspace)",
    )
    ap.add_argument("--only", default="", help="only corpus files whose name contains this")
    ap.add_argument("--lines", type=int, default=8, help="spec lines shown per failure")
    ap.add_argument("-q", "--quiet", action="store_true", help="numbers only, no failure list")
    args = ap.parse_args()

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    sluice = args.sluice or os.path.join(root, "target", "debug", "sluice")
    if not os.access(sluice, os.X_OK):
        sys.exit(f"no sluice binary at {sluice}: run `cargo build -p sluice` first")

    files = [f for f in corpus_files(args.repo, args.ref) if args.only in f]
    if not files:
        sys.exit(f"no corpus files under {CORPUS_DIR} in {args.repo} at {args.ref}")

    # section -> file -> Tally; failures per section
    sections = {"supported": {}, "unsupported": {}}
    failures = {"supported": [], "unsupported": []}

    with tempfile.TemporaryDirectory(prefix="sluice-conformance-") as tmp:
        for path in files:
            base = os.path.basename(path)
            want_valid = base.endswith("-valid.yaml")
            text = git(args.repo, "show", f"{args.ref}:{path}")
            for index, (start, lines) in enumerate(split_documents(text)):
                body, expected = strip_annotation(lines)
                kind, name = describe(body)
                section = "unsupported" if kind in UNSUPPORTED_KINDS else "supported"
                tally = sections[section].setdefault(base, Tally())
                doc_path = os.path.join(tmp, f"{base[:-5]}-{index}.yaml")
                with open(doc_path, "w") as fh:
                    fh.write("\n".join(body) + "\n")
                code, output = run_sluice(sluice, doc_path)
                accepted = code == 0
                if want_valid:
                    tally.valid += 1
                    ok = accepted
                    tally.valid_ok += ok
                else:
                    tally.invalid += 1
                    ok = not accepted
                    tally.invalid_ok += ok
                if not ok:
                    failures[section].append(
                        (base, index, start, kind, name, want_valid, expected, body, code, output)
                    )

    all_ok = True
    for section, title in (
        ("supported", "Kinds sluice supports"),
        ("unsupported", "Kinds sluice does not support as resources yet "
         + "(" + ", ".join(sorted(UNSUPPORTED_KINDS)) + ")"),
    ):
        per_file = sections[section]
        print(f"== {title}")
        if not per_file:
            print("   (no documents)\n")
            continue
        total = Tally()
        for base in sorted(per_file):
            print(f"   {base:36} {per_file[base].line()}")
            total.add(per_file[base])
        print(f"   {'TOTAL':36} {total.line()}")
        if section == "supported" and not total.perfect():
            all_ok = False
        if not args.quiet and failures[section]:
            print(f"\n   Failures ({len(failures[section])}):")
            for (base, index, start, kind, name, want_valid, expected, body, code, output) in failures[section]:
                verdict = "valid but REFUSED" if want_valid else "invalid but ACCEPTED"
                print(f"\n   -- {base} doc #{index} (line {start}) {kind} {name}: {verdict} (exit {code})")
                if expected:
                    print(f"      Istio expects: {expected}")
                for line in spec_excerpt(body, args.lines):
                    print(f"      | {line}")
                if output:
                    shown = output.splitlines()
                    for line in shown[:10]:
                        print(f"      > {line}")
                    if len(shown) > 10:
                        print(f"      > … {len(shown) - 10} more lines")
        print()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
