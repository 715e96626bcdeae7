//! promtool, Prometheus' rule checker and rule unit tester, built from the pinned Prometheus
//! module by tools/promtool.sh (`make test` exports `ABC_PROMTOOL`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The promtool binary: `ABC_PROMTOOL`, or the one tools/promtool.sh builds (once, cached).
pub fn promtool() -> PathBuf {
    if let Ok(path) = std::env::var("ABC_PROMTOOL") {
        return path.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/promtool.sh");
    let out = Command::new(script)
        .output()
        .expect("tools/promtool.sh runs");
    assert!(
        out.status.success(),
        "building promtool failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs `promtool ARGS` in `dir`; its exit status and its output (stdout and stderr).
pub fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("promtool runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One sample of a Prometheus text exposition: metric name, labels (in the exposition's
/// order) and value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The series as promtool's `input_series` names it, with `extra` labels added where the
    /// sample has none of that name (a scrape with `honorLabels: true`).
    pub fn series(&self, extra: &[(&str, &str)]) -> String {
        let mut labels = self.labels.clone();
        for (k, v) in extra {
            if !labels.iter().any(|(l, _)| l == k) {
                labels.push((k.to_string(), v.to_string()));
            }
        }
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{}{{{}}}", self.name, inner.join(","))
    }
}

/// The samples of a Prometheus (or OpenMetrics) text exposition.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), vec![]),
                Some((name, rest)) => (
                    name.to_string(),
                    parse_labels(rest.strip_suffix('}').expect("labels end with }")),
                ),
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = vec![];
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim().to_string();
        if name.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((name, value));
    }
}
