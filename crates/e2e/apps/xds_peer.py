#!/usr/bin/env python3
"""An xDS peer nobody in this project wrote the wire code of: Envoy's Aggregated Discovery Service
(state of the world) carrying Istio config as istiod serves it, with grpcio and protobuf only.

    DiscoveryResponse.type_url   the collection as requested, e.g. networking.istio.io/v1/ServiceEntry
    resources[i]                 Any(type.googleapis.com/istio.mcp.v1alpha1.Resource)
      .metadata.name             "namespace/name" (labels, annotations, version alongside)
      .body                      Any(type.googleapis.com/istio.networking.v1alpha3.ServiceEntry)

except MeshConfig (core/v1alpha1/MeshConfig), whose resources are the bare
Any(type.googleapis.com/istio.mesh.v1alpha1.MeshConfig): no MCP envelope, no name.

Collections (as current istiod serves them; the older versions are aliases, answered with the
same resources):

    networking.istio.io/v1/{ServiceEntry,VirtualService,DestinationRule,Gateway,Sidecar,
        WorkloadEntry}        body istio.networking.v1alpha3.<Kind>; aliases v1alpha3, v1beta1
    security.istio.io/v1/{PeerAuthentication,AuthorizationPolicy,RequestAuthentication}
                              body istio.security.v1beta1.<Kind>; alias v1beta1
    core/v1alpha1/MeshConfig  bare istio.mesh.v1alpha1.MeshConfig; alias
                              mesh.istio.io/v1alpha1/MeshConfig

Any other type URL is carried in the MCP envelope with whatever body the server's config names
("body_type", e.g. google.protobuf.Struct), and the client accepts any message it can decode.

Two modes; every line on stdout is one JSON object, flushed as it is written.

  client --server HOST:PORT --type T [--type T2 ...] [--node-id ID] [--node-metadata JSON]
         [--nack-type T --nack-message MSG] [--responses N] [--timeout S] [--with-defaults]
      One ADS stream: a DiscoveryRequest per type (the node on the first only). Each
      DiscoveryResponse is printed decoded, {"type_url","version_info","nonce","resources":[{"mcp",
      "name","labels","annotations","version","body_type_url","spec"}]} ("mcp" is false for a
      bare MeshConfig, whose name, labels, annotations and version are then empty; spec is proto3
      JSON, camelCase, fields at their default left out unless --with-defaults), then ACKed
      (version_info = its version, response_nonce = its nonce), or NACKed when its type is
      --nack-type (version_info = the last version ACKed for that type, error_detail =
      google.rpc.Status{code: 13 INTERNAL, message}), as Envoy does; the request sent is printed
      as {"sent": "ack"|"nack", ...}. Exits 0 after N responses, 1 on a timeout, 2 on a wire
      error (a resource in the wrong envelope, a body type no proto defines or not the
      collection's, bytes that do not decode, fields the protos do not define; the stream is hung
      up, nothing is ACKed), 3 when the stream fails.

  server --port P --config FILE [--address A]
      An ADS server for every stream. FILE is {"version": "1", "<collection>": [{"name": "ns/n",
      "labels": {...}, "annotations": {...}, "version": "...", "spec": {...proto3 JSON...}}], ...}
      (a collection by its type URL or an alias; a MeshConfig entry has only "spec"). On an
      entry, "body_type": "istio.networking.v1alpha3.Gateway" serves that message instead of the
      collection's, and "mcp": true|false puts it in the MCP envelope or not against the
      collection's rule (both to test a reader's refusal). A request for a type not yet sent on
      its stream, or one without a response_nonce, is answered with the current resources (none
      for a collection FILE lacks), under the type URL it asked for; an ACK or NACK is not. On
      SIGHUP, or when FILE changes (checked every 100 ms), FILE is read again and every
      subscribed type is pushed to every stream.
      Events: {"event":"config",...} per load, {"event":"listening","port":P} once bound,
      {"event":"request",...} per request received, {"event":"response",...} per response sent,
      {"event":"config_error","message":...} when a reload fails (the last good config stays).

Where the protos come from: Envoy's (ADS, DiscoveryRequest/Response, Node, google.rpc.Status) are
the PyPI package xds-protos, Python code the gRPC team generates from envoyproxy/data-plane-api.
Istio's messages are compiled at start with grpc_tools.protoc from every .proto under
crates/xds/proto (sluice's own schema, wire-compatible with istio/api; $SLUICE_XDS_PEER_ISTIO_PROTO
or --istio-proto use another folder) into a descriptor set cached by content
($SLUICE_XDS_PEER_CACHE, default /tmp/sluice-xds-peer-UID), and added to protobuf's default pool
after checking that they redefine no file or symbol already there. Exit 4: a missing prerequisite
(grpcio, grpcio-tools, protobuf, xds-protos, the Istio protos) or a conflict.
"""

