//! The JSON form of image entries, exactly as CRIU's `crit` prints and reads it.
//!
//! crit walks each message by reflection: set fields in field-number order, enums by name,
//! bytes as base64 (with Python's line breaks), and, in `--pretty` mode, numbers shown the
//! way the field's `(criu)` option asks: hex strings, `A | B` flag strings, `major:minor`
//! devices, IP address strings or names from a small table. Reading JSON accepts both the
//! plain and the pretty forms. Paths and task names, `string` in CRIU's .proto but any
//! bytes on Linux, are `bytes` here and print as crit prints them: the text when it is
//! UTF-8, else Python's `b'...'` repr (see [`path_to_json`]). The options come from the schema's descriptors, so a new
//! field in `proto/` needs no code here.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

/// The `(criu)` options of one field.
#[derive(Debug, Default, Clone)]
struct FieldOpts {
    hex: bool,
    ipadd: bool,
    flags: Option<String>,
    dev: bool,
    odev: bool,
    dict: Option<String>,
    conv: Option<String>,
}

/// The compiled schema with every field's display options looked up once.
pub struct Schema {
    pool: DescriptorPool,
    opts: HashMap<String, FieldOpts>,
}

/// The schema of this crate, built on first use.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The descriptor set is produced by build.rs from the same files as the Rust
        // types; failing to decode it is a build defect, not an input error.
        let pool = DescriptorPool::decode(crate::DESCRIPTOR_SET)
            .expect("embedded descriptor set is valid");
        let ext = pool.get_extension_by_name("criu");
        let mut opts = HashMap::new();
        for message in pool.all_messages() {
            for field in message.fields() {
                let Some(ext) = ext.as_ref() else { continue };
                let options = field.options();
                if !options.has_extension(ext) {
                    continue;
                }
                let value = options.get_extension(ext);
                let Some(o) = value.as_message() else {
                    continue;
                };
                let flag = |name: &str| {
                    o.get_field_by_name(name)
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false)
                };
                let text = |name: &str| {
                    o.has_field_by_name(name)
                        .then(|| {
                            o.get_field_by_name(name)
                                .and_then(|v| v.as_str().map(str::to_owned))
                        })
                        .flatten()
                };
                opts.insert(
                    field.full_name().to_owned(),
                    FieldOpts {
                        hex: flag("hex"),
                        ipadd: flag("ipadd"),
                        flags: text("flags"),
                        dev: flag("dev"),
                        odev: flag("odev"),
                        dict: text("dict"),
                        conv: text("conv"),
                    },
                );
            }
        }
        Schema { pool, opts }
    })
}

impl Schema {
    /// The descriptor of a message by its proto name (`"core_entry"`).
    pub fn message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }

    fn opts(&self, field: &FieldDescriptor) -> Option<&FieldOpts> {
        self.opts.get(field.full_name())
    }
}

// Bit tables for `(criu).flags`, as crit names them.
const MMAP_PROT: &[(&str, u64)] = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];
const MMAP_FLAGS: &[(&str, u64)] = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x8),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x100),
];
const RFILE_FLAGS: &[(&str, u64)] = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];
const SEALS_FLAGS: &[(&str, u64)] = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];
// The image's own flag sets come from `flags`, where dump and restore read them too.
static MMAP_STATUS: std::sync::LazyLock<Vec<(&str, u64)>> =
    std::sync::LazyLock::new(crate::flags::vma_status_names);
static PMAP_FLAGS: std::sync::LazyLock<Vec<(&str, u64)>> =
    std::sync::LazyLock::new(crate::flags::page_flag_names);

fn flags_table(name: &str) -> Option<&'static [(&'static str, u64)]> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS.as_slice(),
        "rfile.flags" => RFILE_FLAGS,
        "pmap.flags" => PMAP_FLAGS.as_slice(),
        "seals.flags" => SEALS_FLAGS,
        _ => return None,
    })
}

