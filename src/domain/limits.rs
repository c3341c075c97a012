//! Every input bound, in one place.
//!
//! Each constant below is enforced before anything is stored: the parse budget by
//! [`crate::domain::parse`], field sizes, counts and ranges by [`crate::domain::admission`] and
//! [`crate::domain::contract`], patch bounds by [`crate::ops`], duration flags by [`crate::cli`]. The
//! README's "Limits" table lists the same values; change both together.
//!
//! Also here: [`echo`] and [`escape`], the one way an error message quotes user input
//! (control characters escaped, long input cut), so no message carries a raw CR, LF, NUL or
//! ESC, or megabytes of the input.
//!
//! Pure: no IO.

use std::time::Duration;

/// Largest file, stdin or request body that is parsed at all, in bytes (1 MiB).
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest object (a Session or a WarmPool), serialized as JSON, in bytes (256 KiB). Checked
/// by admission, and after every step of a patch.
pub const MAX_OBJECT_BYTES: usize = 256 * 1024;
/// Deepest nesting of lists and maps in a YAML or JSON input.
pub const MAX_DEPTH: usize = 64;
/// Most nodes (scalars, lists, maps, documents) in one input, counting every alias
/// expansion as a full copy of its anchor.
pub const MAX_NODES: usize = 100_000;
/// Most bytes of scalar text in one YAML input after alias expansion.
pub const MAX_EXPANDED_BYTES: usize = 2 * 1024 * 1024;
/// Most alias references (`*name`) in one YAML input.
pub const MAX_ALIASES: usize = 1_000;
/// Most documents in one input.
pub const MAX_DOCUMENTS: usize = 1_000;

/// Longest `metadata.name` (a DNS-1123 label).
pub const MAX_NAME_BYTES: usize = 63;
/// Most `metadata.labels`.
pub const MAX_LABELS: usize = 64;
/// Longest label key: a DNS subdomain prefix (253), `/`, a name (63).
pub const MAX_LABEL_KEY_BYTES: usize = 253 + 1 + 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// Most `metadata.annotations`.
pub const MAX_ANNOTATIONS: usize = 64;
/// Longest annotation key.
pub const MAX_ANNOTATION_KEY_BYTES: usize = 253 + 1 + 63;
/// Most bytes of all annotation keys and values together.
pub const MAX_ANNOTATIONS_TOTAL_BYTES: usize = 64 * 1024;

/// Longest `spec.image` reference.
pub const MAX_IMAGE_BYTES: usize = 512;
/// Most `spec.env` variables.
pub const MAX_ENV: usize = 256;
/// Longest environment variable name.
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// Longest environment variable value.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most `spec.command` arguments.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Longest `spec.command` argument.
pub const MAX_COMMAND_ARG_BYTES: usize = 32 * 1024;
/// Longest `spec.user`.
pub const MAX_USER_BYTES: usize = 32;
/// Longest `spec.networkMode`.
pub const MAX_NETWORK_MODE_BYTES: usize = 64;
/// Smallest `spec.ttlSeconds`.
pub const MIN_TTL_SECONDS: u64 = 1;
/// Largest `spec.ttlSeconds`: ten years, so the expiry time can never overflow.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Smallest memory limit: the Docker engine refuses to start a container with less than
/// 6 MB.
pub const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;
/// Smallest CPU limit, in nano-CPUs (0.01 cpus).
pub const MIN_NANO_CPUS: i64 = 10_000_000;
/// Smallest pids limit.
pub const MIN_PIDS: i64 = 1;

/// Longest `spec.chat.model`.
pub const MAX_MODEL_BYTES: usize = 128;
/// Longest `spec.chat.systemInstruction`.
pub const MAX_SYSTEM_INSTRUCTION_BYTES: usize = 64 * 1024;
/// Most patterns in each allow or deny list of a tool filter (`spec.chat.tools`, `spec.mcp.tools`).
pub const MAX_TOOL_PATTERNS: usize = 256;
/// Longest tool pattern.
pub const MAX_TOOL_PATTERN_BYTES: usize = 128;

/// Largest `spec.replicas` of a WarmPool: the warm sandboxes one pool keeps started.
pub const MAX_POOL_REPLICAS: u32 = 1_000;

/// Most operations in one RFC 6902 JSON patch.
pub const MAX_PATCH_OPS: usize = 1_000;
/// Most objects one page of an API list (or of a watch's initial listing) holds
/// (`?limit=`; larger values are capped).
pub const MAX_LIST_LIMIT: usize = 5000;
/// Most image allowlist patterns in a policy, and bytes of a published policy.
pub const MAX_ALLOWED_IMAGES: usize = 256;
/// Largest Server-Sent Event we read (Gemini's streamed answers, the API's watch and chat
/// streams), from one blank line to the next.
pub const MAX_SSE_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Largest published policy read back from the store or the API.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Largest patch document, serialized, in bytes (the same as any input).
pub const MAX_PATCH_BYTES: usize = MAX_INPUT_BYTES;

