//! What is wrong with a resource file, said so an operator can find and fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Whether a problem kept something out of force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Loaded, but probably not what was meant (e.g. it can match nothing).
    Warning,
    /// Refused: the file (or this definition) is not in force.
    Error,
}

/// One problem, located as precisely as is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The file (or the directory, for problems reading it).
    pub file: PathBuf,
    /// 1-based index among the file's non-empty YAML documents, when the
    /// problem is in one and the resource cannot be named.
    pub document: Option<usize>,
    /// `Kind namespace/name` (or `Kind name` when cluster-scoped).
    pub resource: Option<String>,
    /// Where in the object, e.g. `spec.meshTLS` or `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem with a whole file or directory.
    pub fn error(file: &Path, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            file: file.to_path_buf(),
            document: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// One line: `file: [resource | document N]: [field]: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        match (&self.resource, self.document) {
            (Some(r), _) => write!(f, "{r}: ")?,
            (None, Some(d)) => write!(f, "document {d}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}