/// Value names for `(criu).dict`, looked up by table and field name.
fn dict_table(dict: &str, field: &str) -> Option<&'static [(i64, &'static str)]> {
    Some(match (dict, field) {
        ("gen", "task_state") => &[(1, "Alive"), (3, "Zombie"), (6, "Stopped")],
        ("sk", "family") => &[
            (1, "UNIX"),
            (2, "INET"),
            (10, "INET6"),
            (16, "NETLINK"),
            (17, "PACKET"),
        ],
        ("sk", "type") => &[
            (1, "STREAM"),
            (2, "DGRAM"),
            (3, "RAW"),
            (5, "SEQPACKET"),
            (10, "PACKET"),
        ],
        ("sk", "state") => &[
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
        ],
        ("sk", "proto") => &[(0, "IP"), (6, "TCP"), (17, "UDP"), (136, "UDPLITE")],
        _ => return None,
    })
}

/// The kernel's packed dev_t: 12 bits of major above 20 bits of minor.
const KERN_MINORBITS: u32 = 20;

/// Whether `--pretty` formatting applies, and whether a parent field asked for hex.
#[derive(Clone, Copy)]
struct Style {
    pretty: bool,
    hex: bool,
}

/// Converts a message to crit's JSON object.
pub fn message_to_json(msg: &DynamicMessage, pretty: bool) -> Json {
    Json::Object(to_object(msg, Style { pretty, hex: false }))
}

fn to_object(msg: &DynamicMessage, style: Style) -> Map<String, Json> {
    let schema = schema();
    let mut fields: Vec<_> = msg.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    let mut out = Map::new();
    for (field, value) in fields {
        let opts = schema.opts(&field);
        let style = Style {
            pretty: style.pretty,
            hex: style.hex || opts.is_some_and(|o| o.hex),
        };
        let json = match value {
            Value::List(items) => {
                if style.pretty && opts.is_some_and(|o| o.ipadd) {
                    Json::Array(vec![Json::String(ip_to_string(items))])
                } else {
                    Json::Array(
                        items
                            .iter()
                            .map(|v| scalar_to_json(&field, opts, v, style))
                            .collect(),
                    )
                }
            }
            v => scalar_to_json(&field, opts, v, style),
        };
        out.insert(field.name().to_owned(), json);
    }
    out
}

fn scalar_to_json(
    field: &FieldDescriptor,
    opts: Option<&FieldOpts>,
    value: &Value,
    style: Style,
) -> Json {
    match value {
        Value::Message(m) => Json::Object(to_object(m, style)),
        Value::Bytes(b) => match opts.and_then(|o| o.conv.as_deref()) {
            Some("unix_name") => Json::String(quopri_encode(b)),
            Some("path" | "str") => Json::String(path_to_json(b)),
            _ => Json::String(encode_base64(b)),
        },
        Value::EnumNumber(n) => match field.kind().as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => Json::String(v.name().to_owned()),
            None => Json::from(*n),
        },
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::F32(f) => Json::from(*f),
        Value::F64(f) => Json::from(*f),
        Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_) => {
            let n = int_of(value);
            if style.pretty {
                if let Some(text) = pretty_int(field, opts, n, style.hex) {
                    return Json::String(text);
                }
            }
            match value {
                Value::U32(v) => Json::from(*v),
                Value::U64(v) => Json::from(*v),
                Value::I32(v) => Json::from(*v),
                Value::I64(v) => Json::from(*v),
                _ => unreachable!("matched integer variants above"),
            }
        }
        Value::List(_) | Value::Map(_) => Json::Null,
    }
}

fn int_of(value: &Value) -> i128 {
    match value {
        Value::I32(v) => i128::from(*v),
        Value::I64(v) => i128::from(*v),
        Value::U32(v) => i128::from(*v),
        Value::U64(v) => i128::from(*v),
        _ => 0,
    }
}

fn hex(n: i128) -> String {
    if n < 0 {
        format!("-0x{:x}", -n)
    } else {
        format!("0x{n:x}")
    }
}

