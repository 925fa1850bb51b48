//! Spec errors: each names the field path and says what is wrong in plain English.

use std::fmt;

/// One problem with a spec, e.g. `replicas: must be between 0 and 10000, got -1`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// Dotted path of the field (`health.http.port`, `ports[1].name`); empty for the whole spec.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

/// Every problem found in a spec, in the order of the document's fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecErrors(pub Vec<FieldError>);

impl SpecErrors {
    /// One error at `path`.
    pub fn single(path: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecErrors(vec![FieldError {
            path: path.into(),
            reason: reason.into(),
        }])
    }

    /// The errors, in document order.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Collects errors while walking a document, so validation reports all of them.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    errors: Vec<FieldError>,
}

impl Collector {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Keeps the value when it is `Ok`, records the error at `path` otherwise.
    pub(crate) fn take<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(reason) => {
                self.push(path, reason);
                None
            }
        }
    }

    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, SpecErrors> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ if self.errors.is_empty() => Err(SpecErrors::single(
                "",
                "spec is invalid (no further detail)",
            )),
            _ => Err(SpecErrors(self.errors)),
        }
    }
}
