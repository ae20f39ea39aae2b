//! Validation rules, as Istio's admission webhook applies them: for each rule an input that
//! breaks it (the exact message, on the field's line, rendered as `file:line: Kind ns/name:
//! field: message`) and one that does not.

mod common;

use common::{check, decode_one, doc, render, HEADER_LINES};
use sluice_api::{validate, Severity, Spec};

use Severity::{Error, Warning};

/// One rule: `bad` breaks it at `field` (spec line `line`, 0 for the `spec:` line itself),
/// `good` is the nearest input that passes validation without any error.
struct Case {
    kind: &'static str,
    bad: &'static str,
    severity: Severity,
    field: &'static str,
    line: u32,
    message: &'static str,
    good: &'static str,
}

/// Runs every case and reports all failures at once.
fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let line = HEADER_LINES + c.line;
        let diags = check(&doc(c.kind, c.bad));
        let warning = if c.severity == Warning {
            "warning: "
        } else {
            ""
        };
        let rendered = format!(
            "t.yaml:{line}: {} ns/t: {}: {warning}{}",
            c.kind, c.field, c.message
        );
        let hit = diags
            .iter()
            .find(|d| d.severity == c.severity && d.field == c.field && d.message == c.message);
        match hit {
            None => failures.push(format!("{rendered}\n  missing from:\n{}", render(&diags))),
            Some(d) if d.to_string() != rendered => {
                failures.push(format!("expected: {rendered}\n     got: {d}"));
            }
            Some(_) => {}
        }
        let diags = check(&doc(c.kind, c.good));
        let bad: Vec<_> = diags
            .iter()
            .filter(|d| d.is_error() || d.message == c.message)
            .cloned()
            .collect();
        if !bad.is_empty() {
            failures.push(format!(
                "good input for `{}` still fails:\n{}",
                c.message,
                render(&bad)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn virtual_service_hosts_and_gateways() {
    run(&[
        Case {
            kind: "VirtualService",
            bad: "gateways: [gw]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.gateways",
            line: 1,
            message: "delegate virtual service must have no gateways specified",
            good: "hosts: [a.com]\ngateways: [gw]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "http:\n- route:\n  - destination: {host: a.com}\n",
            severity: Warning,
            field: "spec.hosts",
            line: 0,
            message: "virtual service has no hosts, so it only takes effect as the delegate of another virtual service; add hosts to route traffic with it",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com, '*.b.com', x.b.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.hosts[2]",
            line: 1,
            message: "duplicate hosts in virtual service: *.b.com & x.b.com",
            good: "hosts: [a.com, '*.b.com', x.c.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: ['*']\nhttp:\n- route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.hosts[0]",
            line: 1,
            message: "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            good: "hosts: ['*']\ngateways: [istio-system/gw]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ngateways:\n- bad_ns/gw\nhttp:\n- route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.gateways[0]",
            line: 3,
            message: "invalid value for namespace: \"bad_ns\"",
            good: "hosts: [a.com]\ngateways:\n- istio-system/gw\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ngateways:\n- gw.istio-system\nhttp:\n- route:\n  - destination: {host: a.com}\n",
            severity: Warning,
            field: "spec.gateways[0]",
            line: 3,
            message: "using legacy gatewayName format \"gw.istio-system\"; prefer the <namespace>/<name> format: \"istio-system/gw\"",
            good: "hosts: [a.com]\ngateways:\n- istio-system/gw\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "http, tcp or tls must be provided in virtual service",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n",
        },
    ]);
}

#[test]
fn virtual_service_http_actions() {
    run(&[
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  redirect: {uri: /b}\n",
            severity: Error,
            field: "spec.http[0].redirect",
            line: 5,
            message: "HTTP route cannot contain both route and redirect",
            good: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b}\n  fault: {abort: {httpStatus: 500}}\n",
            severity: Error,
            field: "spec.http[0].redirect",
            line: 3,
            message: "HTTP route cannot contain both fault and redirect",
            good: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b}\n  rewrite: {uri: /c}\n",
            severity: Error,
            field: "spec.http[0].redirect",
            line: 3,
            message: "HTTP route rule cannot contain both rewrite and redirect",
            good: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- directResponse: {status: 503}\n  route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.http[0].directResponse",
            line: 3,
            message: "HTTP route cannot contain both route and directResponse",
            good: "hosts: [a.com]\nhttp:\n- directResponse: {status: 503, body: {string: down}}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- directResponse: {status: 503}\n  fault: {delay: {fixedDelay: 1s}}\n",
            severity: Error,
            field: "spec.http[0].directResponse",
            line: 3,
            message: "HTTP route cannot contain both fault and directResponse",
            good: "hosts: [a.com]\nhttp:\n- directResponse: {status: 503}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- timeout: 1s\n",
            severity: Error,
            field: "spec.http[0]",
            line: 3,
            message: "HTTP route, redirect or directResponse is required",
            good: "hosts: [a.com]\nhttp:\n- timeout: 1s\n  route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- delegate: {name: d}\n  route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.http[0].route",
            line: 4,
            message: "root HTTP route must not specify route",
            good: "hosts: [a.com]\nhttp:\n- delegate: {name: d, namespace: other}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  mirror: {host: b.com}\n  mirrors:\n  - destination: {host: c.com}\n",
            severity: Error,
            field: "spec.http[0].mirrors",
            line: 6,
            message: "HTTP route cannot contain both mirror and mirrors",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  mirror: {host: b.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n- route:\n  - destination: {host: b.com}\n",
            severity: Warning,
            field: "spec.http[1]",
            line: 5,
            message: "virtualService rule #1 not used (only the last rule can have no matches)",
            good: "hosts: [a.com]\nhttp:\n- match:\n  - uri: {prefix: /b}\n  route:\n  - destination: {host: a.com}\n- route:\n  - destination: {host: b.com}\n",
        },
    ]);
}

#[test]
fn virtual_service_destinations_and_weights() {
    run(&[
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  - destination: {host: b.com}\n",
            severity: Error,
            field: "spec.http[0].route",
            line: 3,
            message: "total destination weight = 0",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n    weight: 90\n  - destination: {host: b.com}\n    weight: 10\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n    weight: -1\n",
            severity: Error,
            field: "spec.http[0].route[0].weight",
            line: 5,
            message: "weight -1 < 0",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n    weight: 100\n",
        },
        Case {
            // Left out: decoded (Istio's protobuf leaves it unset), refused by validation.
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - weight: 100\n",
            severity: Error,
            field: "spec.http[0].route[0].destination",
            line: 4,
            message: "destination is required",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - weight: 100\n    destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route: [{}]\n",
            severity: Error,
            field: "spec.http[0].route[0].destination",
            line: 3,
            message: "destination is required",
            good: "hosts: [a.com]\nhttp:\n- route: [{destination: {host: a.com}}]\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntcp:\n- route:\n  - weight: 100\n",
            severity: Error,
            field: "spec.tcp[0].route[0].destination",
            line: 4,
            message: "destination is required",
            good: "hosts: [a.com]\ntcp:\n- route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  mirrors:\n  - percentage: {value: 5}\n",
            severity: Error,
            field: "spec.http[0].mirrors[0].destination",
            line: 6,
            message: "destination is required for mirrors",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com}\n  mirrors:\n  - percentage: {value: 5}\n    destination: {host: b.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {subset: v1}\n",
            severity: Error,
            field: "spec.http[0].route[0].destination.host",
            line: 4,
            message: "destination host is required",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com, subset: v1}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com, port: {number: 70000}}\n",
            severity: Error,
            field: "spec.http[0].route[0].destination.port.number",
            line: 4,
            message: "port number 70000 must be in the range 1..65535",
            good: "hosts: [a.com]\nhttp:\n- route:\n  - destination: {host: a.com, port: {number: 8080}}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntcp:\n- match:\n  - port: 3306\n",
            severity: Error,
            field: "spec.tcp[0].route",
            line: 3,
            message: "TCP route is required",
            good: "hosts: [a.com]\ntcp:\n- match:\n  - port: 3306\n  route:\n  - destination: {host: db.a.com, port: {number: 3306}}\n",
        },
    ]);
}

