//! The `avro-single-object` wire format: records that carry their schema's
//! fingerprint, resolved from older writer schemas to the topic's.

use std::collections::HashMap;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use serde::Serialize;
use serde_json::Value as Json;

use super::codec::{Compact, COMPACT_DATUM};
use super::fingerprint::legacy_fingerprint;
use super::scan::{Scalar, Shape};
use super::{avro_to_json, spec_fingerprint, AvroError, SchemaFile, TypedSchema};

/// Avro single-object encoding: `C3 01`, the CRC-64-AVRO fingerprint of the
/// schema's Parsing Canonical Form (little-endian), then the datum.
///
/// Decoding looks the record's fingerprint up among the topic's schema and
/// its writer schemas, decodes with the writer's schema and resolves the
/// value to the topic's (reader) schema by Avro's rules.
#[derive(Debug, Clone)]
pub struct SingleObject {
    pub(super) schema: TypedSchema,
    header: [u8; 10],
    /// Fingerprint → the writer's schema; `None` is the reader schema
    /// itself, decoded without resolution.
    writers: HashMap<[u8; 8], Option<Schema>>,
    /// For [`SingleObject::scan`]; `None` when the reader schema has a type
    /// a scan does not model.
    shape: Option<Shape>,
}

impl SingleObject {
    /// `reader` is the topic's schema; `writers` are older (or other)
    /// schemas records on the topic may have been written with. Each must
    /// resolve to `reader`, or this is an error naming its file.
    pub fn new(reader: &SchemaFile, writers: &[SchemaFile]) -> Result<Self, AvroError> {
        let fingerprint = spec_fingerprint(reader)?;
        let mut header = [0u8; 10];
        header[0] = 0xC3;
        header[1] = 0x01;
        header[2..].copy_from_slice(&fingerprint);
        let mut keys = HashMap::new();
        keys.insert(fingerprint, None);
        let mut legacy = vec![(legacy_fingerprint(&reader.schema), None)];
        for writer in writers {
            match apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                &writer.schema,
                &reader.schema,
            ) {
                Ok(_) => {}
                Err(e) => {
                    return Err(AvroError::Incompatible {
                        path: writer.path.clone(),
                        reader: reader.path.clone(),
                        reason: e.to_string(),
                    })
                }
            }
            keys.entry(spec_fingerprint(writer)?)
                .or_insert_with(|| Some(writer.schema.clone()));
            legacy.push((
                legacy_fingerprint(&writer.schema),
                Some(writer.schema.clone()),
            ));
        }
        // TRANSITIONAL, for one release: alertsvc up to 0.1 wrote
        // apache-avro 0.22's fingerprint (which keeps a logical type's base
        // as `{"type":"long"}`), so records already on the topics carry it.
        // Accept it as another key for the same schema until those records
        // have aged out of retention; remove `legacy_fingerprint` and this
        // loop in the release after next (issue 10). Spec keys win a clash.
        for (key, schema) in legacy {
            keys.entry(key).or_insert(schema);
        }
        let schema = TypedSchema::new(reader.schema.clone());
        Ok(SingleObject {
            shape: Shape::of(&schema.schema, schema.names()),
            schema,
            header,
            writers: keys,
        })
    }

    /// The fingerprint written after `C3 01` (little-endian, as on the wire).
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.header[2..]);
        out
    }

    // The datum helpers are deprecated for builder types that borrow the
    // schema; they do the same work, and keep this type free of lifetimes.
    #[allow(deprecated)]
    pub fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        // Top-level strings (a message's blocks) are most of a record.
        let strings: usize = json.as_object().map_or(0, |o| {
            o.values().filter_map(Json::as_str).map(str::len).sum()
        });
        let mut out = Vec::with_capacity(self.header.len() + 64 + strings + strings / 64);
        out.extend_from_slice(&self.header);
        if self.schema.write_datum(json, &mut out) {
            return Ok(out);
        }
        // The tree path: its error, or a type the writer leaves to it.
        let value = self.schema.json_to_avro(json)?;
        let datum = apache_avro::to_avro_datum(&self.schema.schema, value)
            .map_err(|e| AvroError::Encode(Box::new(e)))?;
        let mut out = Vec::with_capacity(self.header.len() + datum.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&datum);
        Ok(out)
    }

    /// [`SingleObject::encode`] of `serde_json::to_value(record)`, written
    /// from the record itself where the datum writer can vouch for the
    /// same bytes; `size_hint`: the bytes its strings take, roughly.
    pub fn encode_record<T: Serialize + ?Sized>(
        &self,
        record: &T,
        size_hint: usize,
    ) -> Result<Vec<u8>, AvroError> {
        let mut out = Vec::with_capacity(self.header.len() + 64 + size_hint + size_hint / 64);
        out.extend_from_slice(&self.header);
        if self.schema.write_serialized(record, &mut out) {
            return Ok(out);
        }
        self.encode(&serde_json::to_value(record)?)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        let (writer, body) = self.split(bytes)?;
        if writer.is_none() {
            if let Some(json) = self.shape.as_ref().and_then(|s| s.to_json(body)) {
                return Ok(json);
            }
        }
        Ok(avro_to_json(self.read_datum(writer, body)?))
    }

    /// The record's top-level fields as [`SingleObject::decode`] would give
    /// them, read without building the record; `None` when the scan cannot
    /// vouch for it (bytes a decode would refuse, a record of an older
    /// writer schema, a schema the scan does not model): then decode it.
    pub fn scan<'a>(&'a self, bytes: &'a [u8]) -> Option<Vec<(&'a str, Scalar<'a>)>> {
        match self.split(bytes) {
            Ok((None, datum)) => self.shape.as_ref()?.scan(datum),
            _ => None,
        }
    }

    /// The writer's schema (`None`: the reader's) and the datum.
    fn split<'b>(&self, bytes: &'b [u8]) -> Result<(Option<&Schema>, &'b [u8]), AvroError> {
        let (fingerprint, body) = match bytes {
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => rest.split_at(8),
            _ => {
                return Err(AvroError::SingleObjectHeader(
                    "missing the C3 01 marker".into(),
                ))
            }
        };
        let mut key = [0u8; 8];
        key.copy_from_slice(fingerprint);
        let writer = self
            .writers
            .get(&key)
            .ok_or_else(|| AvroError::UnknownFingerprint {
                fingerprint: hex(fingerprint),
                known: hex(&self.header[2..]),
            })?;
        Ok((writer.as_ref(), body))
    }

    /// The whole datum, resolved to the reader schema.
    #[allow(deprecated)]
    fn read_datum(&self, writer: Option<&Schema>, mut body: &[u8]) -> Result<AvroValue, AvroError> {
        let value = match writer {
            None => apache_avro::from_avro_datum(&self.schema.schema, &mut body, None),
            Some(writer) => {
                apache_avro::from_avro_datum(writer, &mut body, Some(&self.schema.schema))
            }
        }
        .map_err(|e| AvroError::Decode(Box::new(e)))?;
        if !body.is_empty() {
            return Err(AvroError::TrailingBytes(body.len()));
        }
        Ok(value)
    }

    /// [`SingleObject::decode`]'s checks; keeps the datum in the reader
    /// schema.
    #[allow(deprecated)]
    pub(super) fn compact(&self, bytes: &[u8]) -> Result<Compact, AvroError> {
        let (writer, body) = self.split(bytes)?;
        let value = self.read_datum(writer, body)?;
        if writer.is_none() {
            return Ok(Compact::tagged(COMPACT_DATUM, body));
        }
        let datum = apache_avro::to_avro_datum(&self.schema.schema, value)
            .map_err(|e| AvroError::Encode(Box::new(e)))?;
        Ok(Compact::tagged(COMPACT_DATUM, &datum))
    }

    /// A datum [`SingleObject::compact`] kept, decoded.
    pub(super) fn expand(&self, datum: &[u8]) -> Result<Json, AvroError> {
        if let Some(json) = self.shape.as_ref().and_then(|s| s.to_json(datum)) {
            return Ok(json);
        }
        Ok(avro_to_json(self.read_datum(None, datum)?))
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::fixtures::{codec, file, MESSAGE_SCHEMA, OLD_MESSAGE_SCHEMA};
    use serde_json::json;

    #[test]
    fn single_object_round_trip_fills_defaults() {
        let codec = codec(MESSAGE_SCHEMA);
        let bytes = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &codec.fingerprint());
        assert_eq!(
            bytes[2..10],
            spec_fingerprint(&file("m", MESSAGE_SCHEMA)).unwrap()
        );
        let back = codec.decode(&bytes).unwrap();
        assert_eq!(back, json!({"id": "a", "at": 5, "note": null, "tags": {}}));
    }

    #[test]
    fn single_object_rejects_foreign_bytes() {
        let codec = codec(MESSAGE_SCHEMA);
        let err = codec.decode(b"not avro at all").unwrap_err();
        assert!(err.to_string().contains("C3 01"), "{err}");
        let mut other = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        other[5] ^= 0xff;
        let err = codec.decode(&other).unwrap_err();
        assert!(matches!(err, AvroError::UnknownFingerprint { .. }), "{err}");
        // The record's fingerprint in hex, as on the wire.
        assert!(err.to_string().contains(&hex(&other[2..10])), "{err}");
    }

    #[test]
    fn records_of_writer_schemas_resolve_to_the_reader_schema() {
        let old = codec(OLD_MESSAGE_SCHEMA);
        let bytes = old
            .encode(&json!({"id": "a", "legacy": 7, "at": 5}))
            .unwrap();
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        let writers = [file("old.avsc", OLD_MESSAGE_SCHEMA)];
        // Without the writer schema: an unknown fingerprint, named.
        let err = SingleObject::new(&reader, &[])
            .unwrap()
            .decode(&bytes)
            .unwrap_err();
        assert!(err.to_string().contains(&hex(&old.fingerprint())), "{err}");
        let new = SingleObject::new(&reader, &writers).unwrap();
        assert_eq!(
            new.decode(&bytes).unwrap(),
            json!({"id": "a", "at": 5, "note": null, "tags": {}})
        );
        // The reader's own records still decode without resolution.
        let current = new
            .encode(&json!({"id": "b", "at": 6, "note": "n"}))
            .unwrap();
        assert_eq!(
            new.decode(&current).unwrap(),
            json!({"id": "b", "at": 6, "note": "n", "tags": {}})
        );
    }

    #[test]
    fn unresolvable_writer_schemas_are_refused_by_name() {
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        // `id` became a long and `at` has no default in the reader.
        let writer = file(
            "schemas/broken.avsc",
            r#"{"type":"record","name":"M","namespace":"t","fields":[{"name":"id","type":"long"}]}"#,
        );
        let err = SingleObject::new(&reader, &[writer]).unwrap_err();
        assert!(matches!(err, AvroError::Incompatible { .. }), "{err}");
        assert!(err.to_string().contains("schemas/broken.avsc"), "{err}");
    }

    #[test]
    fn legacy_fingerprints_are_still_read() {
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        let codec = SingleObject::new(&reader, &[file("old.avsc", OLD_MESSAGE_SCHEMA)]).unwrap();
        let mut bytes = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        // As alertsvc 0.1 wrote it: apache-avro's fingerprint.
        let legacy = legacy_fingerprint(&reader.schema);
        assert_ne!(legacy, codec.fingerprint(), "the schema has a logical type");
        bytes[2..10].copy_from_slice(&legacy);
        assert_eq!(codec.decode(&bytes).unwrap()["id"], "a");
        // And an old writer schema's legacy fingerprint resolves too.
        let old = file("old.avsc", OLD_MESSAGE_SCHEMA);
        let mut bytes = SingleObject::new(&old, &[])
            .unwrap()
            .encode(&json!({"id": "c", "legacy": 1, "at": 2}))
            .unwrap();
        bytes[2..10].copy_from_slice(&legacy_fingerprint(&old.schema));
        assert_eq!(
            codec.decode(&bytes).unwrap(),
            json!({"id": "c", "at": 2, "note": null, "tags": {}})
        );
    }
}