/// The pretty string form of an integer field, if its options ask for one.
fn pretty_int(
    field: &FieldDescriptor,
    opts: Option<&FieldOpts>,
    n: i128,
    hex_inherited: bool,
) -> Option<String> {
    if hex_inherited {
        return Some(hex(n));
    }
    let opts = opts?;
    if opts.dev {
        let n = n as u64;
        let (major, minor) = if opts.odev {
            // glibc's gnu_dev_major/minor split of a userspace dev_t.
            (
                ((n >> 32) & 0xffff_f000) | ((n >> 8) & 0xfff),
                ((n >> 12) & 0xffff_ff00) | (n & 0xff),
            )
        } else {
            (n >> KERN_MINORBITS, n & ((1 << KERN_MINORBITS) - 1))
        };
        return Some(format!("{major}:{minor}"));
    }
    if let Some(table) = opts.flags.as_deref() {
        return Some(match flags_table(table) {
            Some(bits) => {
                let n = n as u64;
                let mut names: Vec<String> = bits
                    .iter()
                    .filter(|(_, b)| n & b != 0)
                    .map(|(name, _)| (*name).to_owned())
                    .collect();
                let rest = n & !bits.iter().fold(0, |acc, (_, b)| acc | b);
                if rest != 0 {
                    names.push(format!("0x{rest:x}"));
                }
                names.join(" | ")
            }
            None => hex(n),
        });
    }
    if let Some(dict) = opts.dict.as_deref() {
        let name = dict_table(dict, field.name())?
            .iter()
            .find(|(v, _)| i128::from(*v) == n)?
            .1;
        return Some(name.to_owned());
    }
    None
}

/// Joins a repeated u32 address field (network byte order words) into crit's string.
fn ip_to_string(items: &[Value]) -> String {
    let words: Vec<u32> = items
        .iter()
        .map(|v| u32::from_be(v.as_u32().unwrap_or(0)))
        .collect();
    if words.len() == 1 {
        Ipv4Addr::from(words[0]).to_string()
    } else {
        let mut bits: u128 = 0;
        for w in words.iter().take(4) {
            bits = (bits << 32) | u128::from(*w);
        }
        Ipv6Addr::from(bits).to_string()
    }
}

/// Python's `base64.encodebytes`: standard alphabet, a newline after every 76 characters
/// and at the end (nothing at all for empty input).
pub fn encode_base64(data: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Python's `base64.decodebytes`: whitespace and line breaks are ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// The JSON text of a path (a `bytes` field with `(criu).conv = "path"`, a `string` in
/// CRIU's .proto). A UTF-8 path is the string itself, as CRIU's crit prints it. A path
/// that is not UTF-8 is Python's `repr` of the bytes (`b'/tmp/\xff'`): what Debian's
/// crit prints for such a string field too (its protobuf hands it the raw bytes), and
/// what [`path_from_json`] reads back exactly. The rare UTF-8 path that itself reads as
/// such a literal is printed as one too, so the text always reads back to the same bytes.
pub fn path_to_json(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(text) if parse_py_bytes(text).is_none() => text.to_owned(),
        _ => py_bytes_repr(path),
    }
}

/// The bytes of a path's JSON text: see [`path_to_json`].
pub fn path_from_json(text: &str) -> Vec<u8> {
    parse_py_bytes(text).unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Python's `repr()` of a bytes object.
fn py_bytes_repr(data: &[u8]) -> String {
    let quote = if data.contains(&b'\'') && !data.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::with_capacity(data.len() + 3);
    out.push('b');
    out.push(quote as char);
    for &c in data {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c as char);
            }
            0x20..=0x7e => out.push(c as char),
            c => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push(quote as char);
    out
}

