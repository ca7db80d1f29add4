//! Metadata filters, in the small language Chroma's `where` uses, turned into a SQL condition
//! on the documents' JSON metadata with every value bound as a parameter (never spliced in).
//!
//! `{"genre": "jazz"}` (equality), `{"year": {"$gte": 1950}}` (`$eq`, `$ne`, `$gt`, `$gte`,
//! `$lt`, `$lte`, `$in`, `$nin`), and `{"$and": [...]}` / `{"$or": [...]}`; several keys in one
//! object must all hold.

use rusqlite::types::Value as SqlValue;
use serde_json::Value;

/// A filter as SQL: a condition on a JSON metadata column and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    /// The condition (`1` when there is no filter).
    pub condition: String,
    /// The values its `?`s stand for.
    pub params: Vec<SqlValue>,
}

impl SqlFilter {
    /// Translates `filter` (`None` or `null`: everything) into a condition on the JSON column
    /// `column`, or says what is wrong with it.
    pub fn parse(filter: Option<&Value>, column: &str) -> Result<Self, String> {
        let mut params = Vec::new();
        let condition = match filter {
            None | Some(Value::Null) => "1".to_string(),
            Some(filter) => clause(filter, column, &mut params)?,
        };
        Ok(Self { condition, params })
    }
}

fn clause(filter: &Value, column: &str, params: &mut Vec<SqlValue>) -> Result<String, String> {
    let Value::Object(fields) = filter else {
        return Err(format!(
            "a filter is an object such as {{\"genre\": \"jazz\"}}, got {filter}"
        ));
    };
    if fields.is_empty() {
        return Ok("1".into());
    }
    let mut parts = Vec::new();
    for (key, value) in fields {
        parts.push(match key.as_str() {
            "$and" | "$or" => {
                let list = value
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("{key} takes a non-empty list of filters"))?;
                let inner = list
                    .iter()
                    .map(|f| clause(f, column, params))
                    .collect::<Result<Vec<_>, _>>()?;
                let joiner = if key == "$and" { " AND " } else { " OR " };
                format!("({})", inner.join(joiner))
            }
            op if op.starts_with('$') => {
                return Err(format!(
                    "unknown filter operator {op} at the top level; use $and, $or, or a \
                     metadata key"
                ))
            }
            _ => field(key, value, column, params)?,
        });
    }
    Ok(parts.join(" AND "))
}

/// One metadata key's condition.
fn field(
    key: &str,
    value: &Value,
    column: &str,
    params: &mut Vec<SqlValue>,
) -> Result<String, String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_alphanumeric() || "_-. ".contains(c))
    {
        return Err(format!(
            "metadata key {key:?}: keys are letters, digits, spaces and _ - ."
        ));
    }
    let column = format!("json_extract({column}, '$.\"{key}\"')");
    let (op, operand) = match value {
        Value::Object(ops) if ops.len() == 1 => {
            let (op, operand) = ops.iter().next().expect("one entry");
            (op.as_str(), operand)
        }
        Value::Object(_) => {
            return Err(format!(
                "{key}: give one operator per object ({{\"$gte\": 1}}); combine with $and"
            ))
        }
        other => ("$eq", other),
    };
    let sql_op = match op {
        "$eq" => "=",
        "$ne" => "!=",
        "$gt" => ">",
        "$gte" => ">=",
        "$lt" => "<",
        "$lte" => "<=",
        "$in" | "$nin" => {
            let list = operand
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("{key}: {op} takes a non-empty list of values"))?;
            let marks = list
                .iter()
                .map(|v| scalar(key, v).map(|v| params.push(v)).map(|_| "?"))
                .collect::<Result<Vec<_>, _>>()?;
            let not = if op == "$nin" { "NOT " } else { "" };
            return Ok(format!("{column} {not}IN ({})", marks.join(", ")));
        }
        other => {
            return Err(format!(
                "{key}: unknown operator {other}; use $eq, $ne, $gt, $gte, $lt, $lte, $in or $nin"
            ))
        }
    };
    params.push(scalar(key, operand)?);
    Ok(format!("{column} {sql_op} ?"))
}

/// A value a metadata field can be compared with.
fn scalar(key: &str, value: &Value) -> Result<SqlValue, String> {
    Ok(match value {
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => {
            return Err(format!(
                "{key}: compare with a string, number or boolean, not {other}"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn translates_the_operators_with_bound_values() {
        let f = SqlFilter::parse(
            Some(&json!({"$and": [
                {"genre": "jazz"},
                {"year": {"$gte": 1950}},
                {"label": {"$in": ["Blue Note", "Verve"]}}
            ]})),
            "metadata",
        )
        .unwrap();
        assert_eq!(
            f.condition,
            "(json_extract(metadata, '$.\"genre\"') = ? AND json_extract(metadata, '$.\"year\"') >= ? \
             AND json_extract(metadata, '$.\"label\"') IN (?, ?))"
        );
        assert_eq!(f.params.len(), 4);
        assert_eq!(SqlFilter::parse(None, "metadata").unwrap().condition, "1");
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        for (filter, says) in [
            (json!("jazz"), "a filter is an object"),
            (json!({"$xor": []}), "unknown filter operator $xor"),
            (
                json!({"year": {"$between": [1, 2]}}),
                "unknown operator $between",
            ),
            (json!({"k'); DROP TABLE x; --": 1}), "keys are letters"),
            (json!({"tags": {"$in": []}}), "non-empty list"),
            (json!({"a": [1]}), "compare with a string"),
        ] {
            let error = SqlFilter::parse(Some(&filter), "metadata").unwrap_err();
            assert!(error.contains(says), "{filter}: {error}");
        }
    }
}
