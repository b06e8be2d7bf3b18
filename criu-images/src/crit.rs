//! Whole images as crit's JSON documents (`{"magic": ..., "entries": [...]}`), the
//! `info` count, the `x` explorers of an image directory, and Python's JSON text layout.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value as Json};

use crate::error::{Error, ErrorKind, Location, Result};
use crate::frame::{ImageReader, ImageWriter};
use crate::json::{
    self, decode_base64, encode_base64, message_from_json, message_to_json, missing_required,
};
use crate::kind::{Body, Extra, Family, ImageKind};

/// How to decode: crit's `--pretty`, and `show --nopl` (replace extra payloads by their
/// size).
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    pub pretty: bool,
    pub no_payload: bool,
}

fn descriptor(kind: &ImageKind, name: &str, at: Location) -> Result<MessageDescriptor> {
    json::schema()
        .message(name)
        .ok_or_else(|| Error::new(at, ErrorKind::NoSchema(format!("{} ({name})", kind.name))))
}

/// Reads one entry as a dynamic message of type `desc`; `None` at the end of the file.
fn next_message<R: Read>(
    r: &mut ImageReader<R>,
    desc: &MessageDescriptor,
) -> Result<Option<DynamicMessage>> {
    let at = r.location();
    let Some(payload) = r.next_payload()? else {
        return Ok(None);
    };
    let msg = DynamicMessage::decode(desc.clone(), payload.as_slice()).map_err(|source| {
        Error::new(
            at.clone(),
            ErrorKind::Decode {
                message: desc.name().to_owned(),
                source,
            },
        )
    })?;
    if let Some(field) = missing_required(&msg) {
        return Err(Error::new(
            at,
            ErrorKind::MissingRequired {
                message: desc.name().to_owned(),
                field,
            },
        ));
    }
    Ok(Some(msg))
}

fn uint_field(msg: &DynamicMessage, name: &str) -> u64 {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_u32().map(u64::from)))
        .unwrap_or(0)
}

/// Whether an `ipc_shm_entry` keeps its segment's contents in `pagemap-shmem-ID.img`
/// (`in_pagemaps`, as CRIU 4.2 writes it) instead of after the entry. Python's crit reads
/// inline contents regardless, and so misreads every entry after the first of such an
/// image; this one follows the flag.
fn shm_in_pagemaps(msg: &DynamicMessage) -> bool {
    msg.get_field_by_name("in_pagemaps")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Python's `round_up`.
fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// crit's size string for `--nopl` (`10B`, `1.5KB`...).
fn human_size(n: u64) -> String {
    let mut num = n as f64;
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"] {
        if num < 1024.0 {
            return if num.fract() == 0.0 {
                format!("{}{unit}B", num as u64)
            } else {
                format!("{num:.1}{unit}B")
            };
        }
        num /= 1024.0;
    }
    format!("{num:.1}YB")
}