import argparse
import hashlib
import importlib
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
ISTIO_PROTO = os.path.join(REPO, "crates", "xds", "proto")
INSTALL = "scripts/install-test-deps.sh"

MCP_RESOURCE = "istio.mcp.v1alpha1.Resource"
TYPE_PREFIX = "type.googleapis.com/"

# google.rpc.Code INTERNAL: what Envoy puts in a NACK's error_detail.
NACK_CODE = 13


class Collection:
    """A collection istiod serves: its main type URL, the message of its resources, the type
    URLs it is also asked for by, and whether each resource travels in an MCP Resource."""

    def __init__(self, type_url, body, aliases, mcp=True):
        self.type_url = type_url
        self.body = body
        self.aliases = aliases
        self.mcp = mcp


def _networking(kind):
    return Collection(
        "networking.istio.io/v1/" + kind,
        "istio.networking.v1alpha3." + kind,
        ["networking.istio.io/v1alpha3/" + kind, "networking.istio.io/v1beta1/" + kind],
    )


def _security(kind):
    return Collection(
        "security.istio.io/v1/" + kind,
        "istio.security.v1beta1." + kind,
        ["security.istio.io/v1beta1/" + kind],
    )


# Since Istio 1.24 the main version of every networking and security kind is v1 (the body
# messages keep their proto packages); MeshConfig's GroupVersionKind has the empty group, written
# "core", and istiod sends it as the bare message.
COLLECTIONS = [
    _networking("ServiceEntry"),
    _networking("VirtualService"),
    _networking("DestinationRule"),
    _networking("Gateway"),
    _networking("Sidecar"),
    _networking("WorkloadEntry"),
    _security("PeerAuthentication"),
    _security("AuthorizationPolicy"),
    _security("RequestAuthentication"),
    Collection(
        "core/v1alpha1/MeshConfig",
        "istio.mesh.v1alpha1.MeshConfig",
        ["mesh.istio.io/v1alpha1/MeshConfig"],
        mcp=False,
    ),
]


def collection(type_url):
    """The collection served under a type URL (its main one or an alias), or None."""
    for c in COLLECTIONS:
        if type_url == c.type_url or type_url in c.aliases:
            return c
    return None


def main_type_url(type_url):
    """The type URL a collection is kept under: its main one when known, else as given."""
    c = collection(type_url)
    return c.type_url if c else type_url


class WireError(Exception):
    """The peer sent something that does not decode as the protocol says."""


EMIT_LOCK = threading.Lock()


def emit(obj):
    """One JSON line on stdout, whole and flushed, whichever thread writes it."""
    line = json.dumps(obj) + "\n"
    with EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def fail(msg, code=2):
    emit({"error": msg})
    sys.stderr.write("xds_peer: %s\n" % msg)
    sys.stderr.flush()
    sys.exit(code)


# --- protos ---------------------------------------------------------------------------------------


