//! Input and output files of a request: the path rules every file path and pattern must follow, and the
//! [`FilesPlan`] a valid request resolves to. Only the rules live here; the files themselves are created and
//! read by [`crate::containment::jobdir`], which never leaves the job's directory whatever is on disk.

use globset::{GlobBuilder, GlobMatcher};

use super::limits::Limits;
use super::plan::PlanError;
use crate::pb;

/// Longest file path or pattern accepted, bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest path component accepted, bytes (the usual `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Most output paths and patterns one request may name.
pub const MAX_OUTPUT_REQUESTS: usize = 1000;

/// Default `input_bytes`: all input files of a job.
pub const DEFAULT_INPUT_BYTES: u64 = 256 << 20;
/// Default `output_file_bytes`: one output file.
pub const DEFAULT_OUTPUT_FILE_BYTES: u64 = 256 << 20;
/// Default `output_files_bytes`: all output files of a job.
pub const DEFAULT_OUTPUT_FILES_BYTES: u64 = 256 << 20;
/// Default `file_count`: input files plus sent output files.
pub const DEFAULT_FILE_COUNT: u64 = 1000;

/// A job's files: what to write before it starts, what to send back after it ended, and the caps.
#[derive(Debug, Clone)]
pub struct FilesPlan {
    /// Input files, in declaration order (the order their chunks must arrive in).
    pub inputs: Vec<InputPlan>,
    /// Requested outputs, in request order.
    pub outputs: Vec<OutputRequest>,
    /// The caps.
    pub limits: FileLimits,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPlan {
    /// Relative path (checked by [`check_path`]).
    pub path: String,
    /// Exact size.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// The content, when it came inline.
    pub content: Option<Vec<u8>>,
}

/// One requested output: a literal path, or a glob pattern.
#[derive(Debug, Clone)]
pub struct OutputRequest {
    /// As requested.
    pub pattern: String,
    /// The compiled pattern; `None` for a literal path.
    pub glob: Option<GlobMatcher>,
}

/// The file caps of a job, resolved (each has a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// All input files together, bytes.
    pub input_bytes: u64,
    /// One output file, bytes.
    pub output_file_bytes: u64,
    /// All output files together, bytes.
    pub output_files_bytes: u64,
    /// Input files plus sent output files.
    pub file_count: u64,
}

impl FileLimits {
    /// The caps of `limits`, defaults filled in.
    pub fn of(limits: &Limits) -> FileLimits {
        FileLimits {
            input_bytes: limits.input_bytes.unwrap_or(DEFAULT_INPUT_BYTES),
            output_file_bytes: limits.output_file_bytes.unwrap_or(DEFAULT_OUTPUT_FILE_BYTES),
            output_files_bytes: limits.output_files_bytes.unwrap_or(DEFAULT_OUTPUT_FILES_BYTES),
            file_count: limits.file_count.unwrap_or(DEFAULT_FILE_COUNT),
        }
    }
}