/// The bytes of a Python bytes literal in the form `repr()` writes (`b'..'` or `b".."`
/// with `\\`, `\'`, `\"`, `\t`, `\n`, `\r` and `\xHH` escapes), or None for any other text.
fn parse_py_bytes(text: &str) -> Option<Vec<u8>> {
    let rest = text.strip_prefix('b')?.as_bytes();
    let (&quote, rest) = rest.split_first()?;
    if quote != b'\'' && quote != b'"' {
        return None;
    }
    let (&last, body) = rest.split_last()?;
    if last != quote {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == quote || !(0x20..=0x7e).contains(&c) {
            return None;
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let escaped = *body.get(i + 1)?;
        i += 2;
        out.push(match escaped {
            b'\\' | b'\'' | b'"' => escaped,
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            b'x' => {
                let hex = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                i += 2;
                u8::from_str_radix(hex, 16).ok()?
            }
            _ => return None,
        });
    }
    Some(out)
}

/// Quoted-printable text of a unix socket name, as Python's `quopri.encodestring`.
pub fn quopri_encode(data: &[u8]) -> String {
    const MAX_LINE: usize = 76;
    let mut out = String::new();
    let mut line_len = 0;
    for (i, &c) in data.iter().enumerate() {
        let last = i + 1 == data.len();
        let next_is_eol = last || data[i + 1] == b'\n' || data[i + 1] == b'\r';
        if c == b'\n' {
            out.push('\n');
            line_len = 0;
            continue;
        }
        let quote = c > 126
            || c == b'='
            || (c == b'.' && line_len == 0 && next_is_eol)
            || ((c == b' ' || c == b'\t') && next_is_eol)
            || (c < 33 && c != b'\r' && c != b' ' && c != b'\t');
        let piece = if quote {
            format!("={c:02X}")
        } else {
            (c as char).to_string()
        };
        if line_len + piece.len() >= MAX_LINE && !last {
            out.push_str("=\n");
            line_len = 0;
        }
        out.push_str(&piece);
        line_len += piece.len();
    }
    out
}

/// Decodes quoted-printable text (soft line breaks and `=XX` escapes).
pub fn quopri_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            let hexpair = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hexpair.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'=');
                    i += 1;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Checks that every required field is set, recursively; returns the dotted path of the
/// first one missing.
pub fn missing_required(msg: &DynamicMessage) -> Option<String> {
    for field in msg.descriptor().fields() {
        if field.cardinality() == Cardinality::Required && !msg.has_field(&field) {
            return Some(field.name().to_owned());
        }
        if !msg.has_field(&field) {
            continue;
        }
        let inner = |v: &Value| v.as_message().and_then(missing_required);
        let found = match &*msg.get_field(&field) {
            Value::List(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| inner(v).map(|p| format!("[{i}].{p}"))),
            v => inner(v).map(|p| format!(".{p}")),
        };
        if let Some(path) = found {
            return Some(format!("{}{path}", field.name()));
        }
    }
    None
}

/// Builds a message of type `desc` from crit's JSON object (plain or pretty form).
/// Errors name the JSON path of the offending value.
pub fn message_from_json(
    desc: &MessageDescriptor,
    json: &Json,
    path: &str,
) -> Result<DynamicMessage, String> {
    let obj = json
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object for {}", desc.name()))?;
    let schema = schema();
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let Some(value) = obj.get(field.name()) else {
            continue;
        };
        let here = format!("{path}.{}", field.name());
        let opts = schema.opts(&field);
        let parsed = if field.is_list() {
            let items = value
                .as_array()
                .ok_or_else(|| format!("{here}: expected a list"))?;
            if opts.is_some_and(|o| o.ipadd) && items.first().is_some_and(Json::is_string) {
                ip_from_string(items[0].as_str().unwrap_or_default())
                    .map_err(|e| format!("{here}: {e}"))?
            } else {
                let mut list = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    list.push(value_from_json(
                        &field,
                        opts,
                        item,
                        &format!("{here}[{i}]"),
                    )?);
                }
                Value::List(list)
            }
        } else {
            value_from_json(&field, opts, value, &here)?
        };
        msg.set_field(&field, parsed);
    }
    Ok(msg)
}

fn ip_from_string(text: &str) -> Result<Value, String> {
    if let Ok(v4) = text.parse::<Ipv4Addr>() {
        return Ok(Value::List(vec![Value::U32(u32::from(v4).to_be())]));
    }
    let v6: Ipv6Addr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    let bits = u128::from(v6);
    Ok(Value::List(
        (0..4)
            .rev()
            .map(|i| Value::U32(((bits >> (32 * i)) as u32).to_be()))
            .collect(),
    ))
}