def import_prerequisites():
    """grpcio, grpcio-tools, protobuf and Envoy's ADS from xds-protos, or exit 4 naming them."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
        import grpc_tools  # noqa: F401
        from grpc_tools import protoc  # noqa: F401

        importlib.import_module("envoy.service.discovery.v3.ads_pb2_grpc")
    except ImportError as e:
        fail(
            "this Python (%s) lacks grpcio, grpcio-tools, protobuf or xds-protos (%s): run %s "
            "(it installs scripts/requirements-test.txt into the venv)"
            % (sys.executable, e, INSTALL),
            code=4,
        )


def istio_proto_files(root):
    """Every .proto under `root`, by its path relative to it (the name the files import each
    other by), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in filenames:
            if n.endswith(".proto"):
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def compile_istio(istio_dir, cache_root):
    """Compiles every Istio proto under `istio_dir` into a FileDescriptorSet (without the
    google/protobuf/ files they import, which the protobuf runtime has), cached under a name
    keyed by the protos' content and the grpc_tools version; returns its path. Written under a
    temporary name and renamed, so peers starting at once never read half a file."""
    import grpc_tools
    from grpc_tools import protoc

    if not os.path.isdir(istio_dir):
        fail(
            "Istio's protos are not at %s (sluice's schema is crates/xds/proto); set "
            "SLUICE_XDS_PEER_ISTIO_PROTO or --istio-proto to use another folder" % istio_dir,
            code=4,
        )
    files = istio_proto_files(istio_dir)
    if not files:
        fail("no .proto file under %s" % istio_dir, code=4)
    digest = hashlib.sha256()
    digest.update(
        (
            "grpcio-tools %s protobuf %s\n"
            % (metadata.version("grpcio-tools"), metadata.version("protobuf"))
        ).encode()
    )
    try:
        for name in files:
            digest.update(name.encode() + b"\0")
            with open(os.path.join(istio_dir, name), "rb") as f:
                digest.update(f.read() + b"\0")
    except OSError as e:
        fail("cannot read the Istio protos: %s" % e, code=4)
    out = os.path.join(cache_root, "istio-%s.binpb" % digest.hexdigest()[:16])
    if os.path.isfile(out):
        return out
    os.makedirs(cache_root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".binpb", dir=cache_root)
    os.close(fd)
    # Only the Istio folder and grpc_tools' own google/protobuf/: an import of anything else
    # (google/rpc, google/api, validate, ...) fails here rather than coming from elsewhere.
    builtin = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["grpc_tools.protoc", "-I" + istio_dir, "-I" + builtin, "--descriptor_set_out=" + tmp]
    args += files
    rc = protoc.main(args)
    if rc != 0:
        os.unlink(tmp)
        fail("grpc_tools.protoc failed (exit %d) on %s" % (rc, " ".join(args[1:])), code=4)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return out


def top_level_symbols(fdp):
    """The full names a FileDescriptorProto defines at its top level (nested ones live under
    them)."""
    prefix = fdp.package + "." if fdp.package else ""
    names = [m.name for m in fdp.message_type] + [e.name for e in fdp.enum_type]
    names += [s.name for s in fdp.service] + [x.name for x in fdp.extension]
    return [prefix + n for n in names]


def add_istio_files(pool, fds, istio_dir):
    """Adds the compiled Istio files to `pool` (which already holds Envoy's, from xds-protos),
    dependencies first. A file name or a symbol that is already in the pool is a conflict
    (exit 4), not something to overwrite; an import that is neither an Istio file nor in the
    pool is loaded from the protobuf runtime (google/protobuf/*)."""
    ours = {f.name: f for f in fds.file}
    for f in fds.file:
        try:
            pool.FindFileByName(f.name)
            fail(
                "%s/%s: a file of that name is already in the descriptor pool (from xds-protos "
                "or protobuf): rename it" % (istio_dir, f.name),
                code=4,
            )
        except KeyError:
            pass
        for sym in top_level_symbols(f):
            try:
                other = pool.FindFileContainingSymbol(sym)
            except KeyError:
                continue
            fail(
                "%s/%s defines %s, which %s (from xds-protos or protobuf) already defines"
                % (istio_dir, f.name, sym, other.name),
                code=4,
            )
        for dep in f.dependency:
            if dep in ours:
                continue
            try:
                pool.FindFileByName(dep)
                continue
            except KeyError:
                pass
            try:
                importlib.import_module(dep[: -len(".proto")].replace("/", ".") + "_pb2")
                pool.FindFileByName(dep)
            except (ImportError, KeyError):
                fail(
                    "%s/%s imports %s, which is neither under %s nor in the protobuf runtime"
                    % (istio_dir, f.name, dep, istio_dir),
                    code=4,
                )
    added = set()

    def add(name):
        if name in added:
            return
        added.add(name)
        for dep in ours[name].dependency:
            if dep in ours:
                add(dep)
        pool.AddSerializedFile(ours[name].SerializeToString())

    for name in sorted(ours):
        add(name)
    return sorted(ours)


