//! The specification's Parsing Canonical Form and CRC-64-AVRO fingerprint,
//! which single-object records carry, and the TRANSITIONAL fingerprint
//! earlier releases wrote.

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde_json::Value as Json;

use super::{AvroError, SchemaFile};

/// The Avro specification's Parsing Canonical Form of a schema given as
/// JSON: the rules [PRIMITIVES], [FULLNAMES], [STRIP], [ORDER], [STRINGS],
/// [INTEGERS] and [WHITESPACE], written the way Java's `SchemaNormalization`
/// writes them (names and symbols unescaped; valid Avro names need no
/// escaping). A logical type is dropped with the other attributes, so
/// `{"type":"long","logicalType":"timestamp-millis"}` becomes `"long"`.
pub fn parsing_canonical_form(schema: &Json) -> Result<String, String> {
    let mut out = String::new();
    let mut defined = std::collections::HashSet::new();
    canonical(schema, "", &mut defined, &mut out)?;
    Ok(out)
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The fullname of a named type: a dotted name is already full; otherwise
/// the type's own `namespace`, else the enclosing one ([FULLNAMES]).
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        ns => format!("{ns}.{name}"),
    }
}

fn canonical(
    schema: &Json,
    enclosing: &str,
    defined: &mut std::collections::HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    use std::fmt::Write;
    match schema {
        Json::String(name) if PRIMITIVES.contains(&name.as_str()) => {
            write!(out, "\"{name}\"").map_err(|e| e.to_string())
        }
        Json::String(name) => {
            // A reference to a named type defined earlier: its fullname.
            // A short name is looked up in the enclosing namespace first,
            // then in the null namespace (as Java's parser does).
            let candidates = [full_name(name, None, enclosing), name.clone()];
            let found = candidates
                .into_iter()
                .find(|c| defined.contains(c))
                .ok_or_else(|| format!("unknown type {name:?}"))?;
            write!(out, "\"{found}\"").map_err(|e| e.to_string())
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(branch, enclosing, defined, out)?;
            }
            out.push(']');
            Ok(())
        }
        Json::Object(attrs) => {
            let kind = match attrs.get("type") {
                Some(Json::String(kind)) => kind.as_str(),
                // `{"type": {...}}` or `{"type": [...]}` wraps a schema.
                Some(inner @ (Json::Object(_) | Json::Array(_))) => {
                    return canonical(inner, enclosing, defined, out)
                }
                _ => return Err("a schema object needs a \"type\"".into()),
            };
            match kind {
                // [PRIMITIVES]: every other attribute, logicalType
                // included, is stripped.
                k if PRIMITIVES.contains(&k) => write!(out, "\"{k}\"").map_err(|e| e.to_string()),
                "array" | "map" => {
                    let key = if kind == "array" { "items" } else { "values" };
                    let inner = attrs
                        .get(key)
                        .ok_or_else(|| format!("{kind} without \"{key}\""))?;
                    write!(out, "{{\"type\":\"{kind}\",\"{key}\":").map_err(|e| e.to_string())?;
                    canonical(inner, enclosing, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                "record" | "error" | "enum" | "fixed" => {
                    let name = attrs
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("{kind} without a name"))?;
                    let namespace = attrs.get("namespace").and_then(Json::as_str);
                    let full = full_name(name, namespace, enclosing);
                    // Nested types inherit the namespace of the fullname.
                    let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
                    defined.insert(full.clone());
                    // Java's parser reads a protocol's "error" as a record.
                    let written = if kind == "error" { "record" } else { kind };
                    write!(out, "{{\"name\":\"{full}\",\"type\":\"{written}\"")
                        .map_err(|e| e.to_string())?;
                    match kind {
                        "enum" => {
                            let symbols = attrs
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("enum {full} without symbols"))?;
                            out.push_str(",\"symbols\":[");
                            for (i, symbol) in symbols.iter().enumerate() {
                                let symbol = symbol
                                    .as_str()
                                    .ok_or_else(|| format!("enum {full}: symbols are strings"))?;
                                if i > 0 {
                                    out.push(',');
                                }
                                write!(out, "\"{symbol}\"").map_err(|e| e.to_string())?;
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            // [INTEGERS]: a plain decimal integer.
                            let size = match attrs.get("size") {
                                Some(Json::Number(n)) => n.as_u64(),
                                Some(Json::String(s)) => s.trim().parse().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| format!("fixed {full} without an integer size"))?;
                            write!(out, ",\"size\":{size}").map_err(|e| e.to_string())?;
                        }
                        _ => {
                            let fields = attrs
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("record {full} without fields"))?;
                            out.push_str(",\"fields\":[");
                            for (i, field) in fields.iter().enumerate() {
                                let field_name =
                                    field.get("name").and_then(Json::as_str).ok_or_else(|| {
                                        format!("record {full}: a field without a name")
                                    })?;
                                let field_type = field.get("type").ok_or_else(|| {
                                    format!("record {full}: field {field_name} without a type")
                                })?;
                                if i > 0 {
                                    out.push(',');
                                }
                                write!(out, "{{\"name\":\"{field_name}\",\"type\":")
                                    .map_err(|e| e.to_string())?;
                                canonical(field_type, &inner_ns, defined, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                // A named type referenced as {"type": "Name"}.
                other => canonical(&Json::String(other.to_owned()), enclosing, defined, out),
            }
        }
        other => Err(format!("not a schema: {other}")),
    }
}

/// CRC-64-AVRO, the specification's 64-bit Rabin fingerprint.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

/// The 8 bytes a single-object record carries after `C3 01`: CRC-64-AVRO of
/// the Parsing Canonical Form, little-endian.
pub fn spec_fingerprint(file: &SchemaFile) -> Result<[u8; 8], AvroError> {
    let form = parsing_canonical_form(&file.json).map_err(|reason| AvroError::Canonical {
        path: file.path.clone(),
        reason,
    })?;
    Ok(crc64_avro(form.as_bytes()).to_le_bytes())
}

/// apache-avro 0.22's own fingerprint, which differs from the spec's for
/// every schema with a logical type (it keeps `{"type":"long"}`). What
/// alertsvc wrote before it computed the spec's.
pub(super) fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (slot, byte) in out
        .iter_mut()
        .zip(schema.fingerprint::<Rabin>().bytes.iter())
    {
        *slot = *byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::fixtures::file;
    use crate::avro::single_object::hex;

    fn fingerprint_hex(text: &str) -> String {
        hex(&spec_fingerprint(&file("s.avsc", text)).unwrap())
    }

    #[test]
    fn crc64_avro_matches_the_specification() {
        // The empty input is the table's seed, EMPTY.
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
        // Java's SchemaNormalization.parsingFingerprint64("int"), as a
        // signed long: 8247732601305521295 (the spec's test data).
        assert_eq!(crc64_avro(b"\"int\"") as i64, 8247732601305521295);
    }

    #[test]
    fn fingerprints_are_the_specifications() {
        // Little-endian hex as on the wire, computed by Java's Apache Avro
        // 1.8.2 (SchemaNormalization.parsingFingerprint64) and fastavro 1.13.
        for (text, expected) in [
            (
                include_str!("../../config/schemas/slack_message.avsc"),
                "993bd42a1549f9a3",
            ),
            (
                include_str!("../../config/schemas/slack_message_v2.avsc"),
                "09ea0f340cdcc90e",
            ),
            (
                include_str!("../../config/schemas/slack_message_v1.avsc"),
                "c948d99891b15dc8",
            ),
            (
                include_str!("../../config/schemas/slack_response.avsc"),
                "8c28ce6ad921c449",
            ),
            (
                include_str!("../../config/schemas/slack_response_v1.avsc"),
                "ac78933e9ba82821",
            ),
            (
                include_str!("../../config/schemas/slack_user.avsc"),
                "8e0e1fb9291aed41",
            ),
            (
                include_str!("../../tests/fixtures/avro/interop_kitchen_sink.avsc"),
                "cc84fdfc3ae55b5f",
            ),
            (
                include_str!("../../tests/fixtures/avro/canonical_edge_cases.avsc"),
                "3bd969950a18772f",
            ),
        ] {
            assert_eq!(fingerprint_hex(text), expected, "{text}");
        }
        // What alertsvc wrote with apache-avro 0.22's fingerprint.
        let legacy = Schema::parse_str(include_str!("../../config/schemas/slack_message_v1.avsc"));
        assert_eq!(
            hex(&legacy_fingerprint(&legacy.unwrap())),
            "39b1b5249868a03e"
        );
    }

    #[test]
    fn canonical_form_follows_the_rules() {
        let json: Json =
            serde_json::from_str(include_str!("../../config/schemas/slack_message_v1.avsc"))
                .unwrap();
        // fastavro's to_parsing_canonical_form of the same file.
        assert_eq!(
            parsing_canonical_form(&json).unwrap(),
            r#"{"name":"io.alertsvc.SlackMessage","type":"record","fields":[{"name":"alertId","type":"string"},{"name":"channelId","type":"string"},{"name":"text","type":"string"},{"name":"blocks","type":"string"},{"name":"createdAt","type":"long"},{"name":"pipeline","type":"string"},{"name":"sourceTopic","type":"string"},{"name":"sourcePartition","type":"int"},{"name":"sourceOffset","type":"long"}]}"#
        );
        // An explicit empty namespace puts a type, and the types nested in
        // it, in the null namespace (as the spec and fastavro say; Java
        // 1.8.2 wrongly keeps the outer namespace for `Mood`).
        let json = serde_json::json!({"type": "record", "name": "Outer", "namespace": "a.b",
            "fields": [{"name": "r", "type": {"type": "record", "name": "Rootless", "namespace": "",
                "fields": [{"name": "m", "type": {"type": "enum", "name": "Mood", "symbols": ["X"]}}]}},
                {"name": "again", "type": "Mood"},
                {"name": "size", "type": {"type": "fixed", "name": "F", "size": "016"}}]});
        assert_eq!(
            parsing_canonical_form(&json).unwrap(),
            r#"{"name":"a.b.Outer","type":"record","fields":[{"name":"r","type":{"name":"Rootless","type":"record","fields":[{"name":"m","type":{"name":"Mood","type":"enum","symbols":["X"]}}]}},{"name":"again","type":"Mood"},{"name":"size","type":{"name":"a.b.F","type":"fixed","size":16}}]}"#
        );
        let err = parsing_canonical_form(&serde_json::json!({"type": "record", "name": "R",
            "fields": [{"name": "x", "type": "Nowhere"}]}))
        .unwrap_err();
        assert!(err.contains("Nowhere"), "{err}");
    }
}
