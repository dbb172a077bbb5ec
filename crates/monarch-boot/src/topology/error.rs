//! What is wrong with a topology: every problem with its line and field, all reported at once.
use super::schema::SizeDef;
use bytesize::ByteSize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field or table, e.g. `processor "lc3".switch`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A topology that cannot be used.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("topology {}: cannot read: {source}; check the path given to --topology", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{}", render(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    // The same problem at the same line for several processors (every core of a machine of
    // clusters shares the [clusters] image, say) is told once, with how many share it.
    let mut told: Vec<(&Problem, usize)> = Vec::new();
    for p in problems {
        let same = told.iter_mut().find(|(q, _)| {
            q.line == p.line
                && q.message == p.message
                && processor_field(&q.field) == processor_field(&p.field)
        });
        match same {
            Some((_, n)) if processor_field(&p.field).is_some() => *n += 1,
            _ => told.push((p, 0)),
        }
    }
    let mut s = String::new();
    for (i, (p, more)) in told.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let field = match more {
            0 => p.field.clone(),
            n => format!("{} (and {n} more processors)", p.field),
        };
        match p.line {
            Some(l) => s.push_str(&format!("{}:{l}: {field}: {}", path.display(), p.message)),
            None => s.push_str(&format!("{}: {field}: {}", path.display(), p.message)),
        }
    }
    s
}

/// `image_size` of `processor "c1-0".image_size`: the field, whichever processor it is.
fn processor_field(field: &str) -> Option<&str> {
    let rest = field.strip_prefix("processor \"")?;
    Some(rest.split_once("\".")?.1)
}

/// Where resolution collects problems: each with the line its span points at.
pub(super) struct Ctx<'a> {
    pub(super) src: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Ctx<'_> {
    pub(super) fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        self.src[..span.start.min(self.src.len())].matches('\n').count() + 1
    }
    pub(super) fn push(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s));
        self.problems.push(Problem { line, field: field.into(), message: message.into() });
    }
    pub(super) fn size(&mut self, v: &Spanned<SizeDef>, field: &str) -> Option<u64> {
        match v.get_ref() {
            SizeDef::Bytes(b) => Some(*b),
            SizeDef::Text(t) => match t.parse::<ByteSize>() {
                Ok(b) => Some(b.as_u64()),
                Err(_) => {
                    self.push(Some(v.span()), field, format!("\"{t}\" is not a size; write bytes (31457280) or a size with a unit (\"30MiB\", \"64 MiB\", \"1GiB\")"));
                    None
                }
            },
        }
    }
    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d > crate::values::DURATION_MAX => {
                self.push(
                    Some(v.span()),
                    field,
                    format!("\"{}\" is longer than a day, which no step of a boot waits; write e.g. \"5s\", \"2m\"", v.get_ref()),
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.push(
                    Some(v.span()),
                    field,
                    format!("\"{}\" is not a duration; write e.g. \"500ms\", \"5s\", \"2m\"", v.get_ref()),
                );
                default
            }
        }
    }

    /// A duration that may be zero (`"0s"`), parsed like every other duration
    /// ([`crate::values::parse_duration`]: at most a day).
    pub(super) fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match crate::values::parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(_) if humantime::parse_duration(v.get_ref()).is_ok() => {
                self.push(
                    Some(v.span()),
                    field,
                    format!("\"{}\" is longer than a day, which no step of a boot waits; write e.g. \"5s\", \"2m\"", v.get_ref()),
                );
                default
            }
            Err(_) => {
                self.push(
                    Some(v.span()),
                    field,
                    format!("\"{}\" is not a duration; write e.g. \"500ms\", \"5s\", \"2m\"", v.get_ref()),
                );
                default
            }
        }
    }

    /// One of a field's named values (`options`: name, value, what it means), or `default`
    /// when the field is not given; an unknown name is a problem listing the allowed ones.
    pub(super) fn choice<T: Copy>(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
        what: &str,
        options: &[(&str, T, &str)],
        default: T,
    ) -> T {
        let Some(v) = v else { return default };
        if let Some((_, value, _)) = options.iter().find(|(name, ..)| name == v.get_ref()) {
            return *value;
        }
        let allowed: Vec<String> =
            options.iter().map(|(name, _, meaning)| format!("\"{name}\" ({meaning})")).collect();
        let allowed = match allowed.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.push(Some(v.span()), field, format!("unknown {what} \"{}\"; use {allowed}", v.get_ref()));
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_problem_of_many_processors_is_told_once() {
        let p = |field: &str, message: &str| Problem {
            line: Some(4),
            field: field.into(),
            message: message.into(),
        };
        let problems = vec![
            p("processor \"c0-1\".image_size", "too small"),
            p("processor \"c0-2\".image_size", "too small"),
            p("processor \"c0-2\".window", "too small"),
            p("processor \"c0-3\".image_size", "too small"),
            p("clusters.zones", "too small"),
        ];
        let e = TopologyError::Invalid { path: "m.toml".into(), problems }.to_string();
        assert_eq!(
            e,
            "m.toml:4: processor \"c0-1\".image_size (and 2 more processors): too small\n\
             m.toml:4: processor \"c0-2\".window: too small\n\
             m.toml:4: clusters.zones: too small"
        );
    }
}