class Protos:
    """Envoy's modules from xds-protos, Istio's messages in the default descriptor pool, and
    message classes looked up by full name."""

    def __init__(self, args):
        import_prerequisites()
        from google.protobuf import (
            any_pb2,
            descriptor_pb2,
            descriptor_pool,
            json_format,
            message_factory,
            unknown_fields,
        )

        cache_root = (
            args.cache_dir
            or os.environ.get("SLUICE_XDS_PEER_CACHE")
            or os.path.join(tempfile.gettempdir(), "sluice-xds-peer-%d" % os.getuid())
        )
        # Envoy's first: everything they register is in the pool before Istio's files are
        # checked against it.
        self.ads_grpc = importlib.import_module("envoy.service.discovery.v3.ads_pb2_grpc")
        self.discovery = importlib.import_module("envoy.service.discovery.v3.discovery_pb2")
        self.base = importlib.import_module("envoy.config.core.v3.base_pb2")
        self.status = importlib.import_module("google.rpc.status_pb2")
        self.any_pb2 = any_pb2
        self.pool = descriptor_pool.Default()
        path = compile_istio(args.istio_proto, cache_root)
        with open(path, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        self.istio_files = add_istio_files(self.pool, fds, args.istio_proto)
        self.message_factory = message_factory
        self.json_format = json_format
        self.unknown_fields = unknown_fields
        missing = [
            name
            for name in [MCP_RESOURCE] + [c.body for c in COLLECTIONS]
            if self.message_class(name) is None
        ]
        if missing:
            fail(
                "the protos under %s do not define %s" % (args.istio_proto, ", ".join(missing)),
                code=4,
            )
        self.Resource = self.message_class(MCP_RESOURCE)

    def message_class(self, full_name):
        """The class of a message, or None when the pool has no such message."""
        try:
            desc = self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None
        return self.message_factory.GetMessageClass(desc)

    def to_dict(self, msg, with_defaults=False):
        """Proto3 JSON (camelCase). Fields at their default (0, "", an enum's first value, an
        empty list) are left out, as proto3 JSON does, unless with_defaults."""
        return self.json_format.MessageToDict(
            msg, always_print_fields_with_no_presence=with_defaults
        )

    def unknown(self, msg, path):
        """Where `msg` holds fields its proto does not define: ["path field N", ...]. A decoder
        in Go or Rust keeps or drops these silently; here they are a wire error, as they mean
        the sender's schema is not this one."""
        found = [
            "%s field %d" % (path, f.field_number) for f in self.unknown_fields.UnknownFieldSet(msg)
        ]
        for fd, value in msg.ListFields():
            if fd.message_type is None:
                continue
            sub = "%s.%s" % (path, fd.name)
            if fd.message_type.GetOptions().map_entry:
                if fd.message_type.fields_by_name["value"].message_type is not None:
                    for k in value:
                        found += self.unknown(value[k], "%s[%r]" % (sub, k))
            elif fd.is_repeated:
                for i, item in enumerate(value):
                    found += self.unknown(item, "%s[%d]" % (sub, i))
            else:
                found += self.unknown(value, sub)
        return found

    # --- resources ---

    def decode_body(self, type_url, name, body_url, value, with_defaults):
        """An Any's type URL and bytes → the message as proto3 JSON; WireError when it is not
        the collection's message or does not decode exactly."""
        if not body_url.startswith(TYPE_PREFIX):
            raise WireError(
                "%s: resource %r: body type_url %r does not start with %r"
                % (type_url, name, body_url, TYPE_PREFIX)
            )
        body_name = body_url[len(TYPE_PREFIX) :]
        c = collection(type_url)
        if c is not None and c.body != body_name:
            raise WireError(
                "%s: resource %r: body is %s, but this collection holds %s"
                % (type_url, name, body_name, c.body)
            )
        cls = self.message_class(body_name)
        if cls is None:
            raise WireError(
                "%s: resource %r: unknown body type %r (no proto here defines %s)"
                % (type_url, name, body_url, body_name)
            )
        body = cls()
        try:
            body.ParseFromString(value)
        except Exception as e:  # noqa: BLE001 (DecodeError and friends)
            raise WireError("%s: resource %r: undecodable %s: %s" % (type_url, name, body_name, e))
        stray = self.unknown(body, body_name.rsplit(".", 1)[-1])
        if stray:
            raise WireError(
                "%s: resource %r: fields the proto of %s does not define: %s"
                % (type_url, name, body_name, ", ".join(stray))
            )
        return self.to_dict(body, with_defaults)

    def decode_resource(self, type_url, any_msg, with_defaults=False):
        """One entry of DiscoveryResponse.resources → the printed form; WireError when it is not
        what istiod sends for the collection: an MCP Resource whose body is the collection's
        message, or for MeshConfig the bare message."""
        c = collection(type_url)
        envelope = TYPE_PREFIX + MCP_RESOURCE
        if c is not None and not c.mcp:
            want = TYPE_PREFIX + c.body
            if any_msg.type_url != want:
                how = (
                    " (istiod sends it bare, not in an MCP Resource)"
                    if any_msg.type_url == envelope
                    else ""
                )
                raise WireError(
                    "%s: a resource's type_url is %r, expected %r%s"
                    % (type_url, any_msg.type_url, want, how)
                )
            spec = self.decode_body(type_url, "", want, any_msg.value, with_defaults)
            return {
                "mcp": False,
                "name": "",
                "labels": {},
                "annotations": {},
                "version": "",
                "body_type_url": want,
                "spec": spec,
            }
        if any_msg.type_url != envelope:
            raise WireError(
                "%s: a resource's type_url is %r, expected %r"
                % (type_url, any_msg.type_url, envelope)
            )
        res = self.Resource()
        try:
            res.ParseFromString(any_msg.value)
        except Exception as e:  # noqa: BLE001
            raise WireError("%s: undecodable %s: %s" % (type_url, MCP_RESOURCE, e))
        if not res.HasField("metadata"):
            raise WireError("%s: a resource has no metadata (so no name)" % type_url)
        name = res.metadata.name
        stray = self.unknown(res, "Resource")
        if stray:
            raise WireError(
                "%s: resource %r: unknown fields: %s" % (type_url, name, ", ".join(stray))
            )
        if not res.HasField("body"):
            raise WireError("%s: resource %r has no body" % (type_url, name))
        spec = self.decode_body(type_url, name, res.body.type_url, res.body.value, with_defaults)
        return {
            "mcp": True,
            "name": name,
            "labels": dict(res.metadata.labels),
            "annotations": dict(res.metadata.annotations),
            "version": res.metadata.version,
            "body_type_url": res.body.type_url,
            "spec": spec,
        }

    def encode_resource(self, type_url, entry):
        """One config-file entry → the Any istiod would send for it in collection `type_url`:
        Any(istio.mcp.v1alpha1.Resource), or for MeshConfig the bare message. ValueError when it
        cannot be. "body_type" (a message's full name) overrides the collection's message and
        "mcp" (true/false) its envelope, so a test can serve what a reader must refuse."""
        c = collection(type_url)
        if not isinstance(entry, dict):
            raise ValueError("%s: each entry must be a JSON object" % type_url)
        mcp = entry.get("mcp", c.mcp if c else True)
        if not isinstance(mcp, bool):
            raise ValueError('%s: "mcp" must be true or false' % type_url)
        label = "%s %s" % (type_url, entry.get("name", "(unnamed)"))
        if mcp:
            if not isinstance(entry.get("name"), str):
                raise ValueError('%s: each entry needs a "name": "namespace/name"' % type_url)
            allowed = {"name", "labels", "annotations", "version", "spec", "body_type", "mcp"}
        else:
            allowed = {"spec", "body_type", "mcp"}
        unknown = set(entry) - allowed
        if unknown:
            why = "" if mcp else " (sent bare, without the MCP envelope that would carry them)"
            raise ValueError("%s: unknown keys %s%s" % (label, sorted(unknown), why))
        body_name = entry.get("body_type") or (c.body if c else None)
        if body_name is None:
            raise ValueError(
                '%s: not a collection this peer knows the message of (give "body_type")'
                % type_url
            )
        cls = self.message_class(body_name)
        if cls is None:
            raise ValueError("%s: no proto here defines %s" % (label, body_name))
        body = cls()
        try:
            self.json_format.ParseDict(entry.get("spec") or {}, body)
        except self.json_format.ParseError as e:
            raise ValueError("%s: spec: %s" % (label, e))
        out = self.any_pb2.Any()
        if not mcp:
            out.Pack(body)  # type.googleapis.com/<full name>
            return out
        res = self.Resource()
        res.metadata.name = entry["name"]
        res.metadata.version = str(entry.get("version", ""))
        for k, v in (entry.get("labels") or {}).items():
            res.metadata.labels[k] = v
        for k, v in (entry.get("annotations") or {}).items():
            res.metadata.annotations[k] = v
        res.body.Pack(body)
        out.Pack(res)
        return out


# --- client ---------------------------------------------------------------------------------------


def run_client(args, protos):
    import grpc

    d = protos.discovery
    requests = queue.Queue()
    done = object()
    drained = threading.Event()

    def request_stream():
        # grpc asks for the next request only once the previous one is written, so reaching
        # `done` means every ACK/NACK is on the wire.
        while True:
            item = requests.get()
            if item is done:
                drained.set()
                return
            yield item

    node = protos.base.Node(id=args.node_id)
    if args.node_metadata:
        try:
            protos.json_format.ParseDict(json.loads(args.node_metadata), node.metadata)
        except (ValueError, protos.json_format.ParseError) as e:
            fail("--node-metadata: %s" % e, code=64)
    for i, t in enumerate(args.type):
        req = d.DiscoveryRequest(type_url=t)
        if i == 0:
            req.node.CopyFrom(node)
        requests.put(req)

    # Never through a proxy that the environment happens to name.
    channel = grpc.insecure_channel(args.server, options=[("grpc.enable_http_proxy", 0)])
    stub = protos.ads_grpc.AggregatedDiscoveryServiceStub(channel)
    # wait_for_ready: a server that is still starting is retried until the timeout, not failed.
    call = stub.StreamAggregatedResources(request_stream(), wait_for_ready=True)
    responses = queue.Queue()

    def read():
        try:
            for r in call:
                responses.put(r)
            responses.put(("end", None))
        except grpc.RpcError as e:
            responses.put(("rpc_error", e))

    threading.Thread(target=read, daemon=True).start()

    acked = {}  # type → the last version ACKed
    deadline = time.monotonic() + args.timeout
    received = 0
    while received < args.responses:
        left = deadline - time.monotonic()
        try:
            r = responses.get(timeout=max(left, 0))
        except queue.Empty:
            call.cancel()
            hint = " (is an xDS server listening at %s?)" % args.server if received == 0 else ""
            fail(
                "timed out after %ss with %d of %d responses%s"
                % (args.timeout, received, args.responses, hint),
                code=1,
            )
        if isinstance(r, tuple):
            kind, err = r
            if kind == "end":
                fail(
                    "the server ended the stream after %d of %d responses"
                    % (received, args.responses),
                    code=3,
                )
            fail(
                "the stream failed after %d of %d responses: %s: %s"
                % (received, args.responses, err.code(), err.details()),
                code=3,
            )
        received += 1
        stray = protos.unknown(r, "DiscoveryResponse")
        if stray:
            call.cancel()
            fail("%s: unknown fields in the DiscoveryResponse: %s" % (r.type_url, ", ".join(stray)))
        if r.type_url not in args.type:
            call.cancel()
            fail("a response for type %r, which this stream did not subscribe to" % r.type_url)
        try:
            resources = [
                protos.decode_resource(r.type_url, a, args.with_defaults) for a in r.resources
            ]
        except WireError as e:
            call.cancel()
            fail(str(e))
        emit(
            {
                "type_url": r.type_url,
                "version_info": r.version_info,
                "nonce": r.nonce,
                "resources": resources,
            }
        )
        req = d.DiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce)
        if r.type_url == args.nack_type:
            req.version_info = acked.get(r.type_url, "")
            req.error_detail.code = NACK_CODE
            req.error_detail.message = args.nack_message
            sent = "nack"
        else:
            req.version_info = r.version_info
            acked[r.type_url] = r.version_info
            sent = "ack"
        requests.put(req)
        emit(
            {
                "sent": sent,
                "type_url": req.type_url,
                "version_info": req.version_info,
                "response_nonce": req.response_nonce,
                "error_detail": (
                    protos.to_dict(req.error_detail) if req.HasField("error_detail") else None
                ),
            }
        )
    # Half-close once the last ACK/NACK is written, give the server a moment to end the stream,
    # then hang up.
    requests.put(done)
    drained.wait(5.0)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            r = responses.get(timeout=max(end - time.monotonic(), 0))
        except queue.Empty:
            break
        if isinstance(r, tuple):
            break
    call.cancel()
    channel.close()
    return 0


