//! Reading a configuration into [`Config`], reporting every unknown or mistyped key at once.
//!
//! serde stops at the first problem. To list them all, the merged settings (file and
//! environment) are read again and again: each time one problem is recorded and the value it
//! is about removed, until the rest reads (or nothing more can be removed). Paths are given
//! as written (`workflows.orders.allow[1]`), with the line of the file where it is known.

use std::collections::HashMap;

use figment::Figment;
use figment::error::{Actual, Kind};
use figment::providers::Serialized;
use figment::value::{Dict, Value};

use super::{Config, Problem};

/// At most this many problems are reported from one reading (then the list ends).
const MAX_PROBLEMS: usize = 50;

/// Reads `figment` (its TOML `text` supplies line numbers) into a [`Config`]: the problems
/// found, and the configuration that could be read without the values they are about (to
/// check further), if any could.
pub(super) fn extract(figment: &Figment, text: &str) -> (Option<Config>, Vec<Problem>) {
    let first = match figment.extract::<Config>() {
        Ok(config) => return (Some(config), Vec::new()),
        Err(e) => e,
    };
    // The merged settings as one tree; if even that cannot be had (a TOML syntax error), the
    // first error is all there is to say.
    let Ok(mut tree) = figment.extract::<Dict>() else {
        return (None, vec![syntax_problem(&first)]);
    };
    let lines = LineIndex::new(text);
    let mut renumbering = Renumbering::default();
    let mut problems = Vec::new();
    let mut rest = None;
    while problems.len() < MAX_PROBLEMS {
        let error = match Figment::from(Serialized::defaults(&tree)).extract::<Config>() {
            Ok(config) => {
                rest = Some(config);
                break;
            }
            Err(e) => e,
        };
        let path = error.path.clone();
        let written = renumbering.as_written(&tree, &path);
        let (key, message) = describe(&written, &error.kind);
        let line = lines.line_of(&written);
        problems.push(Problem { key, message, line });
        // The value the problem is about goes (for a missing key, the table that misses it),
        // so the next reading can get further; at the top there is nothing left to try.
        if path.is_empty() || !renumbering.remove(&mut tree, &path) {
            break;
        }
    }
    if problems.is_empty() {
        problems.push(problem_from(&first));
    }
    (rest, problems)
}

/// One reading error as a problem: by key when it names one, else as a syntax error (never
/// quoting the file's lines).
pub(super) fn problem_from(error: &figment::Error) -> Problem {
    if error.path.is_empty() {
        return syntax_problem(error);
    }
    let path: Vec<Segment> = error.path.iter().map(|p| Segment::Key(p.clone())).collect();
    let (key, message) = describe(&path, &error.kind);
    Problem {
        key,
        message,
        line: None,
    }
}

/// `problems` (from the checks after reading), each with its key's line in `text`.
pub(super) fn with_lines(mut problems: Vec<Problem>, text: &str) -> Vec<Problem> {
    let lines = LineIndex::new(text);
    for problem in &mut problems {
        if problem.line.is_none() {
            problem.line = lines.line_of(&segments(&problem.key));
        }
    }
    problems
}

/// `issuers[0].audiences` as path segments.
fn segments(key: &str) -> Vec<Segment> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            path.push(Segment::Key(name.to_owned()));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => path.push(Segment::Index(i)),
                Err(_) => return path,
            }
        }
    }
    path
}

/// An error that is not about one key (a TOML syntax error carries its own line).
pub(super) fn syntax_problem(error: &figment::Error) -> Problem {
    Problem {
        key: "(file)".into(),
        message: without_source_lines(&error.kind.to_string()),
        line: None,
    }
}

/// The TOML parser's message without the source lines it quotes (`3 | url = "…`, and the
/// `|` lines around them): the line may hold a secret, and the message goes to the log and
/// to the trail's `config_refused` record. The line and column it names stay.
fn without_source_lines(message: &str) -> String {
    let quoted = |line: &str| {
        let line = line.trim_start();
        line.starts_with('|')
            || line
                .split_once('|')
                .is_some_and(|(number, _)| number.trim().parse::<u64>().is_ok())
    };
    let kept: Vec<&str> = message
        .lines()
        .filter(|line| !quoted(line) && !line.trim().is_empty())
        .collect();
    kept.join(": ")
}

