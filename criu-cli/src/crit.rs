//! `criu-rs crit`: decode, encode, info, show and x, with crit's flags and output.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use criu_core::images::crit::{self, DecodeOptions, ImageDir};
use criu_core::images::ImageReader;

#[derive(Args)]
pub struct CritArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Convert a CRIU image from binary to JSON.
    Decode {
        /// Image to decode (stdin by default).
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// Where to write the JSON (stdout by default).
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
        /// Indented, with numbers in their field's format (hex, flags, devices, addresses).
        #[arg(long)]
        pretty: bool,
    },
    /// Convert a CRIU image from JSON to binary.
    Encode {
        /// JSON to encode (stdin by default).
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// Where to write the image (stdout by default).
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Show the kind of an image and how many entries it holds.
    Info {
        /// The image file to look at.
        #[arg(value_name = "IN")]
        input: PathBuf,
    },
    /// Decode an image in pretty form to stdout.
    Show {
        /// The image file to decode.
        #[arg(value_name = "IN")]
        input: PathBuf,
        /// Do not show entry payloads (pipe data, queues...), only their size.
        #[arg(long)]
        nopl: bool,
    },
    /// Explore an image directory.
    X {
        /// The image directory (a whole dump).
        dir: PathBuf,
        /// What to list: the process tree, open files, memory areas, or resident pages.
        what: Explore,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Explore {
    Ps,
    Fds,
    Mems,
    Rss,
}

pub fn run(args: CritArgs) -> Result<(), String> {
    match args.verb {
        Verb::Decode {
            input,
            output,
            pretty,
        } => decode(
            input.as_deref(),
            output.as_deref(),
            DecodeOptions {
                pretty,
                no_payload: false,
            },
        ),
        Verb::Show { input, nopl } => decode(
            Some(&input),
            None,
            DecodeOptions {
                pretty: true,
                no_payload: nopl,
            },
        ),
        Verb::Encode { input, output } => encode(input.as_deref(), output.as_deref()),
        Verb::Info { input } => {
            let mut r = ImageReader::open(&input).map_err(|e| e.to_string())?;
            let n = crit::count(&mut r).map_err(|e| e.to_string())?;
            let doc = serde_json::json!({ "magic": r.kind().name, "count": n });
            write_stdout(&format!("{}\n", crit::to_python_json(&doc, true)))
        }
        Verb::X { dir, what } => {
            if !dir.is_dir() {
                return Err(format!("{}: not a directory", dir.display()));
            }
            let mut images = ImageDir::new(&dir);
            let text = match what {
                Explore::Ps => images.ps(),
                Explore::Fds => images.fds(),
                Explore::Mems => images.mems(),
                Explore::Rss => images.rss(),
            }
            .map_err(|e| e.to_string())?;
            write_stdout(&text)
        }
    }
}

fn write_stdout(text: &str) -> Result<(), String> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is the reader's choice, not an error of ours.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("stdout: {e}")),
    }
}

fn decode(input: Option<&Path>, output: Option<&Path>, opts: DecodeOptions) -> Result<(), String> {
    let doc = match input {
        Some(path) => {
            let mut r = ImageReader::open(path).map_err(|e| e.to_string())?;
            crit::decode(&mut r, opts)
        }
        None => {
            let mut r = ImageReader::new(BufReader::new(io::stdin().lock()), "<stdin>")
                .map_err(|e| e.to_string())?;
            crit::decode(&mut r, opts)
        }
    }
    .map_err(|e| e.to_string())?;
    let text = crit::to_python_json(&doc, opts.pretty);
    match output {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => write_stdout(&format!("{text}\n")),
    }
}

fn encode(input: Option<&Path>, output: Option<&Path>) -> Result<(), String> {
    let (name, mut reader): (String, Box<dyn Read>) = match input {
        Some(path) => {
            if path.is_dir() {
                return Err(format!(
                    "{}: is a directory, not a JSON file",
                    path.display()
                ));
            }
            let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (path.display().to_string(), Box::new(BufReader::new(f)))
        }
        None => {
            if io::stdin().is_terminal() {
                return Err(
                    "encode reads JSON from stdin; give -i FILE or pipe the JSON in".into(),
                );
            }
            (
                "<stdin>".into(),
                Box::new(BufReader::new(io::stdin().lock())),
            )
        }
    };
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| format!("{name}: {e}"))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{name}: not JSON ({e}); encode expects what decode prints"))?;
    let out_name = output.map_or_else(|| PathBuf::from("<stdout>"), Path::to_path_buf);
    let mut image = crit::encode(&doc, Vec::new(), &out_name).map_err(|e| e.to_string())?;
    match output {
        Some(path) => {
            let f = criu_core::images::create_image_file(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut w = BufWriter::new(f);
            w.write_all(&image)
                .and_then(|()| w.flush())
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            let mut out = io::stdout().lock();
            out.write_all(&image)
                .and_then(|()| out.flush())
                .map_err(|e| format!("<stdout>: {e}"))?;
            image.clear();
            Ok(())
        }
    }
}