# --- server ---------------------------------------------------------------------------------------


class Config:
    def __init__(self, version, resources, collections):
        self.version = version
        self.resources = resources  # main type URL → [Any]
        self.collections = collections


def load_config(path, protos):
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError("the config file must be a JSON object")
    if "version" not in raw:
        raise ValueError('the config file needs a "version"')
    resources = {}
    given = {}  # main type URL → the key FILE named it by
    for key, entries in raw.items():
        if key == "version":
            continue
        if not isinstance(entries, list):
            raise ValueError("%s: expected a list of resources" % key)
        main = main_type_url(key)
        if main in given:
            raise ValueError(
                "%s and %s are the same collection (%s): give it once" % (given[main], key, main)
            )
        given[main] = key
        resources[main] = [protos.encode_resource(main, e) for e in entries]
    return Config(str(raw["version"]), resources, sorted(resources))


class Stream:
    """One ADS stream: what it subscribed to and what it was sent; responses leave through a
    queue that the gRPC handler drains."""

    _ids = iter(range(1, 1 << 62))

    def __init__(self):
        self.id = next(Stream._ids)
        self.out = queue.Queue()
        self.lock = threading.Lock()
        self.node_id = None
        self.subscribed = []  # types, in the order first requested
        self.sent = {}  # type → the nonce of the last response