#[test]
fn virtual_service_string_matches() {
    let route = "  route:\n  - destination: {host: a.com}\n";
    let with = |m: &str| -> &'static str {
        Box::leak(format!("hosts: [a.com]\nhttp:\n- match:\n  - {m}\n{route}").into_boxed_str())
    };
    run(&[
        Case {
            kind: "VirtualService",
            bad: with("uri: {exact: /a, prefix: /a}"),
            severity: Error,
            field: "spec.http[0].match[0].uri",
            line: 4,
            message: "\"uri\": only one of exact, prefix or regex may be set",
            good: with("uri: {prefix: /a}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("uri: {regex: '('}"),
            severity: Error,
            field: "spec.http[0].match[0].uri.regex",
            line: 4,
            message: "\"uri\": invalid regex \"(\": unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
            good: with("uri: {regex: '/a(/.*)?'}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("uri: {prefix: ''}"),
            severity: Error,
            field: "spec.http[0].match[0].uri.prefix",
            line: 4,
            message: "\"uri\": prefix string match should not be empty",
            good: with("uri: {prefix: /}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("authority: {regex: ''}"),
            severity: Error,
            field: "spec.http[0].match[0].authority.regex",
            line: 4,
            message: "\"authority\": regex string match should not be empty",
            good: with("authority: {regex: '.*\\.a\\.com'}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("headers:\n      X-Canary: {exact: '1'}"),
            severity: Warning,
            field: "spec.http[0].match[0].headers.X-Canary",
            line: 5,
            message: "header name X-Canary should be lower-case: x-canary",
            good: with("headers:\n      x-canary: {exact: '1'}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("headers:\n      x canary: {exact: '1'}"),
            severity: Error,
            field: "spec.http[0].match[0].headers.x canary",
            line: 5,
            message: "header name x canary is not a valid header name",
            good: with("headers:\n      x-canary: {}"),
        },
    ]);
}

#[test]
fn regex_length_limit() {
    let long = "a".repeat(1025);
    let text = doc(
        "VirtualService",
        &format!("hosts: [a.com]\nhttp:\n- match:\n  - uri: {{regex: '{long}'}}\n  route:\n  - destination: {{host: a.com}}\n"),
    );
    let diags = check(&text);
    common::assert_has(
        &diags,
        Error,
        "spec.http[0].match[0].uri.regex",
        HEADER_LINES + 4,
        "\"uri\": regex is too large, max length allowed is 1024",
    );
    let ok = doc(
        "VirtualService",
        &format!("hosts: [a.com]\nhttp:\n- match:\n  - uri: {{regex: '{}'}}\n  route:\n  - destination: {{host: a.com}}\n", &long[..1024]),
    );
    assert!(check(&ok).is_empty());
}

#[test]
fn virtual_service_timeouts_retries_faults_mirrors() {
    let route = "  route:\n  - destination: {host: a.com}\n";
    let with = |r: &str| -> &'static str {
        Box::leak(format!("hosts: [a.com]\nhttp:\n- {r}\n{route}").into_boxed_str())
    };
    run(&[
        Case {
            kind: "VirtualService",
            bad: with("timeout: 0s"),
            severity: Error,
            field: "spec.http[0].timeout",
            line: 3,
            message: "duration must be greater than 1ms",
            good: with("timeout: 0.5s"),
        },
        Case {
            kind: "VirtualService",
            bad: with("timeout: 1.5ms"),
            severity: Error,
            field: "spec.http[0].timeout",
            line: 3,
            message: "only durations to ms precision are supported",
            good: with("timeout: 2ms"),
        },
        Case {
            kind: "VirtualService",
            bad: with("retries: {attempts: 2, perTryTimeout: 0s}"),
            severity: Error,
            field: "spec.http[0].retries.perTryTimeout",
            line: 3,
            message: "duration must be greater than 1ms",
            good: with("retries: {attempts: 2, perTryTimeout: 100ms}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("retries: {attempts: -1}"),
            severity: Error,
            field: "spec.http[0].retries.attempts",
            line: 3,
            message: "attempts cannot be negative",
            good: with("retries: {attempts: 0}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("retries: {attempts: 3, retryOn: 'connect-failure,foo'}"),
            severity: Error,
            field: "spec.http[0].retries.retryOn",
            line: 3,
            message: "\"foo\" is not a valid retryOn policy",
            good: with("retries: {attempts: 3, retryOn: 'connect-failure,refused-stream,503'}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("fault:\n    delay:\n      fixedDelay: 1s\n      percentage: {value: 150}"),
            severity: Error,
            field: "spec.http[0].fault.delay.percentage.value",
            line: 6,
            message: "percentage 150 is neither 0.0, nor in range [0.0001, 100.0]",
            good: with("fault:\n    delay:\n      fixedDelay: 1s\n      percentage: {value: 50}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("fault:\n    abort: {httpStatus: 700, percentage: {value: 10}}"),
            severity: Error,
            field: "spec.http[0].fault.abort.httpStatus",
            line: 4,
            message: "HTTP status 700 is not in range 200-599",
            good: with("fault:\n    abort: {httpStatus: 503, percentage: {value: 10}}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("fault: {}"),
            severity: Error,
            field: "spec.http[0].fault",
            line: 3,
            message: "HTTP fault injection must have an abort and/or a delay",
            good: with("fault: {abort: {grpcStatus: UNAVAILABLE}}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("mirror: {host: b.com}\n  mirrorPercentage: {value: 150}"),
            severity: Error,
            field: "spec.http[0].mirrorPercentage.value",
            line: 4,
            message: "mirror_percentage must have a max value of 100 (it has 150.000000)",
            good: with("mirror: {host: b.com}\n  mirrorPercentage: {value: 12.5}"),
        },
        Case {
            kind: "VirtualService",
            bad: with("mirrors:\n  - destination: {host: b.com}\n    percentage: {value: 150}"),
            severity: Error,
            field: "spec.http[0].mirrors[0].percentage.value",
            line: 5,
            message: "mirror percentage must have a max value of 100 (it has 150.000000)",
            good: with("mirrors:\n  - destination: {host: b.com}\n    percentage: {value: 100}"),
        },
    ]);
}

#[test]
fn virtual_service_redirects_and_direct_responses() {
    run(&[
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b, redirectCode: 200}\n",
            severity: Error,
            field: "spec.http[0].redirect.redirectCode",
            line: 3,
            message: "200 is not a valid redirect code, must be 3xx",
            good: "hosts: [a.com]\nhttp:\n- redirect: {uri: /b, redirectCode: 302}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- match:\n  - uri: {exact: /a}\n  redirect: {prefixRewrite: /b}\n",
            severity: Warning,
            field: "spec.http[0].redirect.prefixRewrite",
            line: 5,
            message: "prefixRewrite replaces the matched uri prefix; without a uri prefix match it replaces nothing",
            good: "hosts: [a.com]\nhttp:\n- match:\n  - uri: {prefix: /a}\n  redirect: {prefixRewrite: /b}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\nhttp:\n- directResponse: {status: 700}\n",
            severity: Error,
            field: "spec.http[0].directResponse.status",
            line: 3,
            message: "HTTP status 700 is not in range 200-599",
            good: "hosts: [a.com]\nhttp:\n- directResponse: {status: 418}\n",
        },
    ]);
}

#[test]
fn virtual_service_tls_routes() {
    let tls_route = "hosts: [a.com]\ntls:\n- match:\n  - sniHosts: [a.com]\n  route:\n  - destination: {host: a.com}\n";
    run(&[
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntls:\n- route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.tls[0]",
            line: 3,
            message: "TLS route must have at least one match condition",
            good: tls_route,
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntls:\n- match:\n  - port: 443\n  route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.tls[0].match[0]",
            line: 4,
            message: "TLS match must have at least one SNI host",
            good: tls_route,
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntls:\n- match:\n  - sniHosts: [b.com]\n  route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.tls[0].match[0].sniHosts[0]",
            line: 4,
            message: "SNI host \"b.com\" is not a compatible subset of any of the virtual service hosts: [a.com]",
            good: tls_route,
        },
        Case {
            // The protobuf spelling lands on the same line and reports the canonical path.
            kind: "VirtualService",
            bad: "hosts: ['*.a.com']\ntls:\n- match:\n  - port: 443\n    sni_hosts:\n    - x.b.com\n  route:\n  - destination: {host: a.com}\n",
            severity: Error,
            field: "spec.tls[0].match[0].sniHosts[0]",
            line: 6,
            message: "SNI host \"x.b.com\" is not a compatible subset of any of the virtual service hosts: [*.a.com]",
            good: "hosts: ['*.a.com']\ntls:\n- match:\n  - port: 443\n    sni_hosts:\n    - x.a.com\n  route:\n  - destination: {host: a.com}\n",
        },
        Case {
            kind: "VirtualService",
            bad: "hosts: [a.com]\ntls:\n- match:\n  - sniHosts: [a.com]\n",
            severity: Error,
            field: "spec.tls[0].route",
            line: 3,
            message: "TLS route is required",
            good: tls_route,
        },
    ]);
}

#[test]
fn export_to_rules() {
    let vs = |e: &str| -> &'static str {
        Box::leak(format!("hosts: [a.com]\nexportTo: {e}\nhttp:\n- route:\n  - destination: {{host: a.com}}\n").into_boxed_str())
    };
    let good = vs("['.']");
    run(&[
        Case {
            kind: "VirtualService",
            bad: vs("['*', other]"),
            severity: Error,
            field: "spec.exportTo",
            line: 2,
            message: "cannot have both public (*) and non-public exportTo values for a resource",
            good: vs("['*']"),
        },
        Case {
            kind: "VirtualService",
            bad: vs("['.', ns]"),
            severity: Error,
            field: "spec.exportTo[1]",
            line: 2,
            message: "duplicate entries in exportTo: . and current namespace ns",
            good: vs("['.', other]"),
        },
        Case {
            kind: "VirtualService",
            bad: vs("[a, a]"),
            severity: Error,
            field: "spec.exportTo[1]",
            line: 2,
            message: "duplicate entries in exportTo for entry a",
            good: vs("[a, b]"),
        },
        Case {
            kind: "VirtualService",
            bad: vs("['~']"),
            severity: Error,
            field: "spec.exportTo[0]",
            line: 2,
            message: "exportTo ~ (none) is not allowed for Istio configuration objects",
            good,
        },
        Case {
            kind: "VirtualService",
            bad: vs("[Bad_NS]"),
            severity: Error,
            field: "spec.exportTo[0]",
            line: 2,
            message: "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            good,
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com]\nexportTo: ['~', other]\nports:\n- {number: 80, name: http, protocol: HTTP}\n",
            severity: Error,
            field: "spec.exportTo",
            line: 2,
            message: "cannot export service entry to no one (~) and someone",
            good: "hosts: [a.com]\nexportTo: ['~']\nports:\n- {number: 80, name: http, protocol: HTTP}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\nworkloadSelector: {matchLabels: {app: a}}\nexportTo: ['*']\n",
            severity: Error,
            field: "spec.exportTo",
            line: 3,
            message: "destination rule with workload selector cannot have exportTo beyond current namespace",
            good: "host: a\nworkloadSelector: {matchLabels: {app: a}}\nexportTo: ['.']\n",
        },
    ]);
}

#[test]
fn service_entry_rules() {
    const HTTP_PORT: &str = "ports:\n- {number: 80, name: http, protocol: HTTP}\n";
    let se = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    run(&[
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("{HTTP_PORT}resolution: DNS\n")),
            severity: Error,
            field: "spec.hosts",
            line: 0,
            message: "service entry must have at least one host",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: ['*']\n{HTTP_PORT}")),
            severity: Error,
            field: "spec.hosts[0]",
            line: 1,
            message: "invalid host *",
            good: se(&format!("hosts: ['*.com']\n{HTTP_PORT}")),
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 80, name: http2, protocol: HTTP}\nresolution: DNS\n",
            severity: Error,
            field: "spec.ports[1].number",
            line: 4,
            message: "service entry port 80 already defined",
            good: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 8080, name: http2, protocol: HTTP}\nresolution: DNS\n",
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 8080, name: http, protocol: HTTP}\nresolution: DNS\n",
            severity: Error,
            field: "spec.ports[1].name",
            line: 4,
            message: "service entry port name \"http\" already defined",
            good: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 8080, name: http-alt, protocol: HTTP}\nresolution: DNS\n",
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: FOO}\n",
            severity: Error,
            field: "spec.ports[0].protocol",
            line: 3,
            message: "unsupported protocol: FOO",
            good: "hosts: [a.com]\nports:\n- {number: 80, name: http, protocol: grpc-web}\n",
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNSS\n")),
            severity: Error,
            field: "spec.resolution",
            line: 4,
            message: "unsupported resolution type DNSS; expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS_ROUND_ROBIN\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}location: EXTERNAL\n")),
            severity: Error,
            field: "spec.location",
            line: 4,
            message: "unsupported location EXTERNAL; expected MESH_EXTERNAL or MESH_INTERNAL",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}location: MESH_INTERNAL\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: NONE\nendpoints:\n- address: 1.2.3.4\n")),
            severity: Error,
            field: "spec.endpoints",
            line: 5,
            message: "no endpoints should be provided for resolution type none",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nendpoints:\n- address: 1.2.3.4\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\naddresses: [10.0.0.0/24]\n{HTTP_PORT}resolution: DNS\n")),
            severity: Error,
            field: "spec.addresses",
            line: 2,
            message: "CIDR addresses are allowed only for NONE/STATIC resolution types",
            good: se(&format!("hosts: [a.com]\naddresses: [10.0.0.0/24]\n{HTTP_PORT}resolution: NONE\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com, b.com]\naddresses: [10.0.0.1]\nports:\n- {number: 3306, name: tcp, protocol: TCP}\nresolution: DNS\n",
            severity: Error,
            field: "spec.ports[0]",
            line: 4,
            message: "multiple hosts provided with non-HTTP, non-TLS ports",
            good: "hosts: [a.com, b.com]\naddresses: [10.0.0.1]\nports:\n- {number: 3306, name: tls, protocol: TLS}\nresolution: DNS\n",
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: ['*.a.com']\n{HTTP_PORT}resolution: DNS\n")),
            severity: Error,
            field: "spec.hosts[0]",
            line: 1,
            message: "hosts must be FQDN if no endpoints are provided for resolution mode DNS",
            good: se(&format!("hosts: ['*.a.com']\n{HTTP_PORT}resolution: DYNAMIC_DNS\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS_ROUND_ROBIN\nendpoints:\n- address: a1.a.com\n- address: a2.a.com\n")),
            severity: Error,
            field: "spec.endpoints",
            line: 5,
            message: "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS_ROUND_ROBIN\nendpoints:\n- address: a1.a.com\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nendpoints:\n- address: 1.2.3.4\n  ports: {{web: 8080}}\n")),
            severity: Error,
            field: "spec.endpoints[0].ports.web",
            line: 7,
            message: "endpoint port \"web\" is not defined by the service entry ports",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nendpoints:\n- address: 1.2.3.4\n  ports: {{http: 8080}}\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\n")),
            severity: Warning,
            field: "spec.resolution",
            line: 4,
            message: "no endpoints are given for resolution type STATIC, so the service has no endpoints to send traffic to",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nendpoints:\n- address: 2001:db8::1\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nendpoints:\n- address: a1.a.com\n")),
            severity: Error,
            field: "spec.endpoints[0].address",
            line: 6,
            message: "endpoint address \"a1.a.com\" is not a valid IP address",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS\nendpoints:\n- address: a1.a.com\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS\nendpoints:\n- address: 'not valid!'\n")),
            severity: Error,
            field: "spec.endpoints[0].address",
            line: 6,
            message: "endpoint address \"not valid!\" is not a valid FQDN or an IP address",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: DNS\nendpoints:\n- address: 10.1.1.1\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nworkloadSelector: {{labels: {{app: a}}}}\nendpoints:\n- address: 1.2.3.4\n")),
            severity: Error,
            field: "spec.endpoints",
            line: 6,
            message: "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            good: se(&format!("hosts: [a.com]\n{HTTP_PORT}resolution: STATIC\nworkloadSelector: {{labels: {{app: a}}}}\n")),
        },
        Case {
            kind: "ServiceEntry",
            bad: "hosts: [a.com]\nports:\n- {number: 3306, name: tcp, protocol: TCP}\nresolution: DNS\n",
            severity: Warning,
            field: "spec.ports[0]",
            line: 3,
            message: "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            good: "hosts: [a.com]\naddresses: [10.0.0.1]\nports:\n- {number: 3306, name: tcp, protocol: TCP}\nresolution: DNS\n",
        },
    ]);
}

