//! What a run writes: one JSON object per shape appended to
//! `results.jsonl`, and `latest.md`, the table of this run, rewritten.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

/// One figure against its target.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub figure: String,
    pub target: String,
    pub value: String,
    /// `None`: reported, no target to meet.
    pub met: Option<bool>,
}

impl Verdict {
    pub fn new(
        figure: impl Into<String>,
        target: impl Into<String>,
        value: impl Into<String>,
        met: Option<bool>,
    ) -> Verdict {
        Verdict {
            figure: figure.into(),
            target: target.into(),
            value: value.into(),
            met,
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "reported",
        }
    }
}

/// One shape's results.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub record: Value,
    pub rows: Vec<Verdict>,
}

impl Shape {
    /// `record` is the shape's typed record; it is kept as JSON, the
    /// form every consumer of `results.jsonl` reads.
    pub fn new(name: &str, record: &impl Serialize, rows: Vec<Verdict>) -> Shape {
        Shape {
            name: name.to_string(),
            record: serde_json::to_value(record).expect("a bench record serialises"),
            rows,
        }
    }
}

/// Everything one `weir bench` invocation measured.
pub struct Run {
    /// What every record carries: run id, time, machine, server, ceiling.
    pub header: Value,
    pub shapes: Vec<Shape>,
}

impl Run {
    /// The JSON line of one shape.
    fn line(&self, shape: &Shape) -> Value {
        let mut line = json!({ "shape": shape.name });
        let object = line.as_object_mut().expect("an object");
        if let Value::Object(header) = &self.header {
            object.extend(header.clone());
        }
        object.insert("figures".into(), shape.record.clone());
        object.insert(
            "targets".into(),
            serde_json::to_value(&shape.rows).expect("verdicts serialise"),
        );
        line
    }

    /// Appends the JSON lines and rewrites `latest.md` under `out`.
    pub fn write(&self, out: &Path) -> Result<(), String> {
        std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
        let jsonl = out.join("results.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl)
            .map_err(|e| format!("opening {}: {e}", jsonl.display()))?;
        for shape in &self.shapes {
            let line = serde_json::to_string(&self.line(shape)).expect("JSON serialises");
            writeln!(file, "{line}").map_err(|e| format!("writing {}: {e}", jsonl.display()))?;
        }
        let md = out.join("latest.md");
        std::fs::write(&md, self.markdown())
            .map_err(|e| format!("writing {}: {e}", md.display()))?;
        Ok(())
    }

    /// The table of every figure of this run against its target.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("| shape | figure | target | measured | |\n|---|---|---|---|---|\n");
        for shape in &self.shapes {
            for row in &shape.rows {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    shape.name,
                    row.figure,
                    row.target,
                    row.value,
                    row.verdict()
                );
            }
        }
        s
    }

    /// The whole `latest.md`.
    pub fn markdown(&self) -> String {
        let h = &self.header;
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        let mut s = String::new();
        s.push_str("# Latest `weir bench` run\n\n");
        s.push_str(
            "Written by `weir bench`; see [README.md](README.md) for how each figure is \
                    measured and [CHANGES.md](CHANGES.md) for the design changes and their \
                    before/after figures. Every record of every run is in \
                    [results.jsonl](results.jsonl).\n\n",
        );
        let _ = writeln!(s, "- command: `{}`", text(&h["command"]));
        let _ = writeln!(
            s,
            "- run: {} (id {}, commit {})",
            text(&h["at"]),
            text(&h["run"]),
            text(&h["git"])
        );
        let _ = writeln!(
            s,
            "- machine: {} cores, {} build{}",
            text(&h["cores"]),
            text(&h["build"]),
            if h["quick"] == true {
                ", **quick mode** (smaller shapes)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "- Postgres {} ({}): {}",
            text(&h["postgres"]["version"]),
            text(&h["server_kind"]),
            settings_line(&h["postgres"]["settings"])
        );
        if let Some(ceilings) = h["ceiling"].as_array() {
            for c in ceilings {
                let _ = writeln!(
                    s,
                    "- raw-SQL ceiling, {} clients, {:.0} s ({}): {:.0} jobs/s from Rust, {} through pgbench",
                    text(&c["clients"]),
                    c["seconds"].as_f64().unwrap_or(0.0),
                    text(&c["when"]),
                    c["rust_jobs_per_s"].as_f64().unwrap_or(0.0),
                    c["pgbench_jobs_per_s"]
                        .as_f64()
                        .map_or("not installed".to_string(), |r| format!("{r:.0} jobs/s"))
                );
            }
        }
        s.push_str(
            "\nEach speed is judged against the highest ceiling of the run (any client \
             count, either client). The server settings above are as found; the offered \
             load's rows say which `autovacuum_naptime` it ran with.\n\n",
        );
        s.push_str(&self.table());
        s
    }
}

fn settings_line(settings: &Value) -> String {
    let Some(map) = settings.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` with thousands separators.
pub fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Every key path of `record`'s JSON form (`a.b`; an array's first
/// element as `a[]`), sorted: what the key-set tests of each shape's
/// record compare with the keys the bench has always written.
#[cfg(test)]
pub fn key_paths(record: &impl Serialize) -> Vec<String> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.push(path.clone());
                    walk(&path, inner, out);
                }
            }
            Value::Array(items) => {
                if let Some(first) = items.first() {
                    if first.is_object() {
                        walk(&format!("{prefix}[]"), first, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(record).expect("serialises"),
        &mut out,
    );
    out.sort();
    out
}

/// `keys`, sorted, as owned strings: the expected side of a key-set test.
#[cfg(test)]
pub fn sorted(keys: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-4200.0), "-4,200");
    }

    #[test]
    fn a_missed_target_is_shown_as_missed() {
        let run = Run {
            header: json!({"command": "weir bench all"}),
            shapes: vec![Shape::new(
                "burn-down",
                &json!({}),
                vec![
                    Verdict::new("a", "<= 1", "2", Some(false)),
                    Verdict::new("b", "<= 1", "1", Some(true)),
                    Verdict::new("c", "reported", "7", None),
                ],
            )],
        };
        let table = run.table();
        assert!(
            table.contains("| burn-down | a | <= 1 | 2 | **missed** |"),
            "{table}"
        );
        assert!(table.contains("| b | <= 1 | 1 | met |"), "{table}");
        assert!(table.contains("| c | reported | 7 | reported |"), "{table}");
    }
}
