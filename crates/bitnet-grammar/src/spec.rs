//! What a request asks the output to be: [`ConstraintSpec`], read from OpenAI's `response_format` or
//! given as a Lark grammar, and turned into an llguidance grammar.

use llguidance::api::TopLevelGrammar;
use serde_json::{Value, json};

use crate::GrammarError;

/// The separators JSON output uses: those of Python's `json.dumps` (`", "` and `": "`), with no other
/// whitespace. A grammar that allowed free whitespace would let a weak model pad the output with
/// newlines until it runs out of tokens.
fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// A constraint on the output, before it is compiled for a vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid under `schema` (`response_format: {"type": "json_schema", ...}`).
    JsonSchema {
        /// The schema's name, as the request gave it.
        name: Option<String>,
        /// The JSON Schema.
        schema: Value,
        /// OpenAI's `strict` flag. Decoding is constrained either way; it is kept for the response.
        strict: bool,
    },
    /// Text in a Lark grammar (llguidance's dialect: `%json { ... }` embeds a JSON Schema).
    Lark(String),
}

fn field_error(field: &str, expected: &str) -> GrammarError {
    GrammarError::Field {
        field: field.to_string(),
        expected: expected.to_string(),
    }
}

impl ConstraintSpec {
    /// Reads an OpenAI `response_format` object: `{"type": "text"}` (no constraint: `None`),
    /// `{"type": "json_object"}`, or `{"type": "json_schema", "json_schema": {"name", "schema",
    /// "strict"}}`. Errors name the field under `response_format` that is wrong.
    pub fn from_response_format(value: &Value) -> Result<Option<ConstraintSpec>, GrammarError> {
        let obj = value.as_object().ok_or_else(|| {
            field_error(
                "response_format",
                "an object such as {\"type\": \"json_object\"}",
            )
        })?;
        let ty = obj.get("type").and_then(Value::as_str).ok_or_else(|| {
            field_error(
                "response_format.type",
                "a string: \"text\", \"json_object\" or \"json_schema\"",
            )
        })?;
        match ty {
            "text" => Ok(None),
            "json_object" => Ok(Some(ConstraintSpec::JsonObject)),
            "json_schema" => {
                let js = obj
                    .get("json_schema")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        field_error(
                            "response_format.json_schema",
                            "an object with \"name\" and \"schema\"",
                        )
                    })?;
                let name = match js.get("name") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => {
                        return Err(field_error("response_format.json_schema.name", "a string"));
                    }
                };
                let schema = match js.get("schema") {
                    Some(s @ (Value::Object(_) | Value::Bool(true))) => s.clone(),
                    // OpenAI allows leaving it out; any JSON value then fits.
                    None | Some(Value::Null) => json!({}),
                    Some(_) => {
                        return Err(field_error(
                            "response_format.json_schema.schema",
                            "a JSON Schema object",
                        ));
                    }
                };
                let strict = match js.get("strict") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(field_error(
                            "response_format.json_schema.strict",
                            "true or false",
                        ));
                    }
                };
                Ok(Some(ConstraintSpec::JsonSchema {
                    name,
                    schema,
                    strict,
                }))
            }
            other => Err(field_error(
                "response_format.type",
                &format!("\"text\", \"json_object\" or \"json_schema\", not {other:?}"),
            )),
        }
    }

    /// A JSON Schema constraint without a name.
    pub fn json_schema(schema: Value) -> ConstraintSpec {
        ConstraintSpec::JsonSchema {
            name: None,
            schema,
            strict: true,
        }
    }

    /// The llguidance grammar: JSON schemas get the [`json_layout`] separators unless they set their own
    /// `x-guidance` options.
    pub(crate) fn grammar(&self) -> TopLevelGrammar {
        match self {
            ConstraintSpec::JsonObject => TopLevelGrammar::from_json_schema(
                json!({"type": "object", "x-guidance": json_layout()}),
            ),
            ConstraintSpec::JsonSchema { schema, .. } => {
                let mut schema = match schema {
                    Value::Bool(true) => json!({}),
                    s => s.clone(),
                };
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance").or_insert_with(json_layout);
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            ConstraintSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_are_read_and_bad_ones_name_the_field() {
        let rf = |v: Value| ConstraintSpec::from_response_format(&v);
        assert_eq!(rf(json!({"type": "text"})).unwrap(), None);
        assert_eq!(
            rf(json!({"type": "json_object"})).unwrap(),
            Some(ConstraintSpec::JsonObject)
        );
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            rf(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s, "strict": true}}))
                .unwrap(),
            Some(ConstraintSpec::JsonSchema {
                name: Some("x".into()),
                schema: s,
                strict: true
            })
        );
        for (bad, field, says) in [
            (json!("json"), "response_format", "object"),
            (json!({}), "response_format.type", "string"),
            (json!({"type": "xml"}), "response_format.type", "\"xml\""),
            (
                json!({"type": "json_schema"}),
                "response_format.json_schema",
                "object",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": 3}}),
                "response_format.json_schema.schema",
                "Schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": 1}}),
                "response_format.json_schema.name",
                "string",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"strict": "yes"}}),
                "response_format.json_schema.strict",
                "true or false",
            ),
        ] {
            let e = rf(bad.clone()).unwrap_err();
            match &e {
                GrammarError::Field { field: f, .. } => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other}"),
            }
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }
}