/// Reads the extra data that follows `msg` and returns its JSON form.
fn read_extra<R: Read>(
    r: &mut ImageReader<R>,
    extra: Extra,
    msg: &DynamicMessage,
    opts: DecodeOptions,
) -> Result<Json> {
    let simple = |r: &mut ImageReader<R>, len: u64, what| -> Result<Json> {
        if opts.no_payload {
            r.skip(len, what)?;
            Ok(Json::String(format!("... <{}>", human_size(len))))
        } else {
            Ok(Json::String(encode_base64(&r.read_extra(len, what)?)))
        }
    };
    match extra {
        Extra::PipeData => simple(r, uint_field(msg, "bytes"), "pipe data"),
        Extra::SocketQueue => simple(r, uint_field(msg, "length"), "socket queue data"),
        Extra::BpfMapData => simple(
            r,
            uint_field(msg, "keys_bytes") + uint_field(msg, "values_bytes"),
            "bpf map data",
        ),
        Extra::TcpQueues => {
            let (inq, outq) = (uint_field(msg, "inq_len"), uint_field(msg, "outq_len"));
            if opts.no_payload {
                r.skip(inq + outq, "tcp queues")?;
                return Ok(Json::String(format!("... <{}>", human_size(inq + outq))));
            }
            let mut obj = Map::new();
            obj.insert(
                "inq".into(),
                Json::String(encode_base64(&r.read_extra(inq, "tcp receive queue")?)),
            );
            obj.insert(
                "outq".into(),
                Json::String(encode_base64(&r.read_extra(outq, "tcp send queue")?)),
            );
            Ok(Json::Object(obj))
        }
        Extra::IpcShm => {
            let size = uint_field(msg, "size");
            let out = simple(r, size, "shared memory segment")?;
            r.skip(round_up(size, 4) - size, "shared memory padding")?;
            Ok(out)
        }
        Extra::IpcSem => {
            let size = 2 * uint_field(msg, "nsems");
            if opts.no_payload {
                r.skip(round_up(size, 8), "semaphore values")?;
                return Ok(Json::String(format!("... <{}>", human_size(size))));
            }
            let data = r.read_extra(size, "semaphore values")?;
            r.skip(round_up(size, 8) - size, "semaphore padding")?;
            Ok(Json::Array(
                data.chunks_exact(2)
                    .map(|c| Json::from(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ))
        }
        Extra::IpcMsg => {
            let desc = descriptor(r.kind(), "ipc_msg", r.location())?;
            let mut out = Vec::new();
            let mut total = 0;
            for _ in 0..uint_field(msg, "qnum") {
                let Some(m) = next_message(r, &desc)? else {
                    break;
                };
                let msize = uint_field(&m, "msize");
                total += m.encoded_len() as u64 + msize;
                if opts.no_payload {
                    r.skip(round_up(msize, 8), "message text")?;
                    continue;
                }
                out.push(message_to_json(&m, false));
                out.push(Json::String(encode_base64(
                    &r.read_extra(msize, "message text")?,
                )));
                r.skip(round_up(msize, 8) - msize, "message padding")?;
            }
            Ok(if opts.no_payload {
                Json::String(format!("... <{}>", human_size(total)))
            } else {
                Json::Array(out)
            })
        }
    }
}

/// Decodes a whole image into crit's JSON document.
pub fn decode<R: Read>(r: &mut ImageReader<R>, opts: DecodeOptions) -> Result<Json> {
    let kind = r.kind();
    let mut entries = Vec::new();
    match kind.body {
        Body::Raw => return Err(r.error(ErrorKind::RawImage { kind: kind.name })),
        Body::Entries { message, extra } => {
            let desc = descriptor(kind, message, r.location())?;
            while let Some(msg) = next_message(r, &desc)? {
                let mut json = message_to_json(&msg, opts.pretty);
                let no_extra = extra == Some(Extra::IpcShm) && shm_in_pagemaps(&msg);
                if let Some(extra) = extra.filter(|_| !no_extra) {
                    let data = read_extra(r, extra, &msg, opts)?;
                    json.as_object_mut().map(|o| o.insert("extra".into(), data));
                }
                entries.push(json);
            }
        }
        Body::Pagemap => {
            let head = descriptor(kind, "pagemap_head", r.location())?;
            let entry = descriptor(kind, "pagemap_entry", r.location())?;
            let mut desc = &head;
            while let Some(msg) = next_message(r, desc)? {
                entries.push(message_to_json(&msg, opts.pretty));
                desc = &entry;
            }
        }
        Body::GhostFile => {
            let head = descriptor(kind, "ghost_file_entry", r.location())?;
            let chunk = descriptor(kind, "ghost_chunk_entry", r.location())?;
            let Some(gf) = next_message(r, &head)? else {
                return Err(r.error(ErrorKind::Truncated {
                    what: "ghost file entry",
                    expected: 4,
                    got: 0,
                }));
            };
            let mut first = message_to_json(&gf, opts.pretty);
            let chunked = gf
                .get_field_by_name("chunks")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if chunked {
                entries.push(first);
                while let Some(c) = next_message(r, &chunk)? {
                    let mut json = message_to_json(&c, opts.pretty);
                    let len = uint_field(&c, "len");
                    if opts.no_payload {
                        r.skip(len, "ghost chunk data")?;
                    } else {
                        let data = encode_base64(&r.read_extra(len, "ghost chunk data")?);
                        json.as_object_mut()
                            .map(|o| o.insert("extra".into(), Json::String(data)));
                    }
                    entries.push(json);
                }
            } else {
                if !opts.no_payload {
                    let data = encode_base64(&r.read_to_end("ghost file contents")?);
                    first
                        .as_object_mut()
                        .map(|o| o.insert("extra".into(), Json::String(data)));
                }
                entries.push(first);
            }
        }
    }
    let mut doc = Map::new();
    doc.insert("magic".into(), Json::String(kind.name.to_owned()));
    doc.insert("entries".into(), Json::Array(entries));
    Ok(Json::Object(doc))
}

/// Counts the entries of an image, as `crit info` does (the pagemap head is not counted).
/// Every entry is decoded on the way, so a corrupt image is reported, not counted.
pub fn count<R: Read>(r: &mut ImageReader<R>) -> Result<u64> {
    let doc = decode(
        r,
        DecodeOptions {
            pretty: false,
            no_payload: true,
        },
    )?;
    let n = doc["entries"].as_array().map_or(0, |e| e.len() as u64);
    Ok(if r.kind().body == Body::Pagemap {
        n.saturating_sub(1)
    } else {
        n
    })
}

/// Writes crit's JSON document as a binary image. `path` is used in errors only.
pub fn encode<W: Write>(doc: &Json, out: W, path: &Path) -> Result<W> {
    let at = |entry: Option<usize>| Location {
        path: path.to_owned(),
        entry,
        offset: 0,
    };
    let json_err = |entry: Option<usize>, msg: String| Error::new(at(entry), ErrorKind::Json(msg));
    let magic = doc
        .get("magic")
        .and_then(Json::as_str)
        .ok_or_else(|| json_err(None, "document has no \"magic\" string".into()))?;
    let kind = ImageKind::by_name(magic)
        .filter(|k| k.family != Family::Raw)
        .ok_or_else(|| json_err(None, format!("unknown magic {magic:?}")))?;
    let entries = doc
        .get("entries")
        .and_then(Json::as_array)
        .ok_or_else(|| json_err(None, "document has no \"entries\" list".into()))?;
    let mut w = ImageWriter::new(out, path, kind)?;

    let build = |i: usize, name: &str, entry: &Json| -> Result<DynamicMessage> {
        let desc = descriptor(kind, name, at(Some(i)))?;
        let msg = message_from_json(&desc, entry, &format!("entries[{i}]"))
            .map_err(|e| json_err(Some(i), e))?;
        if let Some(field) = missing_required(&msg) {
            return Err(Error::new(
                at(Some(i)),
                ErrorKind::MissingRequired {
                    message: name.to_owned(),
                    field,
                },
            ));
        }
        Ok(msg)
    };
    let extra_bytes = |i: usize, entry: &Json, key: &str| -> Result<Vec<u8>> {
        match entry.get(key) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::String(s)) => {
                decode_base64(s).map_err(|e| json_err(Some(i), format!("entries[{i}].{key}: {e}")))
            }
            Some(_) => Err(json_err(
                Some(i),
                format!("entries[{i}].{key}: expected a base64 string"),
            )),
        }
    };

    for (i, entry) in entries.iter().enumerate() {
        let name = match kind.body {
            Body::Entries { message, .. } => message,
            Body::Pagemap if i == 0 => "pagemap_head",
            Body::Pagemap => "pagemap_entry",
            Body::GhostFile if i == 0 => "ghost_file_entry",
            Body::GhostFile => "ghost_chunk_entry",
            Body::Raw => unreachable!("raw kinds were refused above"),
        };
        let msg = build(i, name, entry)?;
        w.write_payload(&msg.encode_to_vec())?;
        match kind.body {
            Body::Entries {
                extra: Some(extra), ..
            } => {
                let pad = |w: &mut ImageWriter<W>, len: u64, to: u64| {
                    w.write_raw(&vec![0; (round_up(len, to) - len) as usize])
                };
                match extra {
                    Extra::PipeData | Extra::SocketQueue | Extra::BpfMapData => {
                        w.write_raw(&extra_bytes(i, entry, "extra")?)?;
                    }
                    Extra::TcpQueues => {
                        let q = entry.get("extra").cloned().unwrap_or(Json::Null);
                        w.write_raw(&extra_bytes(i, &q, "inq")?)?;
                        w.write_raw(&extra_bytes(i, &q, "outq")?)?;
                    }
                    Extra::IpcShm if shm_in_pagemaps(&msg) => {}
                    Extra::IpcShm => {
                        let size = uint_field(&msg, "size");
                        let mut data = extra_bytes(i, entry, "extra")?;
                        data.resize(size as usize, 0);
                        w.write_raw(&data)?;
                        pad(&mut w, size, 4)?;
                    }
                    Extra::IpcSem => {
                        let values = entry
                            .get("extra")
                            .and_then(Json::as_array)
                            .cloned()
                            .unwrap_or_default();
                        if values.len() as u64 != uint_field(&msg, "nsems") {
                            return Err(json_err(
                                Some(i),
                                format!(
                                    "entries[{i}].extra: number of semaphores differs from nsems"
                                ),
                            ));
                        }
                        for v in &values {
                            let v = v.as_u64().and_then(|v| u16::try_from(v).ok()).ok_or_else(
                                || {
                                    json_err(
                                        Some(i),
                                        format!("entries[{i}].extra: {v} is not a semaphore value"),
                                    )
                                },
                            )?;
                            w.write_raw(&v.to_le_bytes())?;
                        }
                        pad(&mut w, 2 * values.len() as u64, 8)?;
                    }
                    Extra::IpcMsg => {
                        let items = entry
                            .get("extra")
                            .and_then(Json::as_array)
                            .cloned()
                            .unwrap_or_default();
                        let desc = descriptor(kind, "ipc_msg", at(Some(i)))?;
                        for pair in items.chunks(2) {
                            let m =
                                message_from_json(&desc, &pair[0], &format!("entries[{i}].extra"))
                                    .map_err(|e| json_err(Some(i), e))?;
                            w.write_payload(&m.encode_to_vec())?;
                            let msize = uint_field(&m, "msize");
                            let text = pair.get(1).cloned().unwrap_or(Json::Null);
                            let mut data = match text {
                                Json::String(s) => {
                                    decode_base64(&s).map_err(|e| json_err(Some(i), e))?
                                }
                                _ => Vec::new(),
                            };
                            data.resize(msize as usize, 0);
                            w.write_raw(&data)?;
                            pad(&mut w, msize, 8)?;
                        }
                    }
                }
            }
            Body::GhostFile => w.write_raw(&extra_bytes(i, entry, "extra")?)?,
            _ => {}
        }
    }
    w.finish()
}