#[test]
fn destination_rule_rules() {
    run(&[
        Case {
            kind: "DestinationRule",
            bad: "subsets:\n- name: v1\n",
            severity: Error,
            field: "spec.host",
            line: 0,
            message: "host is required",
            good: "host: reviews\nsubsets:\n- name: v1\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\nsubsets:\n- name: v1\n- name: v1\n",
            severity: Error,
            field: "spec.subsets[1].name",
            line: 4,
            message: "duplicate subset names: v1",
            good: "host: a\nsubsets:\n- name: v1\n- name: v2\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\nsubsets:\n- labels: {version: v1}\n",
            severity: Error,
            field: "spec.subsets[0].name",
            line: 3,
            message: "subset name cannot be empty",
            good: "host: a\nsubsets:\n- labels: {version: v1}\n  name: v1\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy: {}\n",
            severity: Error,
            field: "spec.trafficPolicy",
            line: 2,
            message: "traffic policy must have at least one field",
            good: "host: a\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  tls: {mode: SIMPEL}\n",
            severity: Error,
            field: "spec.trafficPolicy.tls.mode",
            line: 3,
            message: "invalid tls mode SIMPEL; expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
            good: "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL, privateKey: /k.pem}\n",
            severity: Error,
            field: "spec.trafficPolicy.tls.clientCertificate",
            line: 3,
            message: "client certificate required for mutual tls",
            good: "host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL, privateKey: /k.pem, clientCertificate: /c.pem}\n",
        },
    ]);
}