class Server:
    def __init__(self, protos, config):
        self.protos = protos
        self.config = config
        self.lock = threading.Lock()
        self.streams = set()

    def response(self, stream, type_url, config):
        """The current resources of `type_url`'s collection (an alias is answered with what its
        main type URL holds), under the type URL the stream asked for."""
        d = self.protos.discovery
        nonce = str(uuid.uuid4())
        main = main_type_url(type_url)
        r = d.DiscoveryResponse(
            type_url=type_url,
            version_info=config.version,
            nonce=nonce,
            resources=config.resources.get(main, []),
        )
        stream.sent[type_url] = nonce
        emit(
            {
                "event": "response",
                "stream": stream.id,
                "type_url": type_url,
                "collection": main,
                "version_info": config.version,
                "nonce": nonce,
                "resources": len(r.resources),
            }
        )
        stream.out.put(r)

    def on_request(self, stream, req):
        with stream.lock:
            if req.HasField("node") and stream.node_id is None:
                stream.node_id = req.node.id
            emit(
                {
                    "event": "request",
                    "stream": stream.id,
                    "node_id": stream.node_id,
                    "has_node": req.HasField("node"),
                    "type_url": req.type_url,
                    "collection": main_type_url(req.type_url),
                    "version_info": req.version_info,
                    "response_nonce": req.response_nonce,
                    "resource_names": list(req.resource_names),
                    "unknown_fields": self.protos.unknown(req, "DiscoveryRequest"),
                    "error_detail": (
                        req.error_detail.message if req.HasField("error_detail") else None
                    ),
                }
            )
            if req.type_url not in stream.subscribed:
                stream.subscribed.append(req.type_url)
            # A type not yet sent, or a request without a nonce (a new subscription), is answered;
            # an ACK or NACK of something sent is not.
            if req.type_url not in stream.sent or not req.response_nonce:
                with self.lock:
                    config = self.config
                self.response(stream, req.type_url, config)

    def push_all(self, config):
        with self.lock:
            self.config = config
            streams = list(self.streams)
        for s in streams:
            with s.lock:
                for t in s.subscribed:
                    self.response(s, t, config)

    def servicer(self):
        server = self
        base = self.protos.ads_grpc.AggregatedDiscoveryServiceServicer

        class Ads(base):
            def StreamAggregatedResources(self, request_iterator, context):
                stream = Stream()
                end = object()
                with server.lock:
                    server.streams.add(stream)

                def read():
                    try:
                        for req in request_iterator:
                            server.on_request(stream, req)
                    except Exception as e:  # noqa: BLE001 (the client went away)
                        if context.is_active():
                            emit({"event": "stream_error", "stream": stream.id, "message": str(e)})
                    finally:
                        stream.out.put(end)

                context.add_callback(lambda: stream.out.put(end))
                threading.Thread(target=read, daemon=True).start()
                try:
                    while True:
                        item = stream.out.get()
                        if item is end:
                            return
                        yield item
                finally:
                    with server.lock:
                        server.streams.discard(stream)
                    emit({"event": "stream_closed", "stream": stream.id})

        return Ads()


