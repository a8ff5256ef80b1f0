//! Schema files and their loading, and the built-in predecessors of the
//! shipped schemas that every single-object topic also reads.

use std::path::Path;

use apache_avro::Schema;
use serde_json::Value as Json;

use super::{spec_fingerprint, AvroError};
use crate::config::resolve_path;

pub fn load_schema(dir: &Path, relative: &str) -> Result<Schema, AvroError> {
    load_schema_file(dir, relative).map(|file| file.schema)
}

/// A schema file as written and as parsed. The spec's fingerprint is
/// computed from the JSON as written: apache-avro's parsed [`Schema`] no
/// longer tells `"long"` from `{"type":"long","logicalType":...}` the way
/// the canonical form needs.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Where it came from, for error messages.
    pub path: String,
    pub json: Json,
    pub schema: Schema,
}

impl SchemaFile {
    pub fn parse(path: impl Into<String>, text: &str) -> Result<SchemaFile, AvroError> {
        let path = path.into();
        let schema = Schema::parse_str(text).map_err(|source| AvroError::ParseSchema {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let json = serde_json::from_str(text)?;
        Ok(SchemaFile { path, json, schema })
    }
}

pub fn load_schema_file(dir: &Path, relative: &str) -> Result<SchemaFile, AvroError> {
    let path = resolve_path(dir, relative);
    let text = std::fs::read_to_string(&path).map_err(|source| AvroError::ReadSchema {
        path: path.display().to_string(),
        source,
    })?;
    SchemaFile::parse(path.display().to_string(), &text)
}

/// Earlier versions of the shipped schemas, built in. Records the previous
/// release wrote (with these schemas' spec fingerprints, or with the
/// TRANSITIONAL apache-avro ones) are still on the topics after an upgrade
/// and must be read without anyone listing `writer_schemas`: notify would
/// otherwise dead-letter every alert in flight during the rollout.
const SHIPPED_PREDECESSORS: &[(&str, &str)] = &[
    (
        "(built in) schemas/slack_message_v1.avsc",
        include_str!("../../config/schemas/slack_message_v1.avsc"),
    ),
    (
        "(built in) schemas/slack_message_v2.avsc",
        include_str!("../../config/schemas/slack_message_v2.avsc"),
    ),
    (
        "(built in) schemas/slack_response_v1.avsc",
        include_str!("../../config/schemas/slack_response_v1.avsc"),
    ),
];

/// The built-in predecessors of a topic's schema: those with its full name
/// that Avro can resolve to it. A schema an operator changed so far that an
/// old version no longer resolves simply does not get it (old records then
/// need `writer_schemas`, which says why when they do not resolve).
pub(super) fn shipped_predecessors(reader: &SchemaFile) -> Result<Vec<SchemaFile>, AvroError> {
    let Some(name) = reader.schema.name() else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for (path, text) in SHIPPED_PREDECESSORS {
        let old = SchemaFile::parse(*path, text)?;
        let same_name = old
            .schema
            .name()
            .is_some_and(|n| n.fullname(None) == name.fullname(None));
        if same_name
            && spec_fingerprint(&old)? != spec_fingerprint(reader)?
            && apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                &old.schema,
                &reader.schema,
            )
            .is_ok()
        {
            found.push(old);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::fingerprint::legacy_fingerprint;
    use crate::avro::{Codec, SingleObject};
    use crate::config::{KeyFormat, TopicSettings, WireFormat};
    use serde_json::json;

    #[test]
    fn the_previous_releases_slack_messages_are_read_without_configuration() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let topic = TopicSettings {
            name: "slack-messages".into(),
            format: WireFormat::AvroSingleObject,
            schema: Some("config/schemas/slack_message.avsc".into()),
            writer_schemas: Vec::new(),
            key_format: KeyFormat::String,
            key_schema: None,
            auto_register: None,
            use_latest_version: None,
        };
        let Codec::SingleObject(current) = Codec::build(repo, &topic, None).unwrap() else {
            panic!("single-object codec");
        };
        let v1 = SchemaFile::parse(
            "v1",
            include_str!("../../config/schemas/slack_message_v1.avsc"),
        )
        .unwrap();
        let old = json!({"alertId": "a-1", "channelId": "C1", "text": "t", "blocks": "[]",
            "createdAt": 5, "pipeline": "p", "sourceTopic": "s", "sourcePartition": 0,
            "sourceOffset": 1});
        let mut bytes = SingleObject::new(&v1, &[]).unwrap().encode(&old).unwrap();
        let read = current.decode(&bytes).unwrap();
        assert_eq!(read["status"], "firing");
        assert_eq!(read["alertId"], "a-1");
        // And with the fingerprint releases before issue 10 wrote.
        bytes[2..10].copy_from_slice(&legacy_fingerprint(&v1.schema));
        assert_eq!(current.decode(&bytes).unwrap(), read);
        // The release before grouping: read with no group.
        let v2 = SchemaFile::parse(
            "v2",
            include_str!("../../config/schemas/slack_message_v2.avsc"),
        )
        .unwrap();
        let mut before_groups = old.clone();
        before_groups["status"] = json!("resolved");
        let bytes = SingleObject::new(&v2, &[])
            .unwrap()
            .encode(&before_groups)
            .unwrap();
        let read = current.decode(&bytes).unwrap();
        assert_eq!(read["status"], "resolved");
        assert_eq!(read["groupKey"], Json::Null);
        assert_eq!(read["groupWindowMs"], 0);
    }
}