fn value_from_json(
    field: &FieldDescriptor,
    opts: Option<&FieldOpts>,
    json: &Json,
    path: &str,
) -> Result<Value, String> {
    let kind = field.kind();
    match kind {
        Kind::Message(m) => Ok(Value::Message(message_from_json(&m, json, path)?)),
        Kind::Bytes => {
            let text = json
                .as_str()
                .ok_or_else(|| format!("{path}: expected a string of encoded bytes"))?;
            let bytes = match opts.and_then(|o| o.conv.as_deref()) {
                Some("unix_name") => quopri_decode(text),
                Some("path" | "str") => Ok(path_from_json(text)),
                _ => decode_base64(text),
            }
            .map_err(|e| format!("{path}: {e}"))?;
            Ok(Value::Bytes(bytes.into()))
        }
        Kind::Enum(e) => {
            let number = match json {
                Json::String(name) => {
                    e.get_value_by_name(name)
                        .map(|v| v.number())
                        .ok_or_else(|| {
                            format!("{path}: {name:?} is not a value of enum {}", e.name())
                        })?
                }
                Json::Number(n) => n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| format!("{path}: {n} is not a valid enum number"))?,
                _ => return Err(format!("{path}: expected an enum name")),
            };
            Ok(Value::EnumNumber(number))
        }
        Kind::Bool => Ok(Value::Bool(match json {
            Json::Bool(b) => *b,
            Json::Number(n) => n.as_f64() != Some(0.0),
            Json::String(s) => !s.is_empty(),
            Json::Null => false,
            Json::Array(a) => !a.is_empty(),
            Json::Object(o) => !o.is_empty(),
        })),
        Kind::String => Ok(Value::String(match json {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })),
        Kind::Float | Kind::Double => {
            let f = json
                .as_f64()
                .ok_or_else(|| format!("{path}: expected a number"))?;
            Ok(if kind == Kind::Float {
                Value::F32(f as f32)
            } else {
                Value::F64(f)
            })
        }
        _ => {
            let n = int_from_json(field, opts, json).map_err(|e| format!("{path}: {e}"))?;
            let out_of_range = || format!("{path}: {n} is out of range for {:?}", field.kind());
            Ok(match kind {
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                    Value::I32(i32::try_from(n).map_err(|_| out_of_range())?)
                }
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                    Value::I64(i64::try_from(n).map_err(|_| out_of_range())?)
                }
                Kind::Uint32 | Kind::Fixed32 => {
                    Value::U32(u32::try_from(n).map_err(|_| out_of_range())?)
                }
                _ => Value::U64(u64::try_from(n).map_err(|_| out_of_range())?),
            })
        }
    }
}

fn int_from_json(
    field: &FieldDescriptor,
    opts: Option<&FieldOpts>,
    json: &Json,
) -> Result<i128, String> {
    match json {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| format!("{n} is not an integer")),
        Json::Bool(b) => Ok(i128::from(*b)),
        Json::String(s) => {
            if let Some(o) = opts {
                if o.dev {
                    let (major, minor) = s
                        .split_once(':')
                        .ok_or_else(|| format!("{s:?} is not major:minor"))?;
                    let major: u64 = major
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad major in {s:?}"))?;
                    let minor: u64 = minor
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad minor in {s:?}"))?;
                    let dev = if o.odev {
                        ((major & 0xfff) << 8)
                            | ((major & !0xfff) << 32)
                            | (minor & 0xff)
                            | ((minor & !0xff) << 12)
                    } else {
                        (major << KERN_MINORBITS) | minor
                    };
                    return Ok(i128::from(dev));
                }
                if let Some(bits) = o.flags.as_deref().and_then(flags_table) {
                    if s.is_empty() {
                        return Ok(0);
                    }
                    let mut total: i128 = 0;
                    for token in s.split('|').map(str::trim) {
                        total += match bits.iter().find(|(name, _)| *name == token) {
                            Some((_, b)) => i128::from(*b),
                            None => parse_py_int(token)?,
                        };
                    }
                    return Ok(total);
                }
                if let Some(dict) = o.dict.as_deref() {
                    if let Some((v, _)) = dict_table(dict, field.name())
                        .and_then(|t| t.iter().find(|(_, name)| *name == s))
                    {
                        return Ok(i128::from(*v));
                    }
                }
            }
            parse_py_int(s)
        }
        _ => Err("expected an integer".to_owned()),
    }
}

