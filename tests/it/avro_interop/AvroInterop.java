// A second Avro implementation for tests/it/avro_interop.rs: Apache Avro for
// Java (Debian's libavro-java). Run in single-file source mode:
//
//   java -cp <avro classpath> AvroInterop.java request.json
//
// request: {"fingerprint": [avsc...],
//           "decode": [{"schema": avsc, "bytes": hex}],   single-object
//           "encode": [{"schema": avsc, "value": json}]}
// prints:  {"fingerprint": [hex...], "decode": [json...], "encode": [hex...]}
//
// Values are plain JSON as alertsvc models records: unions unwrapped, enums
// as symbols, bytes and fixed as UTF-8 strings, timestamps as integers.
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericFixed;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.codehaus.jackson.JsonNode;
import org.codehaus.jackson.map.ObjectMapper;
import org.codehaus.jackson.node.ArrayNode;
import org.codehaus.jackson.node.JsonNodeFactory;
import org.codehaus.jackson.node.ObjectNode;

public class AvroInterop {
  static final JsonNodeFactory F = JsonNodeFactory.instance;
  static final Map<String, Schema> SCHEMAS = new LinkedHashMap<>();

  static Schema schema(String path) throws Exception {
    Schema s = SCHEMAS.get(path);
    if (s == null) {
      s = new Schema.Parser().parse(new File(path));
      SCHEMAS.put(path, s);
    }
    return s;
  }

  static String hex(byte[] bytes) {
    StringBuilder b = new StringBuilder();
    for (byte x : bytes) b.append(String.format("%02x", x & 0xff));
    return b.toString();
  }

  static byte[] unhex(String s) {
    byte[] out = new byte[s.length() / 2];
    for (int i = 0; i < out.length; i++)
      out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    return out;
  }

  public static void main(String[] args) throws Exception {
    ObjectMapper mapper = new ObjectMapper();
    JsonNode request = mapper.readTree(new File(args[0]));
    ObjectNode response = F.objectNode();

    ArrayNode fingerprints = response.putArray("fingerprint");
    for (JsonNode path : iter(request.get("fingerprint"))) {
      long fp = SchemaNormalization.parsingFingerprint64(schema(path.getTextValue()));
      byte[] le = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array();
      fingerprints.add(hex(le));
    }

    ArrayNode decoded = response.putArray("decode");
    for (JsonNode item : iter(request.get("decode"))) {
      Schema s = schema(item.get("schema").getTextValue());
      // Throws MissingSchemaException unless the record's fingerprint is
      // Java's for this schema: the check this test exists for.
      BinaryMessageDecoder<Object> decoder = new BinaryMessageDecoder<>(GenericData.get(), s);
      Object datum = decoder.decode(unhex(item.get("bytes").getTextValue()));
      decoded.add(toJson(datum, s));
    }

    ArrayNode encoded = response.putArray("encode");
    for (JsonNode item : iter(request.get("encode"))) {
      Schema s = schema(item.get("schema").getTextValue());
      BinaryMessageEncoder<Object> encoder = new BinaryMessageEncoder<>(GenericData.get(), s);
      ByteBuffer buffer = encoder.encode(fromJson(item.get("value"), s));
      byte[] bytes = new byte[buffer.remaining()];
      buffer.get(bytes);
      encoded.add(hex(bytes));
    }
    System.out.println(mapper.writeValueAsString(response));
  }

  static Iterable<JsonNode> iter(JsonNode node) {
    List<JsonNode> out = new ArrayList<>();
    if (node != null) for (JsonNode n : node) out.add(n);
    return out;
  }

  static JsonNode toJson(Object d, Schema s) {
    switch (s.getType()) {
      case NULL: return F.nullNode();
      case BOOLEAN: return F.booleanNode((Boolean) d);
      case INT: return F.numberNode((Integer) d);
      case LONG: return F.numberNode((Long) d);
      case FLOAT: return F.numberNode((double) (Float) d);
      case DOUBLE: return F.numberNode((Double) d);
      case STRING: case ENUM: return F.textNode(d.toString());
      case BYTES: {
        ByteBuffer b = ((ByteBuffer) d).duplicate();
        byte[] bytes = new byte[b.remaining()];
        b.get(bytes);
        return F.textNode(new String(bytes, StandardCharsets.UTF_8));
      }
      case FIXED: return F.textNode(new String(((GenericFixed) d).bytes(), StandardCharsets.UTF_8));
      case ARRAY: {
        ArrayNode a = F.arrayNode();
        for (Object x : (List<?>) d) a.add(toJson(x, s.getElementType()));
        return a;
      }
      case MAP: {
        ObjectNode o = F.objectNode();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) d).entrySet())
          o.put(e.getKey().toString(), toJson(e.getValue(), s.getValueType()));
        return o;
      }
      case UNION:
        return toJson(d, s.getTypes().get(GenericData.get().resolveUnion(s, d)));
      case RECORD: {
        ObjectNode o = F.objectNode();
        GenericRecord r = (GenericRecord) d;
        for (Schema.Field f : s.getFields()) o.put(f.name(), toJson(r.get(f.pos()), f.schema()));
        return o;
      }
      default: throw new IllegalArgumentException("unsupported " + s);
    }
  }

  static boolean fits(JsonNode n, Schema s) {
    switch (s.getType()) {
      case NULL: return n.isNull();
      case BOOLEAN: return n.isBoolean();
      case INT: return n.isInt();
      case LONG: return n.isIntegralNumber();
      case FLOAT: case DOUBLE: return n.isNumber();
      case STRING: case BYTES: case ENUM: case FIXED: return n.isTextual();
      case ARRAY: return n.isArray();
      case MAP: case RECORD: return n.isObject();
      default: return false;
    }
  }

  static Object fromJson(JsonNode n, Schema s) {
    switch (s.getType()) {
      case NULL: return null;
      case BOOLEAN: return n.getBooleanValue();
      case INT: return n.getIntValue();
      case LONG: return n.getLongValue();
      case FLOAT: return (float) n.getDoubleValue();
      case DOUBLE: return n.getDoubleValue();
      case STRING: return n.getTextValue();
      case ENUM: return new GenericData.EnumSymbol(s, n.getTextValue());
      case BYTES: return ByteBuffer.wrap(n.getTextValue().getBytes(StandardCharsets.UTF_8));
      case FIXED: return new GenericData.Fixed(s, n.getTextValue().getBytes(StandardCharsets.UTF_8));
      case ARRAY: {
        List<Object> a = new GenericData.Array<>(n.size(), s);
        for (JsonNode x : n) a.add(fromJson(x, s.getElementType()));
        return a;
      }
      case MAP: {
        Map<String, Object> m = new LinkedHashMap<>();
        Iterator<Map.Entry<String, JsonNode>> it = n.getFields();
        while (it.hasNext()) {
          Map.Entry<String, JsonNode> e = it.next();
          m.put(e.getKey(), fromJson(e.getValue(), s.getValueType()));
        }
        return m;
      }
      case UNION:
        for (Schema branch : s.getTypes())
          if (fits(n == null ? F.nullNode() : n, branch)) return fromJson(n, branch);
        throw new IllegalArgumentException("no branch of " + s + " fits " + n);
      case RECORD: {
        GenericData.Record r = new GenericData.Record(s);
        for (Schema.Field f : s.getFields()) {
          JsonNode v = n.get(f.name());
          r.put(f.pos(), v == null ? GenericData.get().getDefaultValue(f) : fromJson(v, f.schema()));
        }
        return r;
      }
      default: throw new IllegalArgumentException("unsupported " + s);
    }
  }
}