#[test]
fn gateway_rules() {
    const HTTP: &str =
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n";
    let https = |tls: &str| -> &'static str {
        Box::leak(
            format!("servers:\n- port: {{number: 443, name: https, protocol: HTTPS}}\n  hosts: ['*']\n  tls: {tls}\n")
                .into_boxed_str(),
        )
    };
    run(&[
        Case {
            kind: "Gateway",
            bad: "selector: {istio: ingressgateway}\n",
            severity: Error,
            field: "spec.servers",
            line: 0,
            message: "gateway must have at least one server",
            good: HTTP,
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 0, name: http, protocol: HTTP}\n  hosts: ['*']\n",
            severity: Error,
            field: "spec.servers[0].port.number",
            line: 2,
            message: "port number 0 must be in the range 1..65535",
            good: HTTP,
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n- port: {number: 8080, name: http, protocol: HTTP}\n  hosts: ['*']\n",
            severity: Error,
            field: "spec.servers[1].port.name",
            line: 4,
            message: "port names in servers must be unique: duplicate name http",
            good: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n- port: {number: 8080, name: http-8080, protocol: HTTP}\n  hosts: ['*']\n",
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n",
            severity: Error,
            field: "spec.servers[0]",
            line: 2,
            message: "server must have TLS settings for HTTPS/TLS protocols",
            good: https("{mode: SIMPLE, credentialName: httpbin-credential}"),
        },
        Case {
            kind: "Gateway",
            bad: https("{mode: TERMINATE}"),
            severity: Error,
            field: "spec.servers[0].tls.mode",
            line: 4,
            message: "invalid tls mode TERMINATE; expected one of PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL",
            good: https("{mode: PASSTHROUGH}"),
        },
        Case {
            kind: "Gateway",
            bad: https("{mode: SIMPLE, serverCertificate: /c.pem}"),
            severity: Error,
            field: "spec.servers[0].tls.privateKey",
            line: 4,
            message: "SIMPLE TLS requires a private key",
            good: https("{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}"),
        },
        Case {
            kind: "Gateway",
            bad: https("{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}"),
            severity: Error,
            field: "spec.servers[0].tls.caCertificates",
            line: 4,
            message: "MUTUAL TLS requires a client CA bundle",
            good: https("{mode: MUTUAL, credentialName: httpbin-credential}"),
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [foo]\n",
            severity: Error,
            field: "spec.servers[0].hosts[0]",
            line: 3,
            message: "short names (non FQDN) are not allowed",
            good: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [foo.example.com, 10.0.0.1]\n",
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [bad_ns/foo.com]\n",
            severity: Error,
            field: "spec.servers[0].hosts[0]",
            line: 3,
            message: "invalid namespace value \"bad_ns\" in gateway",
            good: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [prod/foo.com, ./bar.com, '*/*.baz.com']\n",
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 21, name: ftp, protocol: FTP}\n  hosts: ['*']\n",
            severity: Error,
            field: "spec.servers[0].port.protocol",
            line: 2,
            message: "invalid protocol \"FTP\", supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS",
            good: "servers:\n- port: {number: 21, name: ftp, protocol: tcp}\n  hosts: ['*']\n",
        },
        Case {
            kind: "Gateway",
            bad: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: c}\n",
            severity: Error,
            field: "spec.servers[0].tls",
            line: 4,
            message: "server cannot have TLS settings for plain text HTTP ports",
            good: "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n  tls: {httpsRedirect: true}\n",
        },
    ]);
}