def file_stamp(path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_ino, st.st_size)
    except OSError:
        return None


def run_server(args, protos):
    import grpc

    generation = 0

    def loaded(config):
        nonlocal generation
        generation += 1
        emit(
            {
                "event": "config",
                "generation": generation,
                "version": config.version,
                "collections": {c: len(config.resources[c]) for c in config.collections},
            }
        )

    stamp = file_stamp(args.config)
    try:
        config = load_config(args.config, protos)
    except (OSError, ValueError, TypeError) as e:
        fail("%s: %s" % (args.config, e), code=64)
    loaded(config)
    state = Server(protos, config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    protos.ads_grpc.add_AggregatedDiscoveryServiceServicer_to_server(state.servicer(), server)
    host = args.address
    target = "[%s]:%d" % (host, args.port) if ":" in host else "%s:%d" % (host, args.port)
    try:
        port = server.add_insecure_port(target)
    except RuntimeError as e:
        fail("cannot listen on %s: %s" % (target, e), code=3)
    if port == 0:
        fail("cannot listen on %s" % target, code=3)
    # The handlers before the listening line: a SIGHUP right after it must not kill the server.
    hup = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    emit({"event": "listening", "address": host, "port": port})

    while not stop.is_set():
        hup.wait(0.1)
        now = file_stamp(args.config)
        if not hup.is_set() and now == stamp:
            continue
        hup.clear()
        stamp = now
        try:
            config = load_config(args.config, protos)
        except (OSError, ValueError, TypeError) as e:
            emit({"event": "config_error", "message": "%s: %s" % (args.config, e)})
            continue
        loaded(config)
        state.push_all(config)
    server.stop(0.5).wait()
    return 0


# --- main -----------------------------------------------------------------------------------------


def main(argv):
    p = argparse.ArgumentParser(prog="xds_peer.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--istio-proto",
        default=os.environ.get("SLUICE_XDS_PEER_ISTIO_PROTO") or ISTIO_PROTO,
        help="the folder of Istio's protos, compiled all of them, imports relative to it "
        "(default $SLUICE_XDS_PEER_ISTIO_PROTO or crates/xds/proto)",
    )
    p.add_argument(
        "--cache-dir",
        help="where generated modules are kept "
        "(default $SLUICE_XDS_PEER_CACHE or /tmp/sluice-xds-peer-UID)",
    )
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client", help="subscribe, print, ACK/NACK")
    c.add_argument("--server", required=True, help="HOST:PORT")
    c.add_argument(
        "--type", action="append", required=True, help="a collection to subscribe to (repeatable)"
    )
    c.add_argument(
        "--node-id", default="sidecar~127.0.0.1~xds-peer.default~default.svc.cluster.local"
    )
    c.add_argument(
        "--node-metadata", help="node.metadata as a JSON object (a google.protobuf.Struct)"
    )
    c.add_argument("--nack-type", help="NACK every response of this type instead of ACKing it")
    c.add_argument(
        "--nack-message", default="rejected by xds_peer", help="the NACK's error_detail.message"
    )
    c.add_argument(
        "--with-defaults",
        action="store_true",
        help='print every field of a spec, also those at their default (enum 0, "", 0, [])',
    )
    c.add_argument("--responses", type=int, default=1, help="exit 0 after this many responses")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds for all of them")
    s = sub.add_parser("server", help="serve a JSON file of Istio config over ADS")
    s.add_argument(
        "--port", type=int, required=True, help="0 picks a free port (see the listening event)"
    )
    s.add_argument("--config", required=True)
    s.add_argument("--address", default="127.0.0.1")
    args = p.parse_args(argv)
    protos = Protos(args)
    if args.mode == "client":
        return run_client(args, protos)
    return run_server(args, protos)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