/// Formats JSON the way Python's `json.dump` does: `", "` and `": "` separators when
/// compact, 4-space indentation when pretty, and every non-ASCII character escaped.
pub fn to_python_json(value: &Json, pretty: bool) -> String {
    let mut out = String::new();
    write_py(&mut out, value, pretty.then_some(0));
    out
}

fn write_py(out: &mut String, value: &Json, level: Option<usize>) {
    let newline = |out: &mut String, level: usize| {
        out.push('\n');
        out.push_str(&"    ".repeat(level));
    };
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => write_py_string(out, s),
        Json::Array(items) if items.is_empty() => out.push_str("[]"),
        Json::Object(map) if map.is_empty() => out.push_str("{}"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(if level.is_some() { "," } else { ", " });
                }
                if let Some(l) = level {
                    newline(out, l + 1);
                }
                write_py(out, item, level.map(|l| l + 1));
            }
            if let Some(l) = level {
                newline(out, l);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(if level.is_some() { "," } else { ", " });
                }
                if let Some(l) = level {
                    newline(out, l + 1);
                }
                write_py_string(out, k);
                out.push_str(": ");
                write_py(out, v, level.map(|l| l + 1));
            }
            if let Some(l) = level {
                newline(out, l);
            }
            out.push('}');
        }
    }
}