#[test]
fn gateway_server_without_hosts_after_decoding() {
    // Decoding fills in `*` for pre-1.0 Gateways, so this can only come from code.
    let mut r = decode_one(&doc(
        "Gateway",
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n",
    ));
    let Spec::Gateway(gw) = &mut r.make_mut().spec else {
        panic!()
    };
    gw.servers[0].hosts.clear();
    let diags = validate(&r);
    common::assert_has(
        &diags,
        Error,
        "spec.servers[0].hosts",
        HEADER_LINES + 3,
        "server config must contain at least one host",
    );
}

#[test]
fn names_of_objects() {
    let text = doc(
        "Gateway",
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n",
    )
    .replace("name: t\n", "name: my.gateway\n");
    let diags = check(&text);
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:4: Gateway ns/my.gateway: metadata.name: invalid gateway name: \"my.gateway\""]
    );
    let text = doc("DestinationRule", "host: a\n").replace("name: t\n", "name: Bad_Name\n");
    let diags = check(&text);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_eq!(
        (diags[0].line, diags[0].field.as_str()),
        (4, "metadata.name")
    );
    assert!(diags[0].message.starts_with("invalid name \"Bad_Name\""));
}

#[test]
fn workload_entry_sidecar_service_ingress() {
    run(&[
        Case {
            kind: "WorkloadEntry",
            bad: "address: 'not valid!'\n",
            severity: Error,
            field: "spec.address",
            line: 1,
            message: "endpoint address \"not valid!\" is not a valid FQDN or an IP address",
            good: "address: vm1.example.com\nports: {http: 8080}\n",
        },
        Case {
            kind: "WorkloadEntry",
            bad: "labels: {app: a}\n",
            severity: Error,
            field: "spec.address",
            line: 0,
            message: "address is required",
            good: "address: 10.0.0.1\nlabels: {app: a}\n",
        },
        Case {
            kind: "Sidecar",
            bad: "egress:\n- hosts: ['*/*']\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['./*']\n",
            severity: Error,
            field: "spec.egress[0]",
            line: 2,
            message: "sidecar: the egress listener with empty port should be the last listener in the list",
            good: "egress:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['./*']\n- hosts: ['*/*']\n",
        },
        Case {
            kind: "Sidecar",
            bad: "egress:\n- hosts: [foo.com]\n",
            severity: Error,
            field: "spec.egress[0].hosts[0]",
            line: 2,
            message: "host must be of form namespace/dnsName",
            good: "egress:\n- hosts: [istio-system/foo.com, '~/*']\n",
        },
        Case {
            kind: "Sidecar",
            bad: "workloadSelector: {labels: {app: a}}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "sidecar: empty configuration provided",
            good: "workloadSelector: {labels: {app: a}}\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        },
        Case {
            kind: "Service",
            bad: "ports:\n- {name: http, port: 70000}\n",
            severity: Error,
            field: "spec.ports[0].port",
            line: 2,
            message: "port number 70000 must be in the range 1..65535",
            good: "ports:\n- {name: http, port: 80, targetPort: 8080}\n",
        },
        Case {
            kind: "Ingress",
            bad: "rules:\n- http:\n    paths:\n    - path: /\n      pathType: Prefix\n      backend: {}\n",
            severity: Error,
            field: "spec.rules[0].http.paths[0].backend",
            line: 6,
            message: "backend service is required",
            good: "rules:\n- http:\n    paths:\n    - path: /\n      pathType: Prefix\n      backend: {service: {name: web, port: {number: 80}}}\n",
        },
    ]);
}

#[test]
fn mesh_config_values() {
    let text = |mode: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    outboundTrafficPolicy:\n      mode: {mode}\n")
    };
    let diags = check(&text("ALLOW_SOME"));
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["t.yaml:5: ConfigMap istio-system/istio: data.mesh: invalid mesh config: outboundTrafficPolicy.mode ALLOW_SOME; expected one of ALLOW_ANY, REGISTRY_ONLY, ALLOW_ANY_DYNAMIC_DNS"]
    );
    assert!(check(&text("REGISTRY_ONLY")).is_empty());
}

