//! Avro schemas, the schema-guided JSON ⇄ Avro mapping, and the three wire
//! formats of DESIGN §4.
//!
//! Every stage works on records as JSON values; a topic's [`Codec`] turns
//! them into bytes and back. Keeping one record model means a pipeline never
//! depends on whether its input arrives as Confluent-framed Avro, single-object
//! Avro or plain JSON.
//!
//! Where things are:
//! - `error`: [`AvroError`], and which errors are the registry's (transient).
//! - `schema`: schema files and their loading; the built-in predecessors of
//!   the shipped schemas (`SHIPPED_PREDECESSORS`).
//! - `fingerprint`: Parsing Canonical Form and CRC-64-AVRO fingerprints.
//! - `json`: the schema-guided JSON ⇄ Avro mapping ([`TypedSchema`]);
//!   `datum`: the same mapping written straight to a datum, from a JSON
//!   value or from a record's own `Serialize` ([`Codec::encode_record`]).
//! - `single_object`: the `avro-single-object` format ([`SingleObject`]).
//! - `confluent`: the `avro-confluent` format and its Schema Registry client
//!   and registry modes ([`Confluent`]).
//! - `registry`: what the registry's answers mean (transient or final
//!   errors, whether a latest version takes our records).
//! - `codec`: a topic's [`Codec`], [`Compact`] records, [`build_codecs`],
//!   [`check_writes`].
//! - `keys`: [`KeyCodec`], [`build_key_codecs`].
//! - `scan`: a validating read of a datum's top-level fields that builds
//!   nothing ([`Scalar`], [`Codec::scan`]), for enrich's filters, and
//!   [`from_fields`] to read such fields straight into a Rust type.

mod codec;
mod confluent;
mod datum;
mod error;
mod fingerprint;
#[cfg(test)]
mod fixtures;
mod json;
mod keys;
mod registry;
mod scan;
mod schema;
mod single_object;

pub use codec::{build_codecs, check_writes, Codec, Codecs, Compact};
pub use confluent::{Confluent, SubjectUse};
pub use error::AvroError;
pub use fingerprint::{crc64_avro, parsing_canonical_form, spec_fingerprint};
pub use json::{avro_to_json, TypedSchema};
pub use keys::{build_key_codecs, KeyCodec, KeyCodecs};
pub use registry::writable_as;
pub use scan::{from_fields, Scalar};
pub use schema::{load_schema, load_schema_file, SchemaFile};
pub use single_object::SingleObject;
