"""A second Avro implementation for tests/it/avro_interop.rs: fastavro.

    python3 avro_interop.py request.json

Same request and response as AvroInterop.java: fingerprints of schema files,
single-object records decoded to plain JSON, values encoded as single-object
records. fastavro has no single-object reader or writer, so the 10-byte
header (C3 01 + CRC-64-AVRO fingerprint, little-endian) is checked and
written here with fastavro's own fingerprint.
"""

import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def load(path):
    with open(path) as f:
        return json.load(f)


def spec_fingerprint(schema):
    # fastavro's CRC-64-AVRO hex digest is little-endian, as on the wire.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def strip_logical(schema):
    """The schema without logical types: they do not change the binary
    encoding, and without them fastavro reads and writes timestamps as the
    integers alertsvc models them as (instead of datetimes)."""
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical(s) for s in schema]
    return schema


def named_types(schema, namespace, names):
    """Fullname -> definition, for following references while converting."""
    if isinstance(schema, list):
        for s in schema:
            named_types(s, namespace, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            name = schema["name"]
            ns = schema.get("namespace", namespace)
            full = name if "." in name or not ns else f"{ns}.{name}"
            names[full] = schema
            inner = full.rpartition(".")[0]
            for field in schema.get("fields", []):
                named_types(field["type"], inner, names)
        elif kind == "array":
            named_types(schema["items"], namespace, names)
        elif kind == "map":
            named_types(schema["values"], namespace, names)
        elif isinstance(kind, (dict, list)):
            named_types(kind, namespace, names)


def resolve(schema, names):
    if isinstance(schema, str) and schema not in PRIMITIVES:
        matches = [d for full, d in names.items() if full == schema or full.endswith("." + schema)]
        return matches[0]
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
        return resolve(schema["type"], names)
    return schema


def kind_of(schema):
    return schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else "union"


def from_json(value, schema, names):
    """JSON as alertsvc models it -> what fastavro writes: bytes and fixed
    from UTF-8 strings, records and containers walked."""
    schema = resolve(schema, names)
    kind = kind_of(schema)
    if kind in ("bytes", "fixed"):
        return value.encode("utf-8")
    if kind == "record":
        return {
            f["name"]: from_json(value[f["name"]], f["type"], names)
            for f in schema["fields"]
            if f["name"] in value
        }
    if kind == "array":
        return [from_json(v, schema["items"], names) for v in value]
    if kind == "map":
        return {k: from_json(v, schema["values"], names) for k, v in value.items()}
    if kind == "union":
        if value is None:
            return None
        branches = [b for b in schema if b != "null"]
        # One non-null branch: convert for it; several: fastavro picks the
        # branch from the Python type of a primitive value.
        return from_json(value, branches[0], names) if len(branches) == 1 else value
    return value


def to_json(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def main():
    request = load(sys.argv[1])
    response = {"fingerprint": [], "decode": [], "encode": []}
    for path in request.get("fingerprint", []):
        response["fingerprint"].append(spec_fingerprint(load(path)).hex())
    for item in request.get("decode", []):
        schema = load(item["schema"])
        data = bytes.fromhex(item["bytes"])
        header = b"\xc3\x01" + spec_fingerprint(schema)
        if data[:10] != header:
            sys.exit(f"{item['schema']}: header {data[:10].hex()} is not fastavro's {header.hex()}")
        body = io.BytesIO(data[10:])
        value = fastavro.schemaless_reader(body, fastavro.parse_schema(strip_logical(schema)))
        if body.read():
            sys.exit(f"{item['schema']}: trailing bytes after the datum")
        response["decode"].append(to_json(value))
    for item in request.get("encode", []):
        schema = load(item["schema"])
        names = {}
        named_types(schema, "", names)
        out = io.BytesIO()
        out.write(b"\xc3\x01" + spec_fingerprint(schema))
        fastavro.schemaless_writer(
            out, fastavro.parse_schema(strip_logical(schema)), from_json(item["value"], schema, names)
        )
        response["encode"].append(out.getvalue().hex())
    json.dump(response, sys.stdout)


if __name__ == "__main__":
    main()
