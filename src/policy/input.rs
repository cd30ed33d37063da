//! Per-workflow checks on the execution input: a size bound and a JSON Schema (2020-12).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One way the input failed its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InputViolation {
    /// JSON Pointer into the input (`""` is the input itself).
    pub path: String,
    pub message: String,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the input is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the input does not match the workflow's schema")]
    Invalid(Vec<InputViolation>),
}

/// Why a workflow's input schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("set input_schema or input_schema_file, not both")]
    BothGiven,
    #[error("cannot read {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the schema is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The compiler's message (its error borrows the document, so it is kept as text).
    #[error("invalid JSON Schema: {0}")]
    Invalid(String),
}

/// A workflow's input rules.
#[derive(Clone, Default)]
pub struct InputRules {
    pub max_bytes: Option<usize>,
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// The schema document, as configured (shown to callers that may trigger the workflow).
    pub schema_document: Option<Value>,
}

impl std::fmt::Debug for InputRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputRules")
            .field("max_bytes", &self.max_bytes)
            .field("schema", &self.schema_document)
            .finish()
    }
}

impl InputRules {
    /// Compiles the schema from inline JSON text or a file (not both).
    pub fn load(
        max_bytes: Option<usize>,
        inline: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Self, SchemaError> {
        let text = match (inline, file) {
            (Some(_), Some(_)) => return Err(SchemaError::BothGiven),
            (Some(text), None) => Some(text.to_owned()),
            (None, Some(path)) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| SchemaError::Read {
                        path: path.to_owned(),
                        error,
                    })?,
                )
            }
            (None, None) => None,
        };
        let Some(text) = text else {
            return Ok(Self {
                max_bytes,
                ..Self::default()
            });
        };
        let document: Value = serde_json::from_str(&text).map_err(SchemaError::NotJson)?;
        let validator = jsonschema::draft202012::new(&document)
            .map_err(|e| SchemaError::Invalid(e.to_string()))?;
        Ok(Self {
            max_bytes,
            schema: Some(Arc::new(validator)),
            schema_document: Some(document),
        })
    }

    /// Checks `input` (valid JSON text).
    pub fn check(&self, input: &str) -> Result<(), InputError> {
        if let Some(limit) = self.max_bytes
            && input.len() > limit
        {
            return Err(InputError::TooLarge { limit });
        }
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let Ok(value) = serde_json::from_str::<Value>(input) else {
            return Err(InputError::Invalid(vec![InputViolation {
                path: String::new(),
                message: "not JSON".into(),
            }]));
        };
        let violations: Vec<InputViolation> = schema
            .iter_errors(&value)
            .map(|e| InputViolation {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(InputError::Invalid(violations))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "object", "required": ["order_id"], "additionalProperties": false,
        "properties": {"order_id": {"type": "string"}, "amount_cents": {"type": "integer", "minimum": 1}}}"#;

    #[test]
    fn each_failing_path_is_reported() -> Result<(), Box<dyn std::error::Error>> {
        let rules = InputRules::load(None, Some(SCHEMA), None)?;
        assert_eq!(
            rules.check(r#"{"order_id": "A-1", "amount_cents": 5}"#),
            Ok(())
        );
        let Err(InputError::Invalid(violations)) =
            rules.check(r#"{"amount_cents": 0, "extra": true}"#)
        else {
            return Err("expected violations".into());
        };
        let mut paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, vec!["", "", "/amount_cents"], "{violations:?}");
        Ok(())
    }

    #[test]
    fn size_is_checked_before_the_schema() -> Result<(), Box<dyn std::error::Error>> {
        let rules = InputRules::load(Some(10), Some(SCHEMA), None)?;
        assert_eq!(
            rules.check(r#"{"order_id": "A-1"}"#),
            Err(InputError::TooLarge { limit: 10 })
        );
        Ok(())
    }

    #[test]
    fn broken_schemas_are_refused_at_load() {
        assert!(InputRules::load(None, Some("{"), None).is_err());
        assert!(InputRules::load(None, Some(r#"{"type": 5}"#), None).is_err());
        assert!(InputRules::load(None, Some("{}"), Some(Path::new("x.json"))).is_err());
    }
}
