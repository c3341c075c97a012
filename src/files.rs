//! Reading Session files for the CLI: `-f` arguments (files, directories, `-` for stdin) →
//! bytes → [`crate::domain::parse`]. This is the IO edge; parsing itself is pure and lives in
//! the domain.
//!
//! Reads are bounded: at most one byte more than [`limits::MAX_INPUT_BYTES`] is read from a
//! file or stdin, and the parser refuses the input by its size.

use std::path::PathBuf;

use crate::domain::limits::{self, escape};
use crate::domain::parse::{self, Document, ParseError};

/// Why `-f` arguments could not be turned into sessions.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path.
        file: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML/JSON or does not fit the Session schema.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Expand `-f` arguments: files as given, directories to their spec files (non-recursive,
/// sorted, see [`parse::is_spec_file`]), `-` for stdin.
pub fn expand_paths(args: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            out.push(arg.clone());
            continue;
        }
        let meta = std::fs::metadata(arg).map_err(|source| LoadError::Read {
            file: arg.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(arg)
                .map_err(|source| LoadError::Read {
                    file: arg.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && parse::is_spec_file(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(arg.clone());
        }
    }
    Ok(out)
}

/// Read and parse every document of the given paths (see [`expand_paths`]).
pub fn load_paths(args: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    for path in expand_paths(args)? {
        let name = if path.as_os_str() == "-" {
            "-".to_string()
        } else {
            path.display().to_string()
        };
        let read = |source| LoadError::Read {
            file: escape(&name),
            source,
        };
        let bytes = if path.as_os_str() == "-" {
            read_bounded(std::io::stdin().lock()).map_err(read)?
        } else {
            read_bounded(std::fs::File::open(&path).map_err(read)?).map_err(read)?
        };
        docs.extend(parse::parse_bytes(&name, &bytes)?);
    }
    Ok(docs)
}

/// Read at most one byte more than [`limits::MAX_INPUT_BYTES`], so a huge file or stream is
/// never read whole; [`parse::parse_bytes`] then refuses it by its size.
fn read_bounded(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limits::MAX_INPUT_BYTES).unwrap_or(u64::MAX);
    std::io::Read::read_to_end(&mut std::io::Read::take(r, cap.saturating_add(1)), &mut buf)?;
    Ok(buf)
}
