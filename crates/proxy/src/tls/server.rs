//! What a rustls server configuration takes from settings and from sluice's own policy: protocol
//! versions and cipher suites as Istio names them, and the preferences every TLS server of sluice
//! applies (server cipher order, session resumption).

use rustls::crypto::{ring, CryptoProvider};
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use sluice_model::gateway::{ServerTls, TlsVersion};

/// What every TLS server of sluice does beyond its settings:
/// - the server's cipher-suite order wins over the client's for TLS 1.2 (as Envoy, which lists
///   ECDHE-ECDSA/RSA with AES-GCM and ChaCha20 first): a client cannot steer the handshake to the
///   weakest suite both allow. TLS 1.3 suites are all AEAD.
/// - resumption: stateless tickets (TLS 1.2 tickets and TLS 1.3 PSK tickets, from rustls's
///   rotating ticketer, a new key every 6 hours) plus rustls's in-memory session-ID cache for
///   clients that do not take tickets. Like Envoy, tickets are per process: a restarted or another
///   replica falls back to a full handshake.
pub(crate) fn apply_server_preferences(config: &mut ServerConfig) {
    config.ignore_client_order = true;
    match ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Only fails without a working random source; resumption by session ID still works.
        Err(e) => tracing::warn!("TLS session tickets unavailable: {e}"),
    }
}

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls10 => "TLSV1_0",
        TlsVersion::Tls11 => "TLSV1_1",
        TlsVersion::Tls12 => "TLSV1_2",
        TlsVersion::Tls13 => "TLSV1_3",
    }
}

/// `minProtocolVersion` / `maxProtocolVersion` as rustls versions. rustls has TLS 1.2 and 1.3
/// only, so a minimum of 1.0 or 1.1 means 1.2; the default minimum is 1.2, as in Istio.
pub(crate) fn protocol_versions(
    tls: &ServerTls,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let min = tls
        .min_version
        .unwrap_or(TlsVersion::Tls12)
        .max(TlsVersion::Tls12);
    let max = tls.max_version.unwrap_or(TlsVersion::Tls13);
    if max < TlsVersion::Tls12 {
        return Err(format!(
            "maxProtocolVersion {} is older than TLSV1_2, the oldest version sluice supports",
            version_name(max)
        ));
    }
    if min > max {
        return Err(format!(
            "minProtocolVersion {} is newer than maxProtocolVersion {}",
            version_name(min),
            version_name(max)
        ));
    }
    let mut versions = Vec::with_capacity(2);
    if max >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// The ring provider limited to `cipherSuites` (all of ring's suites when empty). TLS 1.3
/// suites are always kept, as in Envoy, whose cipher list only applies to TLS 1.2.
pub(crate) fn provider_for(cipher_suites: &[String]) -> Result<CryptoProvider, String> {
    let default = ring::default_provider();
    if cipher_suites.is_empty() {
        return Ok(default);
    }
    let mut suites: Vec<SupportedCipherSuite> = default
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    // OpenSSL's `[A|B]` equal-preference groups (as in Envoy's default list) are flattened.
    let names = cipher_suites
        .iter()
        .flat_map(|entry| entry.trim_matches(|c| c == '[' || c == ']').split('|'))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in names {
        match cipher_suite(name) {
            CipherName::Suite(suite) => {
                if !suites.iter().any(|s| s.suite() == suite.suite()) {
                    suites.push(suite);
                }
            }
            CipherName::Tls13 => {}
            CipherName::Unsupported => tracing::warn!(
                "cipher suite {name} is not implemented by rustls (CBC, RSA key exchange or \
                 PSK); it is ignored"
            ),
            CipherName::Unknown => {
                return Err(format!(
                    "unknown cipher suite {name:?} in cipherSuites (expected names such as \
                     ECDHE-RSA-AES128-GCM-SHA256)"
                ))
            }
        }
    }
    Ok(CryptoProvider {
        cipher_suites: suites,
        ..default
    })
}

enum CipherName {
    Suite(SupportedCipherSuite),
    /// A TLS 1.3 suite: always enabled anyway.
    Tls13,
    /// Known to OpenSSL/Envoy, not implemented by rustls.
    Unsupported,
    Unknown,
}

/// Envoy/OpenSSL cipher names (and the IANA names of the same suites).
fn cipher_suite(name: &str) -> CipherName {
    use ring::cipher_suite as cs;
    let suite = match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-RSA-AES128-GCM-SHA256" | "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-ECDSA-AES256-GCM-SHA384" | "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-RSA-AES256-GCM-SHA384" | "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-ECDSA-CHACHA20-POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-CHACHA20-POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return CipherName::Tls13
        }
        "AES128-SHA"
        | "AES256-SHA"
        | "AES128-SHA256"
        | "AES256-SHA256"
        | "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "DES-CBC3-SHA"
        | "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "ECDHE-ECDSA-AES128-SHA256"
        | "ECDHE-RSA-AES128-SHA256"
        | "ECDHE-ECDSA-AES256-SHA384"
        | "ECDHE-RSA-AES256-SHA384"
        | "PSK-AES128-CBC-SHA"
        | "PSK-AES256-CBC-SHA"
        | "PSK-CHACHA20-POLY1305"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-AES256-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305" => return CipherName::Unsupported,
        _ => return CipherName::Unknown,
    };
    CipherName::Suite(suite)
}

#[cfg(test)]
mod tests {
    use sluice_model::gateway::{Credential, ServerTlsMode};

    use super::*;

    fn tls(min: Option<TlsVersion>, max: Option<TlsVersion>) -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Simple,
            https_redirect: false,
            credential: Credential::None,
            min_version: min,
            max_version: max,
            cipher_suites: vec![],
            subject_alt_names: vec![],
        }
    }

    #[test]
    fn versions_follow_istio_defaults_and_rustls_limits() {
        let v = |min, max| {
            protocol_versions(&tls(min, max))
                .map(|v| v.iter().map(|v| v.version).collect::<Vec<_>>())
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v(None, None).unwrap(), vec![TLSv1_3, TLSv1_2]);
        assert_eq!(
            v(Some(TlsVersion::Tls10), None).unwrap(),
            vec![TLSv1_3, TLSv1_2]
        );
        assert_eq!(v(Some(TlsVersion::Tls13), None).unwrap(), vec![TLSv1_3]);
        assert_eq!(v(None, Some(TlsVersion::Tls12)).unwrap(), vec![TLSv1_2]);
        assert!(v(None, Some(TlsVersion::Tls11))
            .unwrap_err()
            .contains("TLSV1_1"));
        assert!(v(Some(TlsVersion::Tls13), Some(TlsVersion::Tls12)).is_err());
    }

    #[test]
    fn cipher_names_map_to_rustls_suites() {
        let p = provider_for(&["ECDHE-RSA-AES128-GCM-SHA256".into()]).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        assert_eq!(
            p.cipher_suites.len(),
            4,
            "the three TLS 1.3 suites are always kept"
        );
        let grouped = provider_for(&[
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into(),
            "AES128-SHA".into(),
        ])
        .unwrap();
        assert_eq!(grouped.cipher_suites.len(), 5);
        let err = provider_for(&["ECDHE-RSA-NOPE".into()]).unwrap_err();
        assert!(err.contains("ECDHE-RSA-NOPE"), "{err}");
    }
}