#[test]
fn destination_rule_traffic_policy_components() {
    run(&[
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: -1}\n",
            severity: Error,
            field: "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            line: 4,
            message: "max connections must be non-negative",
            good: "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: 100, connectTimeout: 30ms}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  connectionPool: {}\n",
            severity: Error,
            field: "spec.trafficPolicy.connectionPool",
            line: 3,
            message: "connection pool must have at least one field",
            good: "host: a\ntrafficPolicy:\n  connectionPool:\n    http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  portLevelSettings:\n  - port: {number: 80}\n    connectionPool:\n      http: {http2MaxRequests: -5}\n",
            severity: Error,
            field: "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2MaxRequests",
            line: 6,
            message: "http2 max requests must be non-negative",
            good: "host: a\ntrafficPolicy:\n  portLevelSettings:\n  - port: {number: 80}\n    connectionPool:\n      http: {http2MaxRequests: 5}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  connectionPool:\n    http:\n      h2UpgradePolicy: UPGRADE\n      useClientProtocol: true\n",
            severity: Error,
            field: "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            line: 6,
            message: "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            good: "host: a\ntrafficPolicy:\n  connectionPool:\n    http:\n      h2UpgradePolicy: UPGRADE\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp:\n      tcpKeepalive: {time: 0.5ms}\n",
            severity: Error,
            field: "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
            line: 5,
            message: "duration must be greater than 1ms",
            good: "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp:\n      tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}\n      idleTimeout: 0s\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  outlierDetection:\n    interval: 0.5ms\n",
            severity: Error,
            field: "spec.trafficPolicy.outlierDetection.interval",
            line: 4,
            message: "duration must be greater than 1ms",
            good: "host: a\ntrafficPolicy:\n  outlierDetection:\n    interval: 1s\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  outlierDetection:\n    maxEjectionPercent: 150\n",
            severity: Error,
            field: "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            line: 4,
            message: "percentage 150 is not in range 0..100",
            good: "host: a\ntrafficPolicy:\n  outlierDetection:\n    maxEjectionPercent: 100\n    minHealthPercent: 0\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  outlierDetection:\n    consecutiveLocalOriginFailures: 3\n",
            severity: Error,
            field: "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            line: 4,
            message: "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
            good: "host: a\ntrafficPolicy:\n  outlierDetection:\n    splitExternalLocalOriginErrors: true\n    consecutiveLocalOriginFailures: 3\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  outlierDetection:\n    consecutiveErrors: 7\n",
            severity: Warning,
            field: "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            line: 4,
            message: "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
            good: "host: a\ntrafficPolicy:\n  outlierDetection:\n    consecutive5xxErrors: 7\n    consecutiveGatewayErrors: 2\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      maglev: {tableSize: 1000}\n",
            severity: Error,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            line: 5,
            message: "tableSize must be a prime number for maglev",
            good: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      maglev: {tableSize: 65537}\n      useSourceIp: true\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      maglev: {tableSize: 5000011}\n",
            severity: Error,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            line: 5,
            message: "tableSize must be less than 5000011 for maglev",
            good: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      maglev: {tableSize: 4999999}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie: {ttl: 0s}\n",
            severity: Error,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
            line: 5,
            message: "name required for HttpCookie",
            good: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie: {name: user, ttl: 0s, path: /}\n      ringHash: {minimumRingSize: 2048}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpHeaderName: x-user\n      minimumRingSize: 100\n      ringHash: {minimumRingSize: 200}\n",
            severity: Error,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
            line: 6,
            message: "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            good: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpHeaderName: x-user\n      ringHash: {minimumRingSize: 200}\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpQueryParameterName: u\n      minimumRingSize: 100\n",
            severity: Warning,
            field: "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
            line: 6,
            message: "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            good: "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpQueryParameterName: u\n",
        },
        Case {
            kind: "DestinationRule",
            bad: "host: a\nsubsets:\n- name: v1\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n",
            severity: Error,
            field: "spec.subsets[0].trafficPolicy.loadBalancer.simple",
            line: 5,
            message: "invalid load balancer FASTEST; expected one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST",
            good: "host: a\nsubsets:\n- name: v1\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 10s}\n",
        },
    ]);
}

