//! The sidecar's `--config` directory, and the resources the scenarios write into it (verbatim from
//! the seed documents where a seed shows them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::prereq::tools;
use crate::process::run_checked;

/// A directory of YAML files that the sidecar watches. Files are world-readable (the sidecar runs as
/// uid 1337). `write` replaces a file atomically (temporary name without a YAML extension, then
/// rename), as `kubectl apply` replaces an object whole.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    path: PathBuf,
}

impl ConfigDir {
    pub fn create(path: &Path) -> ConfigDir {
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        ConfigDir {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes (or atomically replaces) `name`.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self
            .path
            .join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        let dst = self.file(name);
        std::fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename to {}: {e}", dst.display()));
    }

    /// Deletes `name` (like `kubectl delete -f`); panics if it does not exist.
    pub fn remove(&self, name: &str) {
        let p = self.file(name);
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }

    /// Updates the modification time of `name` without changing it.
    pub fn touch(&self, name: &str) {
        let p = self.file(name);
        let f = std::fs::File::options()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        f.set_modified(std::time::SystemTime::now())
            .unwrap_or_else(|e| panic!("touch {}: {e}", p.display()));
    }

    /// Runs `sed -i <script> <file>` (as seed 001 edits the mesh ConfigMap with sed).
    pub fn sed_in_place(&self, name: &str, script: &str) {
        let p = self.file(name);
        run_checked(
            "sed -i",
            Command::new(&tools().sed).arg("-i").arg(script).arg(&p),
        );
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644));
    }

    pub fn read(&self, name: &str) -> String {
        let p = self.file(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }
}

/// The `istio` ConfigMap in `istio-system` with `outboundTrafficPolicy.mode` set to `mode`
/// (`ALLOW_ANY` / `REGISTRY_ONLY`) and the access log on stdout (as Istio's demo profile has it),
/// plus any further MeshConfig lines in `extra` (each a top-level MeshConfig line, unindented).
pub fn mesh_configmap(mode: &str, extra: &str) -> String {
    let mut mesh = format!("accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: {mode}\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        mesh.push_str(line);
        mesh.push('\n');
    }
    let indented: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n{indented}"
    )
}

/// Seed 000 / 001: the ServiceEntry for the external HTTP service, exactly as written.
pub const SE_HTTPBIN_EXT: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
";

/// Seed 000: the ServiceEntry and VirtualService (`tls` with `sni_hosts`) for www.google.com,
/// exactly as written, in one multi-document file.
pub const SE_VS_GOOGLE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  tls:
  - match:
    - port: 443
      sni_hosts:
      - www.google.com
    route:
    - destination:
        host: www.google.com
        port:
          number: 443
      weight: 100
";

/// Seed 001: the 3 s timeout on httpbin.org, exactly as written.
pub const VS_HTTPBIN_TIMEOUT_3S: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
    - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
";

/// Seed 002: the 0.5 s timeout on httpbin.org (v1beta1, `exportTo: ["."]`), exactly as written.
pub const VS_HTTPBIN_TIMEOUT_05S: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin.org
  exportTo:
  - \".\"
  http:
  - timeout: 0.5s
    route:
      - destination:
          host: httpbin.org
        weight: 100
";

/// A VirtualService for httpbin.org with the given timeout (e.g. `1s`), same shape as the seeds'.
pub fn vs_httpbin_timeout(timeout: &str) -> String {
    VS_HTTPBIN_TIMEOUT_3S.replace("timeout: 3s", &format!("timeout: {timeout}"))
}

/// Puts every resource of a (multi-document) YAML text into namespace `ns`, as `kubectl apply -n NS`
/// does: a `namespace:` line is inserted after each top-level `metadata:` line that has none. The
/// rest of the text is left exactly as written.
pub fn in_namespace(yaml: &str, ns: &str) -> String {
    let mut out = String::new();
    for doc in yaml.split_inclusive("\n---\n") {
        let has_ns = doc.lines().any(|l| l.starts_with("  namespace:"));
        for line in doc.split_inclusive('\n') {
            out.push_str(line);
            if !has_ns && line.trim_end() == "metadata:" {
                out.push_str(&format!("  namespace: {ns}\n"));
            }
        }
    }
    out
}

/// Seed 004: the DestinationRule with subset version-v3, exactly as written.
pub const DR_RECOMMENDATION_V3: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: recommendation
spec:
  host: recommendation
  subsets:
  - labels:
      version: v3
    name: version-v3
";

/// Seed 004: 100 % of recommendation's traffic to subset version-v3, exactly as written.
pub const VS_RECOMMENDATION_V3: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: recommendation
spec:
  hosts:
  - recommendation
  http:
  - route:
    - destination:
        host: recommendation
        subset: version-v3
      weight: 100
";

/// Seed 004: the ServiceEntry for worldclockapi.com with the wrong port 81 (on purpose), exactly
/// as written.
pub const SE_WORLDCLOCK_PORT81: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: worldclockapi-egress-rule
spec:
  hosts:
  - worldclockapi.com
  ports:
  - name: http-80
    number: 81
    protocol: http
";

/// Seed 004: the ServiceEntry fixed to port 80, exactly as written.
pub const SE_WORLDCLOCK_PORT80: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: worldclockapi-egress-rule
spec:
  hosts:
  - worldclockapi.com
  ports:
  - name: http-80
    number: 80
    protocol: http
";

/// Seed 004: the 3 s timeout towards worldclockapi.com, exactly as written.
pub const VS_WORLDCLOCK_TIMEOUT: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: worldclockapi-timeout
spec:
  hosts:
  - worldclockapi.com
  http:
  - timeout: 3s
    route:
    - destination:
        host: worldclockapi.com
      weight: 100
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_configmap_shape() {
        let y = mesh_configmap("REGISTRY_ONLY", "accessLogEncoding: JSON");
        assert_eq!(
            y,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n    \
             accessLogFile: /dev/stdout\n    outboundTrafficPolicy:\n      mode: REGISTRY_ONLY\n    accessLogEncoding: JSON\n"
        );
    }

    #[test]
    fn namespace_inserted_once_per_document() {
        let two = format!("{DR_RECOMMENDATION_V3}---\n{VS_RECOMMENDATION_V3}");
        let y = in_namespace(&two, "tutorial");
        assert_eq!(
            y.matches("metadata:\n  namespace: tutorial\n  name: recommendation\n")
                .count(),
            2,
            "{y}"
        );
        assert_eq!(in_namespace(&y, "other"), y);
        assert_eq!(
            y.replace("  namespace: tutorial\n", ""),
            two,
            "nothing else changes"
        );
    }

    #[test]
    fn timeout_variant() {
        assert!(vs_httpbin_timeout("1s").contains("  - timeout: 1s\n"));
    }
}