/// Python's `int(text, 0)`: optional sign, then decimal or a 0x/0o/0b prefix.
fn parse_py_int(text: &str) -> Result<i128, String> {
    let t = text.trim().replace('_', "");
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (false, t.strip_prefix('+').unwrap_or(&t).to_owned()),
    };
    let lower = digits.to_ascii_lowercase();
    let parsed = if let Some(h) = lower.strip_prefix("0x") {
        i128::from_str_radix(h, 16)
    } else if let Some(o) = lower.strip_prefix("0o") {
        i128::from_str_radix(o, 8)
    } else if let Some(b) = lower.strip_prefix("0b") {
        i128::from_str_radix(b, 2)
    } else {
        lower.parse::<i128>()
    };
    let n = parsed.map_err(|_| format!("{text:?} is not an integer"))?;
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_python_line_breaks() {
        assert_eq!(encode_base64(b"hello-pipe"), "aGVsbG8tcGlwZQ==\n");
        assert_eq!(encode_base64(b""), "");
        let long = encode_base64(&[0u8; 100]);
        assert_eq!(long.lines().next().unwrap().len(), 76);
        assert_eq!(decode_base64(&long).unwrap(), vec![0u8; 100]);
    }

    #[test]
    fn quopri_round_trips_abstract_names() {
        let name = b"\0/tmp/sock=1";
        let text = quopri_encode(name);
        assert_eq!(text, "=00/tmp/sock=3D1");
        assert_eq!(quopri_decode(&text).unwrap(), name);
    }

    #[test]
    fn paths_print_as_crit_does_and_read_back_byte_for_byte() {
        // UTF-8: the string itself (crit prints "/tmp/\u00e9" for it, as we do).
        assert_eq!(path_to_json("/tmp/é x".as_bytes()), "/tmp/é x");
        // Not UTF-8: Python's repr of the bytes, as Debian's crit prints it.
        assert_eq!(path_to_json(b"/tmp/\xff\xfe"), "b'/tmp/\\xff\\xfe'");
        assert_eq!(path_to_json(b"/a'b\xff"), "b\"/a'b\\xff\"");
        assert_eq!(path_to_json(b"/a'\"\\\t\xff"), "b'/a\\'\"\\\\\\t\\xff'");
        // A UTF-8 name that reads as a bytes literal is printed as one, to stay exact.
        assert_eq!(path_to_json(b"b'x'"), "b\"b'x'\"");
        for path in [
            &b"/tmp/\xff\xfe"[..],
            b"/dir-\xff\xfe/file",
            b"/a'b\"c\\d\n\r\t\x7f\x80",
            b"b'x'",
            b"b'\\xff'",
            "/ünï/cødé".as_bytes(),
            b"",
            b"/",
        ] {
            assert_eq!(path_from_json(&path_to_json(path)), path, "{path:?}");
        }
        // Text that is not a bytes literal is the path's own bytes.
        for text in ["b'", "b'a", "b'a\"", "b'\\q'", "b'\\x4'", "b'é'", "bx'a'"] {
            assert_eq!(path_from_json(text), text.as_bytes(), "{text}");
        }
    }

    #[test]
    fn python_int_forms() {
        assert_eq!(parse_py_int("0x1f").unwrap(), 31);
        assert_eq!(parse_py_int("-0x10").unwrap(), -16);
        assert_eq!(parse_py_int("42").unwrap(), 42);
        assert!(parse_py_int("zz").is_err());
    }

    #[test]
    fn schema_knows_options() {
        let s = schema();
        let vma = s.message("vma_entry").unwrap();
        let start = vma.get_field_by_name("start").unwrap();
        assert!(s.opts(&start).unwrap().hex);
        let prot = vma.get_field_by_name("prot").unwrap();
        assert_eq!(s.opts(&prot).unwrap().flags.as_deref(), Some("mmap.prot"));
    }

    #[test]
    fn ip_addresses_round_trip() {
        for text in ["127.0.0.1", "::1", "fe80::1:2"] {
            let Value::List(words) = ip_from_string(text).unwrap() else {
                panic!()
            };
            assert_eq!(ip_to_string(&words), text);
        }
    }
}