#[test]
fn destination_rule_policy_decodes_typed_and_snake_case() {
    let res = decode_one(&doc(
        "DestinationRule",
        "host: a\ntraffic_policy:\n  outlier_detection: {consecutive_5xx_errors: 3, base_ejection_time: 1m}\n  connection_pool:\n    http: {http1_max_pending_requests: 2, max_retries: 0}\n  load_balancer:\n    consistent_hash: {http_header_name: x-user, maglev: {table_size: 65537}}\n",
    ));
    let Spec::DestinationRule(dr) = &res.spec else {
        panic!("not a DestinationRule");
    };
    let tp = dr.traffic_policy.as_ref().expect("trafficPolicy");
    let od = tp.outlier_detection.as_ref().expect("outlierDetection");
    assert_eq!(od.consecutive_5xx_errors, Some(3));
    assert_eq!(
        od.base_ejection_time.map(|d| d.0),
        Some(std::time::Duration::from_secs(60))
    );
    let http = tp.connection_pool.as_ref().and_then(|p| p.http.as_ref());
    assert_eq!(http.and_then(|h| h.http1_max_pending_requests), Some(2));
    let ch = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
        .expect("consistentHash");
    assert_eq!(ch.http_header_name.as_deref(), Some("x-user"));
    assert_eq!(ch.maglev.as_ref().and_then(|m| m.table_size), Some(65537));
    assert!(validate(&res).is_empty(), "{:?}", validate(&res));
}