fn write_py_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An image directory, for the `x` explorers. Images are decoded (plain form) on demand.
pub struct ImageDir {
    dir: PathBuf,
    files: Option<Vec<Json>>,
    cache: std::collections::HashMap<(String, u64), String>,
    vma_ids: Vec<u64>,
}

impl ImageDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageDir {
            dir: dir.into(),
            files: None,
            cache: Default::default(),
            vma_ids: Vec::new(),
        }
    }

    fn load(&self, name: &str) -> Result<Vec<Json>> {
        let mut r = ImageReader::open(self.dir.join(name))?;
        let doc = decode(&mut r, DecodeOptions::default())?;
        Ok(doc["entries"].as_array().cloned().unwrap_or_default())
    }

    fn first(&self, name: &str) -> Result<Json> {
        let at = Location {
            path: self.dir.join(name),
            entry: Some(0),
            offset: 0,
        };
        self.load(name)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(at, ErrorKind::Json("image has no entries".into())))
    }

    fn tasks(&self) -> Result<Vec<Json>> {
        self.load("pstree.img")
    }

    /// Whether `pid` is a zombie (task_state 6 in its core image). A zombie has no fdinfo,
    /// fs, mm or pagemap image, so the explorers list it without files or memory, where
    /// CRIU's crit stops at the first image it lacks.
    fn is_zombie(&self, pid: u64) -> Result<bool> {
        let core = self.first(&format!("core-{pid}.img"))?;
        Ok(core["tc"]["task_state"].as_u64() == Some(u64::from(crate::flags::task_state::ZOMBIE)))
    }

    /// One file's description as crit prints it (`/path`, `pipe[ino]`, `EVENTFD.7`...).
    fn file_str(&mut self, ftype: &str, id: u64) -> Result<String> {
        if let Some(s) = self.cache.get(&(ftype.to_owned(), id)) {
            return Ok(s.clone());
        }
        let (field, image) = match ftype {
            "REG" => ("reg", "reg-files.img"),
            "PIPE" => ("pipe", "pipes.img"),
            "UNIXSK" => ("usk", "unixsk.img"),
            other => {
                let s = format!("{other}.{id}");
                self.cache.insert((ftype.to_owned(), id), s.clone());
                return Ok(s);
            }
        };
        if self.files.is_none() {
            self.files = Some(self.load("files.img").unwrap_or_default());
        }
        let files = self.files.as_deref().unwrap_or_default();
        let found = match files.iter().find(|f| f["id"].as_u64() == Some(id)) {
            Some(f) => f.get(field).cloned(),
            None if files.is_empty() => self
                .load(image)?
                .into_iter()
                .find(|f| f["id"].as_u64() == Some(id)),
            None => None,
        };
        let s = match (ftype, found) {
            ("REG", Some(f)) => f["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("unknown path")
                .to_owned(),
            ("REG", None) => "unknown path".to_owned(),
            ("PIPE", Some(f)) => format!("pipe[{}]", f["pipe_id"].as_u64().unwrap_or(0)),
            ("PIPE", None) => "pipe[?]".to_owned(),
            (_, Some(f)) => {
                let name = f["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default();
                format!(
                    "unix[{} ({}){name}]",
                    f["ino"].as_u64().unwrap_or(0),
                    f["peer"].as_u64().unwrap_or(0)
                )
            }
            (_, None) => "unix[?]".to_owned(),
        };
        self.cache.insert((ftype.to_owned(), id), s.clone());
        Ok(s)
    }

    /// `crit x DIR ps`: the process tree.
    pub fn ps(&mut self) -> Result<String> {
        let tasks = self.tasks()?;
        let mut rows = Vec::new();
        for t in &tasks {
            let pid = task_id(t, "pid");
            let core = self.first(&format!("core-{pid}.img"))?;
            let comm = core["tc"]["comm"].as_str().unwrap_or("").to_owned();
            rows.push((
                pid,
                t["ppid"].as_u64().unwrap_or(0),
                task_id(t, "pgid"),
                task_id(t, "sid"),
                comm,
            ));
        }
        let mut out = format!("{:>7}{:>7}{:>7}   {}\n", "PID", "PGID", "SID", "COMM");
        fn show(out: &mut String, rows: &[(u64, u64, u64, u64, String)], i: usize, depth: usize) {
            let (pid, _, pgid, sid, comm) = &rows[i];
            let _ = writeln!(
                out,
                "{pid:>7}{pgid:>7}{sid:>7}   {}{comm}",
                " ".repeat(4 * depth)
            );
            for (k, row) in rows.iter().enumerate() {
                if row.1 == *pid && k != i {
                    show(out, rows, k, depth + 1);
                }
            }
        }
        if let Some(root) = rows.iter().rposition(|r| r.1 == 0) {
            show(&mut out, &rows, root, 0);
        }
        Ok(out)
    }

    /// `crit x DIR fds`: every task's open files, cwd and root.
    pub fn fds(&mut self) -> Result<String> {
        let mut out = String::new();
        for t in self.tasks()? {
            let pid = task_id(&t, "pid");
            if self.is_zombie(pid)? {
                let _ = writeln!(out, "{pid}");
                continue;
            }
            let files_id = self.first(&format!("ids-{pid}.img"))?["files_id"]
                .as_u64()
                .unwrap_or(0);
            let _ = writeln!(out, "{pid}");
            for fd in self.load(&format!("fdinfo-{files_id}.img"))? {
                let s = self.file_str(
                    fd["type"].as_str().unwrap_or("UND"),
                    fd["id"].as_u64().unwrap_or(0),
                )?;
                let _ = writeln!(out, "\t{:>7}: {s}", fd["fd"].as_u64().unwrap_or(0));
            }
            let fs = self.first(&format!("fs-{pid}.img"))?;
            for (label, key) in [("cwd", "cwd_id"), ("root", "root_id")] {
                let s = self.file_str("REG", fs[key].as_u64().unwrap_or(0))?;
                let _ = writeln!(out, "\t{label:>7}: {s}");
            }
        }
        Ok(out)
    }

    fn vma_id(&mut self, shmid: u64) -> usize {
        match self.vma_ids.iter().position(|&s| s == shmid) {
            Some(i) => i + 1,
            None => {
                self.vma_ids.push(shmid);
                self.vma_ids.len()
            }
        }
    }

    /// `crit x DIR mems`: every task's memory map.
    pub fn mems(&mut self) -> Result<String> {
        let mut out = String::new();
        for t in self.tasks()? {
            let pid = task_id(&t, "pid");
            if self.is_zombie(pid)? {
                let _ = writeln!(out, "{pid}");
                continue;
            }
            let mm = self.first(&format!("mm-{pid}.img"))?;
            let _ = writeln!(out, "{pid}");
            let exe = self.file_str("REG", mm["exe_file_id"].as_u64().unwrap_or(0))?;
            let _ = writeln!(out, "\t{:<36}    {exe}", "exe");
            for vma in mm["vmas"].as_array().cloned().unwrap_or_default() {
                let st = vma["status"].as_u64().unwrap_or(0);
                let shmid = vma["shmid"].as_u64().unwrap_or(0);
                let mut name = if st & (1 << 10) != 0 {
                    format!(" ips[{:x}]", self.vma_id(shmid))
                } else if st & (1 << 8) != 0 {
                    format!(" shmem[{:x}]", self.vma_id(shmid))
                } else if st & (1 << 11) != 0 {
                    format!(" packet[{:x}]", self.vma_id(shmid))
                } else if st & ((1 << 6) | (1 << 7)) != 0 {
                    let mut s = format!(" {}", self.file_str("REG", shmid)?);
                    let pgoff = vma["pgoff"].as_u64().unwrap_or(0);
                    if pgoff != 0 {
                        let _ = write!(s, " + {pgoff:#x}");
                    }
                    if st & (1 << 7) != 0 {
                        s.push_str(" (s)");
                    }
                    s
                } else if st & (1 << 1) != 0 {
                    " [stack]".into()
                } else if st & (1 << 2) != 0 {
                    " [vsyscall]".into()
                } else if st & (1 << 3) != 0 {
                    " [vdso]".into()
                } else if vma["flags"].as_u64().unwrap_or(0) & 0x100 != 0 {
                    " [stack?]".into()
                } else {
                    String::new()
                };
                if st & 1 == 0 {
                    name.push_str(" *");
                }
                let prot = vma["prot"].as_u64().unwrap_or(0);
                let perms: String = [(1, 'r'), (2, 'w'), (4, 'x')]
                    .iter()
                    .map(|&(b, c)| if prot & b != 0 { c } else { '-' })
                    .collect();
                let range = format!(
                    "{:08x}-{:08x}",
                    vma["start"].as_u64().unwrap_or(0),
                    vma["end"].as_u64().unwrap_or(0)
                );
                let _ = writeln!(out, "\t{range:<36}{perms}{name}");
            }
        }
        Ok(out)
    }

    /// `crit x DIR rss`: the dumped pages of every task against its VMAs.
    pub fn rss(&mut self) -> Result<String> {
        let mut out = String::new();
        for t in self.tasks()? {
            let pid = task_id(&t, "pid");
            if self.is_zombie(pid)? {
                let _ = writeln!(out, "{pid}");
                continue;
            }
            let vmas = self.first(&format!("mm-{pid}.img"))?["vmas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let pms = self.load(&format!("pagemap-{pid}.img"))?;
            let _ = writeln!(out, "{pid}");
            let field = |v: &Json, k: &str| v[k].as_u64().unwrap_or(0);
            let mut vmi: usize = 0;
            let mut pvmi: Option<usize> = None;
            for pm in pms.iter().skip(1) {
                let vaddr = field(pm, "vaddr");
                let nr = pm
                    .get("nr_pages")
                    .map_or_else(|| field(pm, "compat_nr_pages"), |v| v.as_u64().unwrap_or(0));
                let pstr = format!("\t{vaddr:x} / {nr:<8}");
                while vmi < vmas.len() && field(&vmas[vmi], "end") <= vaddr {
                    vmi += 1;
                }
                let pme = vaddr + (nr << 12);
                let mut vstr = String::new();
                while vmi < vmas.len() && field(&vmas[vmi], "start") < pme {
                    let vma = &vmas[vmi];
                    if pvmi == Some(vmi) {
                        vstr.push_str(" ~");
                    } else {
                        let (start, end) = (field(vma, "start"), field(vma, "end"));
                        let _ = write!(vstr, " {start:08x} / {:<8}", (end - start) >> 12);
                        if field(vma, "status") & ((1 << 6) | (1 << 7)) != 0 {
                            let _ = write!(vstr, " {}", self.file_str("REG", field(vma, "shmid"))?);
                        }
                        pvmi = Some(vmi);
                    }
                    let _ = write!(vstr, "\n\t{:23}", "");
                    vmi += 1;
                }
                vmi = vmi.saturating_sub(1);
                let _ = writeln!(out, "{pstr:<24}{vstr}");
            }
        }
        Ok(out)
    }
}

/// A task id from a pstree entry (`pid`, or the first of `ns_pid` in nested pid namespaces).
fn task_id(t: &Json, key: &str) -> u64 {
    t.get(key)
        .and_then(Json::as_u64)
        .or_else(|| t.get(format!("ns_{key}")).and_then(|v| v[0].as_u64()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_layout() {
        let v: Json = serde_json::from_str(r#"{"a": [1, {"b": "é"}], "c": {}, "d": []}"#).unwrap();
        assert_eq!(
            to_python_json(&v, false),
            r#"{"a": [1, {"b": "\u00e9"}], "c": {}, "d": []}"#
        );
        assert_eq!(
            to_python_json(&v, true),
            "{\n    \"a\": [\n        1,\n        {\n            \"b\": \"\\u00e9\"\n        }\n    ],\n    \"c\": {},\n    \"d\": []\n}"
        );
    }

    /// Two segments, the first with its contents inline, the second in pagemaps (CRIU
    /// 4.2's way): both decode, and encode back to the same bytes.
    #[test]
    fn shm_contents_inline_or_in_pagemaps() {
        let doc: Json = serde_json::from_str(
            r#"{"magic": "IPCNS_SHM", "entries": [
                {"desc": {"key": 1, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 384, "id": 0},
                 "size": 5, "in_pagemaps": false, "extra": "aGVsbG8="},
                {"desc": {"key": 2, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 384, "id": 1},
                 "size": 8192, "in_pagemaps": true}]}"#,
        )
        .unwrap();
        let bytes = encode(&doc, Vec::new(), Path::new("ipcns-shm-1.img")).unwrap();
        let mut r = ImageReader::new(bytes.as_slice(), "ipcns-shm-1.img").unwrap();
        let back = decode(&mut r, DecodeOptions::default()).unwrap();
        let entries = back["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{back}");
        assert_eq!(entries[0]["extra"], "aGVsbG8=\n");
        assert!(entries[1].get("extra").is_none(), "{back}");
        let again = encode(&back, Vec::new(), Path::new("ipcns-shm-1.img")).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(10), "10B");
        assert_eq!(human_size(1536), "1.5KB");
        assert_eq!(human_size(2048), "2KB");
    }
}
