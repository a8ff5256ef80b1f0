//! What the Schema Registry's answers mean: whether an error is the
//! registry's or the record's, and whether a subject's latest version can
//! take our records.

use apache_avro::Schema;
use schema_registry_converter::error::SRCError;

use super::AvroError;

/// Whether records of `ours` can be written as `latest`: `None` when they
/// are the same schema, `Some(latest)` when Avro's resolution turns ours
/// into it, or why not. Like Confluent's `latest.compatibility.strict`,
/// `latest` must read what `ours` writes; unlike it, a field of ours that
/// `latest` dropped is refused too, since its values would be lost on the
/// way (and alertsvc's own readers need every field it writes).
pub fn writable_as(ours: &Schema, latest: &Schema) -> Result<Option<Schema>, String> {
    if ours.canonical_form() == latest.canonical_form() {
        return Ok(None);
    }
    let mut dropped = Vec::new();
    dropped_fields(ours, latest, "", &mut dropped);
    if !dropped.is_empty() {
        return Err(format!(
            "it has no field {} (fields alertsvc writes)",
            dropped.join(", ")
        ));
    }
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(ours, latest)
        .map_err(|e| format!("it cannot read records of ours: {e}"))?;
    Ok(Some(latest.clone()))
}

/// Paths of record fields in `ours` that `latest` has under neither their
/// name nor an alias; nested records are compared where both have one.
fn dropped_fields(ours: &Schema, latest: &Schema, path: &str, out: &mut Vec<String>) {
    let (Schema::Record(ours), Schema::Record(latest)) = (ours, latest) else {
        return;
    };
    for field in &ours.fields {
        let field_path = if path.is_empty() {
            field.name.clone()
        } else {
            format!("{path}.{}", field.name)
        };
        let found = latest
            .fields
            .iter()
            .find(|f| f.name == field.name || f.aliases.contains(&field.name));
        match found {
            Some(other) => dropped_fields(&field.schema, &other.schema, &field_path, out),
            None => out.push(field_path),
        }
    }
}

/// The converter's error and the registry's answer, as one text.
pub(super) fn registry_detail(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// Sorts a converter error into "the registry cannot answer now"
/// ([`AvroError::RegistryUnavailable`]) and "the answer is no"
/// ([`AvroError::Registry`]). `prefix` names the schema id, if any.
pub(super) fn registry_error(e: &SRCError, prefix: String) -> AvroError {
    let text = format!("{prefix}{}", registry_detail(e));
    if registry_unavailable(e) {
        AvroError::RegistryUnavailable(text)
    } else {
        AvroError::Registry(text)
    }
}

fn registry_unavailable(e: &SRCError) -> bool {
    // The converter marks failed HTTP calls and 502/503 as retriable.
    if e.retriable {
        return true;
    }
    // Other statuses are only in its message ("... failed with status 500
    // Internal Server Error"). 5xx, 408 and 429 are the registry's trouble;
    // 401/403 are too (rotated or revoked credentials): dead-lettering
    // every record until someone fixes them would be worse than waiting.
    // 404 (unknown id or subject), 409 and 422 are answers about the
    // schema: final.
    if let Some(status) = http_status(&e.error) {
        return matches!(status, 401 | 403 | 408 | 429 | 500..=599);
    }
    // A response cut off or timed out while its body was read is reported
    // as non-retriable "could not parse"; the reqwest error underneath
    // tells the truth.
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<reqwest::Error>() {
            return http.is_timeout() || http.is_connect() || http.is_request() || http.is_body();
        }
        source = error.source();
    }
    false
}

/// The status in the converter's "failed with status NNN ..." message.
pub(super) fn http_status(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("failed with status ")?;
    rest.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::fixtures::message_schema;

    #[test]
    fn registry_errors_are_sorted_by_who_is_at_fault() {
        let unavailable = |e: SRCError| registry_error(&e, String::new()).is_transient();
        let status = |code: &str| {
            SRCError::non_retryable_with_cause(
                "{\"error_code\":0}",
                &format!("HTTP request to schema registry failed with status {code}"),
            )
        };
        assert!(unavailable(SRCError::new(
            "http call to schema registry failed",
            None,
            true
        )));
        assert!(unavailable(status("500 Internal Server Error")));
        assert!(unavailable(status("504 Gateway Timeout")));
        assert!(unavailable(status("429 Too Many Requests")));
        assert!(unavailable(status("401 Unauthorized")));
        assert!(!unavailable(status("404 Not Found")));
        assert!(!unavailable(status("422 Unprocessable Entity")));
        assert!(!unavailable(SRCError::non_retryable_without_cause(
            "Could not transform bytes using schema"
        )));
        let cached = status("503 Service Unavailable").into_cache();
        assert!(unavailable(cached));
        assert_eq!(
            registry_error(&status("404 Not Found"), "schema id 7: ".into()).to_string(),
            "schema registry: schema id 7: HTTP request to schema registry failed with status 404 Not Found: {\"error_code\":0}"
        );
    }

    #[test]
    fn the_latest_version_must_take_our_records() {
        let ours = message_schema();
        assert!(
            writable_as(&ours, &ours).unwrap().is_none(),
            "the same schema: no resolution"
        );
        // A field added with a default: resolved into, the default filled.
        let newer = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}},
                {"name":"level","type":"int","default":3}]}"#,
        )
        .unwrap();
        assert_eq!(writable_as(&ours, &newer).unwrap(), Some(newer.clone()));
        // A field renamed with an alias still takes ours.
        let renamed = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"ident","aliases":["id"],"type":"string"},
                {"name":"at","type":"long"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}}]}"#,
        )
        .unwrap();
        let mut dropped = Vec::new();
        dropped_fields(&ours, &renamed, "", &mut dropped);
        assert!(dropped.is_empty(), "{dropped:?}");
        // Dropped fields are named.
        let fewer = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},{"name":"at","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(
            writable_as(&ours, &fewer).unwrap_err(),
            "it has no field note, tags (fields alertsvc writes)"
        );
        // A new field without a default cannot be filled from ours.
        let required = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":"long"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}},
                {"name":"owner","type":"string"}]}"#,
        )
        .unwrap();
        let err = writable_as(&ours, &required).unwrap_err();
        assert!(err.starts_with("it cannot read records of ours: "), "{err}");
    }

    #[test]
    fn nested_dropped_fields_are_named_by_path() {
        let nested = |inner: &str| {
            Schema::parse_str(&format!(
                r#"{{"type":"record","name":"O","fields":[{{"name":"inner","type":
                    {{"type":"record","name":"I","fields":[{inner}]}}}}]}}"#
            ))
            .unwrap()
        };
        let ours = nested(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
        let latest = nested(r#"{"name":"a","type":"int"}"#);
        let mut dropped = Vec::new();
        dropped_fields(&ours, &latest, "", &mut dropped);
        assert_eq!(dropped, ["inner.b"]);
    }
}