/// Shortest duration a command-line flag or variable may give (`0s` is a config error).
pub const MIN_FLAG_DURATION: Duration = Duration::from_millis(1);
/// Longest duration a command-line flag or variable may give (7 days).
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration flag or variable: humantime syntax (`30s`, `1h`), within
/// [`MIN_FLAG_DURATION`]..=[`MAX_FLAG_DURATION`] (so `0s` is a config error).
pub fn flag_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{}: {e}", echo(s)))?;
    if !(MIN_FLAG_DURATION..=MAX_FLAG_DURATION).contains(&d) {
        return Err(format!(
            "{} is outside {}..={}",
            echo(s),
            humantime::format_duration(MIN_FLAG_DURATION),
            humantime::format_duration(MAX_FLAG_DURATION)
        ));
    }
    Ok(d)
}

/// How many characters of one input value an error message quotes.
pub const MAX_ECHO_CHARS: usize = 64;
/// Longest error message built from a parser's or decoder's own text.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// `s` with every control character (CR, LF, TAB, NUL, ESC, DEL, C1...) escaped the way
/// [`str::escape_debug`] does, everything else unchanged, cut to `max` characters (with
/// `…` appended when cut). Idempotent: escaping an escaped text changes nothing.
pub fn escape_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape_max`] with [`MAX_MESSAGE_CHARS`]: for whole messages and field paths.
pub fn escape(s: &str) -> String {
    escape_max(s, MAX_MESSAGE_CHARS)
}

/// One input value quoted for an error message: `"…"` with control characters and quotes
/// escaped, cut to [`MAX_ECHO_CHARS`] characters plus the full length when longer.
pub fn echo(s: &str) -> String {
    let count = s.chars().count();
    if count <= MAX_ECHO_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}

/// A sink for `serde_json::to_writer` that only counts, and fails once `limit` is passed,
/// so measuring a huge value stops early and allocates nothing.
struct Counter {
    n: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n = self.n.saturating_add(buf.len());
        if self.n > self.limit {
            Err(std::io::Error::other("over the limit"))
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `value` serialized as compact JSON, or `None` when it is larger than
/// `limit` bytes (or cannot be serialized). Stops as soon as `limit` is passed.
pub fn json_size<T: serde::Serialize + ?Sized>(value: &T, limit: usize) -> Option<usize> {
    let mut c = Counter { n: 0, limit };
    serde_json::to_writer(&mut c, value).ok().map(|()| c.n)
}

/// A byte count for messages: `256 KiB`, `1 MiB`, `512 bytes`.
pub fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_are_bounded() {
        use std::time::Duration;
        assert_eq!(flag_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(flag_duration("0s").unwrap_err().contains("outside"));
        assert!(flag_duration("8days").unwrap_err().contains("outside"));
        assert!(flag_duration("1000000000000h").is_err());
        assert!(
            !flag_duration("\u{1b}x")
                .unwrap_err()
                .chars()
                .any(char::is_control)
        );
    }

    #[test]
    fn escaping_removes_every_control_character() {
        let s = "a\r\nb\0c\u{1b}[31md\u{7f}\u{85}é";
        let e = escape(s);
        assert!(!e.chars().any(char::is_control), "{e}");
        assert_eq!(e, "a\\r\\nb\\0c\\u{1b}[31md\\u{7f}\\u{85}é");
        assert_eq!(escape(&e), e, "idempotent");
        assert_eq!(escape_max("abcdef", 3), "abc…");
    }

    #[test]
    fn echo_quotes_and_cuts() {
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(10_000);
        let e = echo(&long);
        assert!(e.len() < 100, "{e}");
        assert!(e.ends_with("(10000 bytes)"), "{e}");
        assert!(!echo("\u{1b}\0").chars().any(char::is_control));
    }

    #[test]
    fn json_size_counts_and_stops() {
        assert_eq!(json_size(&serde_json::json!({"a": 1}), 100), Some(7));
        assert_eq!(json_size(&"x".repeat(1000), 100), None);
        assert_eq!(human_bytes(MAX_OBJECT_BYTES), "256 KiB");
        assert_eq!(human_bytes(MAX_INPUT_BYTES), "1 MiB");
        assert_eq!(human_bytes(10), "10 bytes");
    }

    #[test]
    fn ttl_bound_fits_chrono() {
        let secs = i64::try_from(MAX_TTL_SECONDS).unwrap_or(i64::MAX);
        assert!(chrono::Duration::try_seconds(secs).is_some());
    }
}
