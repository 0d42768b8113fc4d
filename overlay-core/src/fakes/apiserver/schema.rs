//! A structural-schema validator standing in for the API server's OpenAPI
//! validation of custom resources: types, unknown fields (kubectl's strict
//! field validation), `required`, `nullable`, `enum`, `pattern`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `maxItems`,
//! `maxProperties`, and list-map key uniqueness. CEL rules are not
//! evaluated here (the two the CRDs keep are checked by the Rust parsers).

use serde_json::Value;

/// Validates a whole custom resource against a CRD's `openAPIV3Schema`.
/// `apiVersion`, `kind` and `metadata` are the API server's own business.
pub fn validate_object(schema: &Value, obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(map) = obj.as_object() else {
        return vec!["<root>: not an object".into()];
    };
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, v) in map {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(k)) {
            Some(s) => check(s, v, k, &mut errors),
            None => errors.push(format!("{k}: unknown field")),
        }
    }
    for r in required(schema) {
        if !map.contains_key(r) {
            errors.push(format!("{r}: Required value"));
        }
    }
    errors
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errors.push(format!(
            "{path}: Unsupported value {v}: supported values {e:?}"
        ));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => check_object(schema, v, path, errors),
        Some("array") => check_array(schema, v, path, errors),
        Some("string") => check_string(schema, v, path, errors),
        Some("integer") => check_integer(schema, v, path, errors),
        Some("boolean") if !v.is_boolean() => errors.push(format!("{path}: expected a boolean")),
        Some("number") if !v.is_number() => errors.push(format!("{path}: expected a number")),
        _ => {}
    }
}

fn check_object(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(map) = v.as_object() else {
        errors.push(format!("{path}: expected an object, got {v}"));
        return;
    };
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > max
    {
        errors.push(format!("{path}: must have at most {max} properties"));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties");
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (k, child) in map {
        let p = format!("{path}.{k}");
        match (props.and_then(|m| m.get(k)), extra) {
            (Some(s), _) => check(s, child, &p, errors),
            (None, Some(s)) if s.is_object() => check(s, child, &p, errors),
            _ if preserve => {}
            _ => errors.push(format!("{p}: unknown field")),
        }
    }
    for r in required(schema) {
        if !map.contains_key(r) {
            errors.push(format!("{path}.{r}: Required value"));
        }
    }
}

fn check_array(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(items) = v.as_array() else {
        errors.push(format!("{path}: expected an array, got {v}"));
        return;
    };
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        errors.push(format!(
            "{path}: Too many: {} items, at most {max}",
            items.len()
        ));
    }
    if let Some(s) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(s, item, &format!("{path}[{i}]"), errors);
        }
    }
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys: Vec<&str> = schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for item in items {
            let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
            if !seen.insert(key.clone()) {
                errors.push(format!("{path}: Duplicate value {key:?}"));
            }
        }
    }
}

fn check_string(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(s) = v.as_str() else {
        errors.push(format!("{path}: expected a string, got {v}"));
        return;
    };
    let n = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && n > max
    {
        errors.push(format!(
            "{path}: Too long: may not be more than {max} bytes"
        ));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && n < min
    {
        errors.push(format!("{path}: should be at least {min} chars long"));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match matches_pattern(p, s) {
            Ok(true) => {}
            Ok(false) => errors.push(format!("{path}: {s:?} should match the pattern")),
            Err(e) => errors.push(format!("{path}: bad pattern in the schema: {e}")),
        }
    }
}

fn check_integer(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(n) = v
        .as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
    else {
        errors.push(format!("{path}: expected an integer, got {v}"));
        return;
    };
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && n as f64 > max
    {
        errors.push(format!("{path}: should be less than or equal to {max}"));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && (n as f64) < min
    {
        errors.push(format!("{path}: should be greater than or equal to {min}"));
    }
}

thread_local! {
    /// Compiled patterns (the address patterns take milliseconds to
    /// compile; a scale test validates thousands of writes).
    static PATTERNS: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
        Default::default();
}

fn matches_pattern(pattern: &str, s: &str) -> Result<bool, regex::Error> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            cache.insert(pattern.to_owned(), regex::Regex::new(pattern)?);
        }
        Ok(cache.get(pattern).is_some_and(|re| re.is_match(s)))
    })
}
