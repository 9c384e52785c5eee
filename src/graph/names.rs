use std::collections::HashSet;

use crate::onnx::pb::{GraphProto, ModelProto};

/// Allocates tensor or node names that collide with nothing already in the model.
#[derive(Debug, Clone, Default)]
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    /// Every tensor and node name of the model, in every graph and function, counts as taken:
    /// a new name must not shadow one a subgraph uses either.
    pub fn of_model(model: &ModelProto) -> Self {
        let mut names = Names::default();
        if let Some(g) = &model.graph {
            names.add_graph(g);
        }
        for f in &model.functions {
            names.used.extend(f.input.iter().cloned());
            names.used.extend(f.output.iter().cloned());
            for node in &f.node {
                names.add_node(node);
            }
        }
        names
    }

    fn add_graph(&mut self, g: &GraphProto) {
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            self.used.insert(v.name().to_string());
        }
        for t in &g.initializer {
            self.used.insert(t.name().to_string());
        }
        for s in &g.sparse_initializer {
            if let Some(v) = &s.values {
                self.used.insert(v.name().to_string());
            }
        }
        for node in &g.node {
            self.add_node(node);
        }
    }

    fn add_node(&mut self, node: &crate::onnx::pb::NodeProto) {
        self.used.insert(node.name().to_string());
        self.used.extend(node.input.iter().cloned());
        self.used.extend(node.output.iter().cloned());
        for (_, g) in crate::onnx::attr::subgraphs(node) {
            self.add_graph(g);
        }
    }

    /// Whether `name` is taken.
    pub fn contains(&self, name: &str) -> bool {
        self.used.contains(name)
    }

    /// `base` itself when free, otherwise `base_1`, `base_2`… — the first free one, now taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut k = 0u64;
        while candidate.is_empty() || self.used.contains(&candidate) {
            k += 1;
            candidate = format!("{base}_{k}");
        }
        self.used.insert(candidate.clone());
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_never_collide() {
        let mut names = Names::default();
        names.used.insert("x".into());
        names.used.insert("x_1".into());
        assert_eq!(names.fresh("x"), "x_2");
        assert_eq!(names.fresh("x"), "x_3");
        assert_eq!(names.fresh("y"), "y");
        assert_eq!(names.fresh("y"), "y_1");
        assert_eq!(names.fresh(""), "_1");
    }
}