/// The dotted key and the message of one problem, in the configuration's own terms.
fn describe(path: &[Segment], kind: &Kind) -> (String, String) {
    let at = |segments: &[Segment]| dotted(segments);
    match kind {
        Kind::UnknownField(_, expected) => (
            at(path),
            format!("unknown key; expected one of: {}", expected.join(", ")),
        ),
        Kind::MissingField(field) => {
            let mut key = at(path);
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(field);
            (key, "is required".into())
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => (
            at(path),
            format!(
                "expected {}, found {}",
                expectation(expected),
                found(actual)
            ),
        ),
        Kind::UnknownVariant(given, expected) => (
            at(path),
            format!(
                "{given:?} is not one of: {}",
                expected
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Kind::DuplicateField(_) => (at(path), "is given more than once".into()),
        Kind::Message(message) => (at(path), message.clone()),
        other => (at(path), other.to_string()),
    }
}

/// serde's name for a type, as a configuration's reader knows it.
fn expectation(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" | "map" => "a table".into(),
        _ if expected.starts_with("struct ") => "a table".into(),
        _ => expected
            .trim_start_matches("a ")
            .to_owned()
            .replace("String", "string"),
    }
}

/// What was written instead; strings are not repeated (a misplaced secret stays unseen).
fn found(actual: &Actual) -> String {
    match actual {
        Actual::Bool(v) => v.to_string(),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Str(_) | Actual::Char(_) => "a string".into(),
        Actual::Seq => "an array".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// One step of a key's path: a table's key or an array's index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `workflows.orders.allow[1].claims[0]`
fn dotted(path: &[Segment]) -> String {
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Key(name) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Index(i) => key.push_str(&format!("[{i}]")),
        }
    }
    key
}

/// Array elements removed so far, so that later problems keep the indices as written.
#[derive(Default)]
struct Renumbering {
    /// By the written path of an array: the written indices removed from it, sorted.
    removed: HashMap<String, Vec<usize>>,
}

impl Renumbering {
    /// `path` (as the current tree has it) as written: array indices count removed elements.
    fn as_written(&self, tree: &Dict, path: &[String]) -> Vec<Segment> {
        let mut written = Vec::new();
        let mut node: Option<&Value> = None;
        for (depth, step) in path.iter().enumerate() {
            let current = if depth == 0 {
                tree.get(step)
            } else {
                match node {
                    Some(Value::Dict(_, dict)) => dict.get(step),
                    Some(Value::Array(_, items)) => {
                        let index = step.parse::<usize>().unwrap_or(usize::MAX);
                        let removed = self
                            .removed
                            .get(&dotted(&written))
                            .map_or(&[][..], Vec::as_slice);
                        written.push(Segment::Index(original_index(index, removed)));
                        node = items.get(index);
                        continue;
                    }
                    _ => None,
                }
            };
            written.push(Segment::Key(step.clone()));
            node = current;
        }
        written
    }

    /// Removes the value at `path` (current numbering); false if there is none.
    fn remove(&mut self, tree: &mut Dict, path: &[String]) -> bool {
        let written = self.as_written(tree, path);
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let mut node: Option<&mut Value> = None;
        let mut dict: Option<&mut Dict> = Some(tree);
        for step in parents {
            let next = match (dict.take(), node.take()) {
                (Some(d), _) => d.get_mut(step),
                (None, Some(Value::Dict(_, d))) => d.get_mut(step),
                (None, Some(Value::Array(_, items))) => {
                    step.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                }
                _ => None,
            };
            let Some(next) = next else { return false };
            node = Some(next);
        }
        match (dict, node) {
            (Some(d), _) => d.remove(last).is_some(),
            (None, Some(Value::Dict(_, d))) => d.remove(last).is_some(),
            (None, Some(Value::Array(_, items))) => {
                let Some(index) = last.parse::<usize>().ok().filter(|i| *i < items.len()) else {
                    return false;
                };
                items.remove(index);
                if let Some((Segment::Index(original), array)) = written.split_last() {
                    let removed = self.removed.entry(dotted(array)).or_default();
                    removed.push(*original);
                    removed.sort_unstable();
                }
                true
            }
            _ => false,
        }
    }
}

/// The written index of the element now at `current`, given the written indices removed.
fn original_index(current: usize, removed: &[usize]) -> usize {
    let mut original = current;
    for r in removed {
        if *r <= original {
            original = original.saturating_add(1);
        }
    }
    original
}

/// Finds the line of a key in the TOML text.
struct LineIndex {
    document: Option<toml_edit::ImDocument<String>>,
    line_starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            document: toml_edit::ImDocument::parse(text.to_owned()).ok(),
            line_starts,
        }
    }

    /// The 1-based line of the deepest part of `path` the file has.
    fn line_of(&self, path: &[Segment]) -> Option<usize> {
        let mut node = Node::Item(self.document.as_ref()?.as_item());
        let mut span = None;
        for segment in path {
            let Some((next, at)) = node.child(segment) else {
                break;
            };
            span = at.or(span);
            node = next;
        }
        let offset = span?.start;
        Some(self.line_starts.partition_point(|start| *start <= offset))
    }
}

/// A place in a parsed TOML document.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    /// The child at `segment`, with where it is written.
    fn child(self, segment: &Segment) -> Option<(Node<'a>, Option<std::ops::Range<usize>>)> {
        match segment {
            Segment::Key(key) => {
                let table: &dyn toml_edit::TableLike = match self {
                    Node::Item(item) => item.as_table_like()?,
                    Node::Table(table) => table,
                    Node::Value(value) => value.as_inline_table()?,
                };
                let (k, item) = table.get_key_value(key)?;
                Some((Node::Item(item), k.span()))
            }
            Segment::Index(i) => match self {
                Node::Item(toml_edit::Item::ArrayOfTables(tables)) => {
                    let table = tables.get(*i)?;
                    Some((Node::Table(table), table.span()))
                }
                Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(items)))
                | Node::Value(toml_edit::Value::Array(items)) => {
                    let value = items.get(*i)?;
                    Some((Node::Value(value), value.span()))
                }
                _ => None,
            },
        }
    }
}
