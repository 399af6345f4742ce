//! Diagnostics: located errors and warnings, how they print, and the collector every loading
//! step writes into.
//!
//! Owns the message format (`FILE:LINE:COL: error: MESSAGE`, then `  at: path`, then
//! `  hint: ...`) and the "did you mean" suggestion. It must not know any file format: callers
//! hand it an [`Origin`] already built.

use std::collections::HashSet;
use std::fmt;

use crate::policy::Origin;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One located message about the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        // Line 0: a place without lines (a key of the store); the path says where inside.
        if o.line == 0 {
            write!(f, "{}: ", o.file)?;
        } else {
            write!(f, "{}:{}:{}: ", o.file, o.line, o.column)?;
        }
        write!(f, "{}: {}", self.severity.name(), self.message)?;
        if !o.path.is_empty() {
            write!(f, "\n  at: {}", o.path)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Everything that went wrong (errors) plus what is worth knowing (warnings), in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let errors = self.errors().count();
        let warnings = self.0.len() - errors;
        write!(
            f,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one input file. Loading never stops at the first problem: every
/// step reports into the sink and carries on with what it could read, so the user sees all
/// mistakes at once.
#[derive(Debug)]
pub(crate) struct Sink {
    pub file: String,
    pub diags: Vec<Diagnostic>,
    /// A rule written once with several peers expands into several rules; a problem with the
    /// shared part (its ports, say) must still be reported once.
    seen: HashSet<(u32, u32, String)>,
}

impl Sink {
    pub fn new(file: &str) -> Sink {
        Sink {
            file: file.to_string(),
            diags: Vec::new(),
            seen: HashSet::new(),
        }
    }

    pub fn push(
        &mut self,
        severity: Severity,
        origin: &Origin,
        message: String,
        hint: Option<String>,
    ) {
        if !self
            .seen
            .insert((origin.line, origin.column, message.clone()))
        {
            return;
        }
        self.diags.push(Diagnostic {
            severity,
            origin: origin.clone(),
            message,
            hint,
        });
    }

    pub fn error(&mut self, origin: &Origin, message: impl Into<String>) {
        self.push(Severity::Error, origin, message.into(), None);
    }

    pub fn error_hint(
        &mut self,
        origin: &Origin,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Error, origin, message.into(), Some(hint.into()));
    }

    pub fn warn(&mut self, origin: &Origin, message: impl Into<String>) {
        self.push(Severity::Warning, origin, message.into(), None);
    }

    pub fn warn_hint(
        &mut self,
        origin: &Origin,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Warning, origin, message.into(), Some(hint.into()));
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    /// Sorted by position (stable, so messages about one spot keep their order).
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by(|a, b| {
            (a.origin.line, a.origin.column).cmp(&(b.origin.line, b.origin.column))
        });
        self.diags
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
/// over ASCII-lowercased characters: keys differ mostly by case, typos and swapped letters.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, v) in d.iter_mut().enumerate().take(w) {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The closest known word, when it is close enough to be a likely typo. Underscores, dashes
/// and case are ignored first (`SecurityGroups` vs `security_groups`).
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let w = squash(word);
    if let Some(k) = known.iter().find(|k| squash(k) == w) {
        return Some(k);
    }
    let limit = (word.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestion_ignores_case_and_separators_and_catches_typos() {
        let known = ["security_groups", "instances", "prefix_lists"];
        assert_eq!(
            did_you_mean("SecurityGroups", &known),
            Some("security_groups")
        );
        assert_eq!(did_you_mean("instnces", &known), Some("instances"));
        assert_eq!(did_you_mean("zebra", &known), None);
    }

    #[test]
    fn diagnostic_renders_location_path_and_hint() {
        let d = Diagnostic {
            severity: Severity::Error,
            origin: Origin {
                file: "p.yaml".into(),
                line: 3,
                column: 7,
                path: "security_groups[0].id".into(),
            },
            message: "bad".into(),
            hint: Some("fix it".into()),
        };
        assert_eq!(
            d.to_string(),
            "p.yaml:3:7: error: bad\n  at: security_groups[0].id\n  hint: fix it"
        );
    }
}
