//! Schemas and helpers the unit tests of several files share.

use apache_avro::Schema;

use super::{SchemaFile, SingleObject};

pub(super) const MESSAGE_SCHEMA: &str = r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}}
            ]}"#;

pub(super) fn message_schema() -> Schema {
    Schema::parse_str(MESSAGE_SCHEMA).unwrap()
}

pub(super) fn file(name: &str, text: &str) -> SchemaFile {
    SchemaFile::parse(name, text).unwrap()
}

pub(super) fn codec(text: &str) -> SingleObject {
    SingleObject::new(&file("reader.avsc", text), &[]).unwrap()
}

/// The old schema of `MESSAGE_SCHEMA`: no `note`, no `tags`, and a field
/// the new one dropped.
pub(super) const OLD_MESSAGE_SCHEMA: &str = r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"legacy","type":"int"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}
            ]}"#;
