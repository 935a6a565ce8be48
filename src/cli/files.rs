//! `forkpool run --input LOCAL[:REMOTE] --output REMOTE_OR_GLOB[:LOCAL_DIR]`: local files streamed into the
//! job's directory, its output files written to local directories (never outside them: the same path rules
//! as the server's, and the same walk that refuses symlinks), with a one-line summary per output.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use globset::GlobMatcher;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::files::{check_path, compile_glob, is_glob};
use crate::containment::jobdir::JobDir;
use crate::pb::{self, execute_request::Msg};

/// Bytes per `input` message (well under the default 4 MiB message limit).
const UPLOAD_CHUNK_BYTES: usize = 1 << 20;

/// An `--input LOCAL[:REMOTE]`.
#[derive(Debug, Clone)]
pub struct InputArg {
    /// The local file.
    pub local: PathBuf,
    /// Its path in the job's directory [default: the local file's name].
    pub remote: String,
}

/// An `--output REMOTE_OR_GLOB[:LOCAL_DIR]`.
#[derive(Debug, Clone)]
pub struct OutputArg {
    /// A path or pattern in the job's directory.
    pub pattern: String,
    /// Where matching files go [default: `.`].
    pub dir: PathBuf,
}

/// Parses `LOCAL[:REMOTE]` (split at the first `:`).
pub fn parse_input(arg: &str) -> Result<InputArg, String> {
    let (local, remote) = match arg.split_once(':') {
        Some((local, remote)) => (local, remote.to_string()),
        None => {
            let name = std::path::Path::new(arg).file_name().and_then(|n| n.to_str());
            (arg, name.ok_or_else(|| format!("{arg:?} names no file"))?.to_string())
        }
    };
    check_path("the remote path", &remote)?;
    Ok(InputArg { local: local.into(), remote })
}

/// Parses `REMOTE_OR_GLOB[:LOCAL_DIR]` (split at the first `:`).
pub fn parse_output(arg: &str) -> Result<OutputArg, String> {
    let (pattern, dir) = arg.split_once(':').unwrap_or((arg, "."));
    check_path("the output path", pattern)?;
    Ok(OutputArg { pattern: pattern.to_string(), dir: if dir.is_empty() { ".".into() } else { dir.into() } })
}

/// The `inputs` of the start message: each local file's size and permission bits.
pub(super) fn declare(inputs: &[InputArg]) -> anyhow::Result<Vec<pb::InputFile>> {
    inputs
        .iter()
        .map(|input| {
            let meta =
                std::fs::metadata(&input.local).with_context(|| format!("cannot read {}", input.local.display()))?;
            if !meta.is_file() {
                bail!("{} is not a regular file", input.local.display());
            }
            Ok(pb::InputFile {
                path: input.remote.clone(),
                size: meta.len(),
                mode: meta.permissions().mode() & 0o777,
                content: Vec::new(),
            })
        })
        .collect()
}

/// Streams the declared files as `input` chunks, in order: the size declared is what is sent (a file that
/// grew meanwhile is cut there; one that shrank is an error).
pub(super) async fn upload(
    inputs: &[InputArg],
    declared: &[pb::InputFile],
    requests: &mpsc::Sender<pb::ExecuteRequest>,
) -> anyhow::Result<()> {
    for (input, file) in inputs.iter().zip(declared) {
        if file.size == 0 {
            continue;
        }
        let mut local = tokio::fs::File::open(&input.local)
            .await
            .with_context(|| format!("cannot read {}", input.local.display()))?
            .take(file.size);
        let mut sent = 0u64;
        loop {
            let mut data = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
            while data.len() < UPLOAD_CHUNK_BYTES {
                let n = (&mut local).take((UPLOAD_CHUNK_BYTES - data.len()) as u64).read_to_end(&mut data).await?;
                if n == 0 {
                    break;
                }
            }
            sent += data.len() as u64;
            let last = sent == file.size || data.is_empty();
            if data.is_empty() && sent < file.size {
                bail!("{} shrank while it was being sent", input.local.display());
            }
            let chunk = pb::FileChunk { path: file.path.clone(), data, last, mode: 0 };
            if requests.send(pb::ExecuteRequest { msg: Some(Msg::Input(chunk)) }).await.is_err() {
                // The call ended; its status says why.
                return Ok(());
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}

/// Output files as they arrive, written under their local directories.
pub(super) struct Downloads {
    wanted: Vec<(String, Option<GlobMatcher>, PathBuf)>,
    open: HashMap<String, (std::fs::File, PathBuf)>,
    written: HashMap<String, PathBuf>,
}

impl Downloads {
    /// Downloads for these `--output`s.
    pub(super) fn new(outputs: &[OutputArg]) -> anyhow::Result<Downloads> {
        let wanted = outputs
            .iter()
            .map(|o| {
                let glob = if is_glob(&o.pattern) {
                    Some(compile_glob(&o.pattern).map_err(anyhow::Error::msg)?)
                } else {
                    None
                };
                Ok((o.pattern.clone(), glob, o.dir.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Downloads { wanted, open: HashMap::new(), written: HashMap::new() })
    }

    /// Writes one chunk (the first of a file creates it, replacing a local file of that name; `last` closes
    /// it).
    pub(super) fn chunk(&mut self, chunk: pb::FileChunk) -> anyhow::Result<()> {
        if !self.open.contains_key(&chunk.path) {
            check_path("an output path from the server", &chunk.path).map_err(anyhow::Error::msg)?;
            let dir = self
                .wanted
                .iter()
                .find(|(pattern, glob, _)| glob.as_ref().map_or(*pattern == chunk.path, |g| g.is_match(&chunk.path)))
                .map(|(_, _, dir)| dir.clone())
                .with_context(|| format!("the server sent {}, which matches no --output", chunk.path))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mode = if chunk.mode == 0 { 0o644 } else { chunk.mode & 0o777 };
            // The user's own directory may be reached through a symlink (theirs to make); below it, none is
            // followed.
            let root = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
            let file = JobDir::open(&root, None)
                .and_then(|d| d.create(&chunk.path, mode, true))
                .with_context(|| format!("cannot write {} under {}", chunk.path, dir.display()))?;
            self.open.insert(chunk.path.clone(), (file, dir.join(&chunk.path)));
        }
        let Some((file, local)) = self.open.get_mut(&chunk.path) else { return Ok(()) };
        file.write_all(&chunk.data).with_context(|| format!("cannot write {}", local.display()))?;
        if chunk.last
            && let Some((_, local)) = self.open.remove(&chunk.path)
        {
            self.written.insert(chunk.path, local);
        }
        Ok(())
    }

    /// One line per requested output on stderr: what the server did with it, and where it went.
    pub(super) fn summary(&self, outputs: &[pb::OutputFile]) {
        for output in outputs {
            let line = match pb::OutputState::try_from(output.state) {
                Ok(pb::OutputState::Sent) => match self.written.get(&output.path) {
                    Some(local) => format!("{}: {} bytes -> {}", output.path, output.size, local.display()),
                    None => format!("{}: {} bytes, not written (incomplete)", output.path, output.size),
                },
                Ok(pb::OutputState::Missing) => format!("{}: missing", output.path),
                Ok(pb::OutputState::TooLarge) => {
                    format!("{}: too large ({} bytes), not sent", output.path, output.size)
                }
                Ok(pb::OutputState::NotRegular) => format!("{}: not a regular file, not sent", output.path),
                _ => format!("{}: unknown state {}", output.path, output.state),
            };
            eprintln!("forkpool: output {line}");
        }
    }
}