/// Checks a file path from a request (or a client's output path): relative, UTF-8 (it is a `str`), no NUL, no
/// empty, `.` or `..` component, within the length caps. `what` names it in the message.
pub fn check_path(what: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("{what} is {} bytes long; at most {MAX_PATH_BYTES}", path.len()));
    }
    if path.contains('\0') {
        return Err(format!("{what} {path:?} contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(format!("{what} {path:?} is absolute; paths are relative to the job's working directory"));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(format!("{what} {path:?} has an empty component")),
            "." | ".." => return Err(format!("{what} {path:?} has a `{component}` component")),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!("{what} {path:?} has a component over {MAX_COMPONENT_BYTES} bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `pattern` is a glob (`*`, `?`, `[...]`; `{a,b}` alternatives work inside one), else a literal path
/// (which may contain `{`).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Compiles a glob: `*`, `?` and `[...]` within a component, `**` across directories.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{pattern:?} is not a valid pattern: {e}"))
}

/// Resolves the request's inputs and outputs against the job's caps.
pub(super) fn plan_files(
    inputs: Vec<pb::InputFile>,
    outputs: Vec<String>,
    limits: &Limits,
) -> Result<Option<FilesPlan>, PlanError> {
    use PlanError::{InvalidArgument, ResourceExhausted};
    if inputs.is_empty() && outputs.is_empty() {
        return Ok(None);
    }
    let limits = FileLimits::of(limits);
    if inputs.len() as u64 > limits.file_count {
        return Err(ResourceExhausted(format!(
            "{} input files; this job takes at most {} files (file_count)",
            inputs.len(),
            limits.file_count
        )));
    }
    let mut total = 0u64;
    let mut planned: Vec<InputPlan> = Vec::with_capacity(inputs.len());
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in inputs.into_iter().enumerate() {
        check_path(&format!("inputs[{i}].path"), &input.path).map_err(InvalidArgument)?;
        if input.mode > 0o7777 {
            return Err(InvalidArgument(format!("inputs[{i}].mode {:#o} is not permission bits", input.mode)));
        }
        let content = if input.content.is_empty() {
            None
        } else if input.content.len() as u64 != input.size {
            return Err(InvalidArgument(format!(
                "inputs[{i}] ({}): size is {} but the inline content is {} bytes",
                input.path,
                input.size,
                input.content.len()
            )));
        } else {
            Some(input.content)
        };
        if !seen.insert(input.path.clone()) {
            return Err(InvalidArgument(format!("input file {} is declared twice", input.path)));
        }
        total = total.saturating_add(input.size);
        planned.push(InputPlan {
            path: input.path,
            size: input.size,
            mode: if input.mode == 0 { 0o644 } else { input.mode },
            content,
        });
    }
    // A path that is also another's parent directory cannot be both a file and a directory.
    for path in &seen {
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            if seen.contains(dir) {
                return Err(InvalidArgument(format!("input {dir} is a file and also the directory of {path}")));
            }
            parent = dir;
        }
    }
    if total > limits.input_bytes {
        return Err(ResourceExhausted(format!(
            "the input files total {total} bytes; this job takes at most {} (input_bytes)",
            limits.input_bytes
        )));
    }
    if outputs.len() > MAX_OUTPUT_REQUESTS {
        return Err(InvalidArgument(format!(
            "{} output paths or patterns requested; at most {MAX_OUTPUT_REQUESTS}",
            outputs.len()
        )));
    }
    let outputs = outputs
        .into_iter()
        .enumerate()
        .map(|(i, pattern)| {
            check_path(&format!("outputs[{i}]"), &pattern).map_err(InvalidArgument)?;
            let glob = if is_glob(&pattern) {
                Some(compile_glob(&pattern).map_err(|e| InvalidArgument(format!("outputs[{i}]: {e}")))?)
            } else {
                None
            };
            Ok(OutputRequest { pattern, glob })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(Some(FilesPlan { inputs: planned, outputs, limits }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        for good in ["a", "a/b.txt", "dir/sub/file", "x y", "ünïcode"] {
            assert_eq!(check_path("p", good), Ok(()), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/", "./a", "a/.", "a\0b"] {
            assert!(check_path("p", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_path("p", &"a".repeat(MAX_COMPONENT_BYTES + 1)).is_err());
        assert!(check_path("p", &"a/".repeat(MAX_PATH_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn globs_stay_within_components_unless_double_star() {
        let limits = Limits::default();
        let plan = plan_files(vec![], vec!["*.txt".into(), "out/**/*.png".into(), "exact.bin".into()], &limits)
            .expect("valid")
            .expect("files");
        let star = plan.outputs[0].glob.as_ref().expect("a glob");
        assert!(star.is_match("a.txt") && !star.is_match("d/a.txt"));
        let deep = plan.outputs[1].glob.as_ref().expect("a glob");
        assert!(deep.is_match("out/a.png") && deep.is_match("out/x/y/a.png") && !deep.is_match("a.png"));
        assert!(plan.outputs[2].glob.is_none());
    }

    #[test]
    fn bad_inputs_get_their_own_kind() {
        let limits = Limits { input_bytes: Some(10), ..Limits::default() };
        let file = |path: &str, size| pb::InputFile { path: path.into(), size, ..Default::default() };
        assert!(matches!(plan_files(vec![file("a", 11)], vec![], &limits), Err(PlanError::ResourceExhausted(_))));
        assert!(matches!(
            plan_files(vec![file("a", 1), file("a", 1)], vec![], &limits),
            Err(PlanError::InvalidArgument(_))
        ));
        assert!(matches!(
            plan_files(vec![file("a", 1), file("a/b", 1)], vec![], &limits),
            Err(PlanError::InvalidArgument(_))
        ));
        let inline = pb::InputFile { path: "a".into(), size: 3, content: b"ab".to_vec(), ..Default::default() };
        assert!(matches!(plan_files(vec![inline], vec![], &limits), Err(PlanError::InvalidArgument(_))));
        let plan = plan_files(vec![file("a", 0)], vec![], &limits).expect("valid").expect("files");
        assert_eq!(plan.inputs[0].mode, 0o644);
    }
}