/// [`run`] for `security.istio.io/v1` kinds.
fn run_security(cases: &[Case]) {
    let mut failures = Vec::new();
    let security_doc = |kind: &str, spec: &str| {
        doc(kind, spec).replacen("networking.istio.io", "security.istio.io", 1)
    };
    for c in cases {
        let line = HEADER_LINES + c.line;
        let diags = check(&security_doc(c.kind, c.bad));
        let warning = if c.severity == Warning {
            "warning: "
        } else {
            ""
        };
        let rendered = format!(
            "t.yaml:{line}: {} ns/t: {}: {warning}{}",
            c.kind, c.field, c.message
        );
        let hit = diags
            .iter()
            .find(|d| d.severity == c.severity && d.field == c.field && d.message == c.message);
        match hit {
            None => failures.push(format!("{rendered}\n  missing from:\n{}", render(&diags))),
            Some(d) if d.to_string() != rendered => {
                failures.push(format!("expected: {rendered}\n     got: {d}"));
            }
            Some(_) => {}
        }
        let diags = check(&security_doc(c.kind, c.good));
        let bad: Vec<_> = diags
            .iter()
            .filter(|d| d.is_error() || d.message == c.message)
            .cloned()
            .collect();
        if !bad.is_empty() {
            failures.push(format!(
                "good input for `{}` still fails:\n{}",
                c.message,
                render(&bad)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn peer_authentication_rules() {
    run_security(&[
        Case {
            kind: "PeerAuthentication",
            bad: "mtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n",
            severity: Error,
            field: "spec.portLevelMtls",
            line: 2,
            message: "mesh/namespace peer authentication cannot have port level mTLS",
            good: "selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  8080: {mode: DISABLE}\n",
        },
        Case {
            kind: "PeerAuthentication",
            bad: "selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  70000: {mode: DISABLE}\n",
            severity: Error,
            field: "spec.portLevelMtls.70000",
            line: 4,
            message: "port must be in range 1..65535",
            good: "selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  7000: {mode: DISABLE}\n",
        },
        Case {
            kind: "PeerAuthentication",
            bad: "selector:\n  matchLabels: {app: a}\nportLevelMtls: {}\n",
            severity: Error,
            field: "spec.portLevelMtls",
            line: 3,
            message: "port level mTLS, if defined, must have at least one element",
            good: "selector:\n  matchLabels: {app: a}\n",
        },
        Case {
            kind: "PeerAuthentication",
            bad: "mtls:\n  mode: STRICTT\n",
            severity: Error,
            field: "spec.mtls.mode",
            line: 2,
            message:
                "invalid mTLS mode STRICTT; expected one of UNSET, DISABLE, PERMISSIVE, STRICT",
            good: "mtls:\n  mode: UNSET\n",
        },
        Case {
            kind: "PeerAuthentication",
            bad: "selector: {}\nmtls: {mode: STRICT}\n",
            severity: Warning,
            field: "spec.selector",
            line: 1,
            message: "workload selector specified without labels",
            good: "mtls: {mode: STRICT}\n",
        },
        Case {
            kind: "PeerAuthentication",
            bad: "selector:\n  matchLabels:\n    app: \"*\"\n",
            severity: Error,
            field: "spec.selector.matchLabels.app",
            line: 3,
            message: "wildcard is not supported in selector: \"app=*\"",
            good: "selector:\n  matchLabels:\n    app: a\n",
        },
    ]);
}

#[test]
fn authorization_policy_actions_and_selectors() {
    run_security(&[
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: DENY\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "DENY action without `rules` is meaningless as it will never be triggered, \
                      add an empty rule `{}` if you want it be triggered for every request",
            good: "action: DENY\nrules:\n- {}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: CUSTOM\nrules:\n- {}\n",
            severity: Error,
            field: "spec.provider",
            line: 0,
            message: "`provider.name` must not be empty",
            good: "action: CUSTOM\nprovider: {name: ext-authz}\nrules:\n- {}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: CUSTOM\nprovider: {name: ext-authz}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "CUSTOM action without `rules` is meaningless as it will never be triggered, \
                      add an empty rule `{}` if you want it be triggered for every request",
            good: "action: CUSTOM\nprovider: {name: ext-authz}\nrules:\n- to:\n  - operation: {paths: [/admin]}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: CUSTOM\nprovider: {name: ext}\nrules:\n- from:\n  - source:\n      namespaces: [foo]\n",
            severity: Error,
            field: "spec.rules[0].from[0].source.namespaces",
            line: 6,
            message: "From.Namespaces is currently not supported with CUSTOM action",
            good: "action: CUSTOM\nprovider: {name: ext}\nrules:\n- from:\n  - source:\n      ipBlocks: [10.0.0.0/8]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "provider: {name: ext}\nrules:\n- {}\n",
            severity: Error,
            field: "spec.provider",
            line: 1,
            message: "`provider` must not be with non CUSTOM action, found ALLOW",
            good: "rules:\n- {}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: DENNY\nrules:\n- {}\n",
            severity: Error,
            field: "spec.action",
            line: 1,
            message: "invalid action DENNY; expected one of ALLOW, DENY, AUDIT, CUSTOM",
            good: "action: AUDIT\nrules:\n- {}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "selector:\n  matchLabels: {app: a}\ntargetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
            severity: Error,
            field: "spec",
            line: 0,
            message: "only one of targetRefs or workloadSelector can be set",
            good: "targetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "targetRef:\n  kind: Deployment\n  name: gw\n",
            severity: Error,
            field: "spec.targetRef.kind",
            line: 2,
            message: "targetRef must be to one of core/Service, networking.istio.io/ServiceEntry, \
                      gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass \
                      but was /Deployment",
            good: "targetRef:\n  kind: Service\n  name: gw\n",
        },
    ]);
}

#[test]
fn authorization_policy_rules() {
    run_security(&[
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- to:\n  - operation:\n      ports: [http]\n",
            severity: Error,
            field: "spec.rules[0].to[0].operation.ports[0]",
            line: 4,
            message: "bad port (http): ports are written as strings of digits, e.g. \"8080\"",
            good: "rules:\n- to:\n  - operation:\n      ports: [\"8080\"]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- from:\n  - source:\n      ipBlocks: [10.0.0.0/33]\n",
            severity: Error,
            field: "spec.rules[0].from[0].source.ipBlocks[0]",
            line: 4,
            message: "bad CIDR range (10.0.0.0/33)",
            good: "rules:\n- from:\n  - source:\n      ipBlocks: [10.0.0.0/8]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- from:\n  - source: {}\n",
            severity: Error,
            field: "spec.rules[0].from[0].source",
            line: 3,
            message: "`from.source` must not be empty, found at rule 0",
            good: "rules:\n- from:\n  - source: {namespaces: [foo]}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- from:\n  - {}\n",
            severity: Error,
            field: "spec.rules[0].from[0]",
            line: 3,
            message: "`from.source` must not be nil, found at rule 0",
            good: "rules:\n- from:\n  - source: {principals: [\"*\"]}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- to: []\n",
            severity: Error,
            field: "spec.rules[0].to",
            line: 2,
            message: "`to` must not be empty, found at rule 0",
            good: "rules:\n- to:\n  - operation: {methods: [GET]}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- to:\n  - operation: {}\n",
            severity: Error,
            field: "spec.rules[0].to[0].operation",
            line: 3,
            message: "`to.operation` must not be empty, found at rule 0",
            good: "rules:\n- to:\n  - operation: {hosts: [\"*.example.com\"]}\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- from:\n  - source:\n      principals: [\"\"]\n",
            severity: Error,
            field: "spec.rules[0].from[0].source.principals[0]",
            line: 4,
            message: "empty value not allowed, found in Principals",
            good: "rules:\n- from:\n  - source:\n      principals: [cluster.local/ns/a/sa/b]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- to:\n  - operation:\n      paths: [\"/{*}/foo/{bar}\"]\n",
            severity: Error,
            field: "spec.rules[0].to[0].operation.paths[0]",
            line: 4,
            message: "invalid or unsupported path /{*}/foo/{bar}, found in Paths: contains '{' or '}' beyond a supported path template",
            good: "rules:\n- to:\n  - operation:\n      paths: [\"/{*}/foo/{**}\"]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- when:\n  - key: request.method\n    values: [GET]\n",
            severity: Error,
            field: "spec.rules[0].when[0].values",
            line: 4,
            message: "invalid `value` for `key` request.method: unknown attribute: request.method",
            good: "rules:\n- when:\n  - key: request.headers[x-method]\n    values: [GET]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- when:\n  - key: request.headers[]\n    values: [a]\n",
            severity: Error,
            field: "spec.rules[0].when[0].values",
            line: 4,
            message: "invalid `value` for `key` request.headers[]: bad key (request.headers[]): \
                      should have format a[b]",
            good: "rules:\n- when:\n  - key: connection.sni\n    values: [a.com]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- when:\n  - key: destination.labels[app]\n    notValues: [a]\n",
            severity: Error,
            field: "spec.rules[0].when[0].notValues",
            line: 4,
            message: "invalid `notValue` for `key` destination.labels[app]: attribute \
                      destination.labels[app] is replaced by the workload selector",
            good: "rules:\n- when:\n  - key: destination.port\n    notValues: [\"9090\"]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "rules:\n- when:\n  - key: source.ip\n",
            severity: Error,
            field: "spec.rules[0].when[0]",
            line: 3,
            message: "at least one of `values` or `notValues` must be set for key source.ip",
            good: "rules:\n- when:\n  - key: source.ip\n    values: [10.1.2.3]\n",
        },
        Case {
            kind: "AuthorizationPolicy",
            bad: "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/admin]\n",
            severity: Warning,
            field: "spec.rules[0]",
            line: 3,
            message: "configured AuthorizationPolicy will deny all traffic to TCP ports under its \
                      scope due to the use of only HTTP attributes in a DENY rule; it is \
                      recommended to explicitly specify the port",
            good: "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/admin]\n      ports: [\"8000\"]\n",
        },
    ]);
}
