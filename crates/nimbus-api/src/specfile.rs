//! The TOML spec file read by `nimbus apply -f FILE`: one or more `[[instance]]` tables
//! with human units (`memory = "64Mi"`, `cpu = 0.5`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::instance::{CreateInstance, InstanceKind, InstanceSpec, RestartPolicy};
use crate::units::{parse_cpu_millis, parse_memory_mib};

/// A whole spec file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    #[serde(default)]
    pub instance: Vec<InstanceEntry>,
}

/// A number or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Quantity {
    fn as_text(&self) -> String {
        match self {
            Quantity::Int(i) => i.to_string(),
            Quantity::Float(f) => f.to_string(),
            Quantity::Text(s) => s.clone(),
        }
    }
}

/// One `[[instance]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEntry {
    pub name: String,
    #[serde(default)]
    pub kind: InstanceKind,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Cores: `0.5`, `2` or `"500m"`.
    pub cpu: Quantity,
    /// `"64Mi"`, `"2Gi"`.
    pub memory: Quantity,
    #[serde(default)]
    pub disk: Option<Quantity>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub expected_runtime_secs: Option<u64>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// VMs: image name.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// VMs: `["8080:80", "22"]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// VMs: user-data text.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// `none`, `restart` or `cold`.
    #[serde(default)]
    pub ha: Option<crate::instance::HaPolicy>,
    /// `"30s"`, `"5m"`.
    #[serde(default)]
    pub backup_every: Option<String>,
    /// `"tcp:8080"`, `"http:8080/healthz"`.
    #[serde(default)]
    pub health_check: Option<String>,
}

impl InstanceEntry {
    /// Converts to the API's create request, parsing units.
    pub fn to_create(&self) -> Result<CreateInstance, String> {
        let ctx = |e: String| format!("instance {:?}: {e}", self.name);
        let cpu_millis = parse_cpu_millis(&self.cpu.as_text()).map_err(ctx)?;
        let memory_mib = parse_memory_mib(&self.memory.as_text()).map_err(ctx)?;
        let disk_mib = match &self.disk {
            Some(d) => parse_memory_mib(&d.as_text()).map_err(ctx)?,
            None => 0,
        };
        Ok(CreateInstance {
            name: self.name.clone(),
            spec: InstanceSpec {
                kind: self.kind,
                command: self.command.clone(),
                env: self.env.clone(),
                workdir: self.workdir.clone(),
                cpu_millis,
                memory_mib,
                disk_mib,
                restart: self.restart,
                priority: self.priority,
                expected_runtime_secs: self.expected_runtime_secs,
                node_selector: self.node_selector.clone(),
                image: self.image.clone(),
                disk_image: None,
                vcpus: self.vcpus,
                ports: self
                    .ports
                    .iter()
                    .map(|p| p.parse())
                    .collect::<Result<_, _>>()
                    .map_err(ctx)?,
                user_data: self.user_data.clone(),
                ssh_authorized_keys: self.ssh_authorized_keys.clone(),
                ha: self.ha,
                backup_every_secs: self
                    .backup_every
                    .as_deref()
                    .map(crate::units::parse_duration_secs)
                    .transpose()
                    .map_err(ctx)?,
                health_check: self
                    .health_check
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(ctx)?,
            },
        })
    }
}

/// Parses spec file text. Errors name the file, line and column.
pub fn parse_spec_file(path: &str, text: &str) -> Result<Vec<CreateInstance>, String> {
    let file: SpecFile = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        format!("{path}:{line}:{col}: {}", e.message())
    })?;
    if file.instance.is_empty() {
        return Err(format!(
            "{path}: no [[instance]] table found; see examples/web.toml"
        ));
    }
    file.instance
        .iter()
        .map(|i| i.to_create().map_err(|e| format!("{path}: {e}")))
        .collect()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example() {
        let text = r#"
[[instance]]
name = "web"
command = ["python3", "-m", "http.server", "9000"]
cpu = 0.5
memory = "64Mi"
restart = "on-failure"
"#;
        let v = parse_spec_file("web.toml", text).unwrap();
        assert_eq!(v[0].spec.cpu_millis, 500);
        assert_eq!(v[0].spec.memory_mib, 64);
        assert_eq!(v[0].spec.restart, RestartPolicy::OnFailure);
    }

    #[test]
    fn syntax_error_has_position() {
        let text = "[[instance]]\nname = \"web\nmemory = 1\n";
        let e = parse_spec_file("bad.toml", text).unwrap_err();
        assert!(e.starts_with("bad.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = "[[instance]]\nname = \"web\"\ncpu = 1\nmemory = \"1Gi\"\nmemroy = 3\n";
        let e = parse_spec_file("x.toml", text).unwrap_err();
        assert!(e.contains("memroy"), "{e}");
        assert!(e.starts_with("x.toml:5:"), "{e}");
    }
}
