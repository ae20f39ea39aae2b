//! The generated Istio message types, with their proto3 JSON (serde) impls.

/// Lints that the generated code does not follow; scoped to these modules.
macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            missing_docs,
            rustdoc::all,
            unreachable_pub,
            unused_qualifications
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
            include!(concat!(env!("OUT_DIR"), "/", $file, ".serde.rs"));
        }
    };
}

pub mod istio {
    pub mod mcp {
        generated!(v1alpha1, "istio.mcp.v1alpha1");
    }
    pub mod r#type {
        // prost escapes the keyword in the file name too.
        generated!(v1beta1, "istio.r#type.v1beta1");
    }
    pub mod networking {
        generated!(v1alpha3, "istio.networking.v1alpha3");
    }
    pub mod security {
        generated!(v1beta1, "istio.security.v1beta1");
    }
    pub mod mesh {
        generated!(v1alpha1, "istio.mesh.v1alpha1");
    }
    pub mod telemetry {
        generated!(v1alpha1, "istio.telemetry.v1alpha1");
    }
    /// Istio's certificate service (`istio.v1.auth`).
    pub mod v1 {
        generated!(auth, "istio.v1.auth");
    }
}
