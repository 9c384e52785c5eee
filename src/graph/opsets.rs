use std::collections::BTreeMap;

use crate::onnx::pb::OperatorSetIdProto;

/// Imported operator-set versions by domain, with `""` and `"ai.onnx"` treated as one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opsets {
    versions: BTreeMap<String, i64>,
}

/// The canonical spelling of the default domain.
pub fn canonical_domain(domain: &str) -> &str {
    if domain == "ai.onnx" {
        ""
    } else {
        domain
    }
}

impl Opsets {
    /// From a model's (or function's) `opset_import` list.
    pub fn new(imports: &[OperatorSetIdProto]) -> Self {
        let versions = imports
            .iter()
            .map(|o| (canonical_domain(o.domain()).to_string(), o.version()))
            .collect();
        Opsets { versions }
    }

    /// The imported version of `domain`, `None` when the domain is not imported.
    pub fn version(&self, domain: &str) -> Option<i64> {
        self.versions.get(canonical_domain(domain)).copied()
    }

    /// The default-domain version, `None` when it is not imported.
    pub fn default_domain(&self) -> Option<i64> {
        self.version("")
    }

    /// Every imported domain with its version, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.versions.iter().map(|(d, v)| (d.as_str(), *v))
    }
}
