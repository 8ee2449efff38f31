//! `SimError`: everything that can go wrong, each variant naming the file (and where known
//! the line and column) so the user can fix the input.

use std::path::PathBuf;

/// An error of the simulator. Input errors are detected before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A malformed scenario or trace: bad syntax, a bad value, an absurd size.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (a character for TOML, a field number for CSV).
        column: usize,
        message: String,
    },
    /// A trace whose header names columns the format does not have.
    #[error(
        "{}:{line}: unknown column{} {} for the {format} trace format (known columns: {})",
        path.display(),
        if columns.len() == 1 { "" } else { "s" },
        columns.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", "),
        expected.join(", ")
    )]
    UnknownColumns {
        path: PathBuf,
        line: usize,
        format: &'static str,
        columns: Vec<String>,
        expected: Vec<&'static str>,
    },
    /// A file that could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A results file (`results.json`) that is not what `sim run` writes.
    #[error("{}: not a simulation results file: {source}", path.display())]
    Results {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Arguments or inputs that do not make sense together.
    #[error("{0}")]
    Usage(String),
}

impl SimError {
    /// An I/O error while doing `action` (`read`, `write`, `create`) on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SimError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// 1-based (line, column) of byte offset `at` in `src`, column counted in characters.
pub(crate) fn line_col(src: &str, at: usize) -> (usize, usize) {
    let at = at.min(src.len());
    let before = src.get(..at).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 4), (1, 5));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn messages_name_the_place() {
        let e = SimError::Parse {
            path: "s.toml".into(),
            line: 3,
            column: 7,
            message: "cpu is absurd".into(),
        };
        assert_eq!(e.to_string(), "s.toml:3:7: cpu is absurd");
        let e = SimError::UnknownColumns {
            path: "t.csv".into(),
            line: 1,
            format: "azure",
            columns: vec!["foo".into(), "bar".into()],
            expected: vec!["vmid", "vmcreated"],
        };
        assert_eq!(
            e.to_string(),
            "t.csv:1: unknown columns \"foo\", \"bar\" for the azure trace format (known columns: vmid, vmcreated)"
        );
    }
}
