//! The pure core of enrich: one declared pipeline, compiled once, applied to
//! one decoded record at a time — filter (CEL), joins (table lookups keyed by
//! CEL expressions), render (minijinja), Block Kit checks. No Kafka here, so
//! every rule is unit-tested directly and benchmarked without a broker.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use cel::{Env as CelEnv, Program};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value as JinjaValue};
use serde_json::Value as Json;

use self::cel_paths::Reads;
use self::fast_filter::FastFilter;
use self::oneline::{Escape, OneLine};
use super::markup;
use crate::config::{resolve_path, BlocksSource, ConfigError, JoinKind, PipelineSettings};
use crate::messages::{RecurrenceMode, ResolvedUnposted, SlackMessage, UpdateMode};
use crate::slack::blockkit::{BlockKitError, Plans};
use join_key::{JoinKey, KeyExpr, ALERT_ID};
use suppress::Suppress;

mod apply;
mod holes;
mod interned;
mod join_key;

pub use apply::Prefilter;
mod suppress;

/// Escape mode for Block Kit templates: an interpolated value is first
/// escaped as Slack text (`&amp;`, `&lt;`, `&gt;`), then as JSON string
/// content, so `"text": "*Org* {{ key }}"` stays valid JSON and shows the
/// value literally whatever it holds. The order matters: the JSON layer is
/// the outer one (Slack decodes it first, then reads the Slack entities), and
/// Slack escaping never produces a character JSON needs to escape.
/// `|markup` (and the helpers in [`super::markup`]) skip the Slack layer
/// only; `|safe` (and `tojson`) skip both and insert raw JSON.
const SLACK_JSON_ESCAPE: AutoEscape = AutoEscape::Custom("slack-json");
/// Escape mode for the fallback `text`: Slack escaping only.
const SLACK_TEXT_ESCAPE: AutoEscape = AutoEscape::Custom("slack-text");
const BLOCKS_TEMPLATE: &str = "blocks";
const TEXT_TEMPLATE: &str = "text";
const STATUS_TEMPLATE: &str = "status";
const GROUP_KEY_TEMPLATE: &str = "group_key";
/// The templates [`OneLine`] may render, in [`Pipeline::one_lines`]' order.
const ONE_LINE_TEMPLATES: [&str; 4] = [ALERT_ID, "channel", STATUS_TEMPLATE, TEXT_TEMPLATE];

/// The message templates' environment: strict undefined values, the
/// escape mode by template name ([`auto_escape`]), [`slack_formatter`],
/// the Slack filters and helpers.
fn template_environment() -> Environment<'static> {
    let mut templates = Environment::new();
    templates.set_undefined_behavior(UndefinedBehavior::Strict);
    templates.set_auto_escape_callback(auto_escape);
    templates.set_formatter(slack_formatter);
    templates.add_filter("truncate", truncate_chars);
    markup::register(&mut templates);
    templates
}

/// A template's escape mode, by its name. `alert_id` and `channel` are
/// ids, not text Slack reads as mrkdwn: escaping would only change them.
fn auto_escape(name: &str) -> AutoEscape {
    match name {
        BLOCKS_TEMPLATE => SLACK_JSON_ESCAPE,
        TEXT_TEMPLATE => SLACK_TEXT_ESCAPE,
        _ => AutoEscape::None,
    }
}

/// Where a record came from; part of the template context and of errors.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The decoded record key (a JSON string for `key_format = "string"`).
    pub key: Option<&'a Json>,
    pub timestamp_ms: i64,
}

/// Read access to the GlobalKTables, by [`key_text`].
pub trait TableLookup {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Json>>;
}

/// The text a table is keyed by, for a decoded key: a string is itself (so
/// string keys are what they always were); anything else is compact JSON
/// with object members sorted by name, at every depth. A join key
/// expression's value goes through the same function, so a CEL map
/// `{'org': event.org_id}` finds the record keyed `{"org": "..."}` however
/// either side ordered its fields.
pub fn key_text(key: &Json) -> Cow<'_, str> {
    match key {
        Json::String(text) => Cow::Borrowed(text),
        other => {
            let mut out = String::new();
            write_canonical(other, &mut out);
            Cow::Owned(out)
        }
    }
}

/// [`key_text`] of an owned key, without copying a string.
pub fn into_key_text(key: Json) -> String {
    match key {
        Json::String(text) => text,
        other => key_text(&other).into_owned(),
    }
}

fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Object(members) => {
            let mut sorted: Vec<(&String, &Json)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::from(name.as_str()).to_string());
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Why a record was sent to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("field {field:?} is not a JSON document: {reason}")]
    JsonField { field: String, reason: String },
    #[error("filter failed: {0}")]
    Filter(String),
    #[error("join {join:?}: key expression failed: {reason}")]
    JoinKey { join: String, reason: String },
    #[error("template {template:?} failed: {reason}")]
    Render { template: String, reason: String },
    #[error("template {0:?} rendered an empty value")]
    Empty(String),
    #[error("blocks template did not render valid JSON: {0}")]
    BlocksJson(String),
    #[error("Block Kit limit: {0}")]
    BlockKit(#[from] BlockKitError),
    #[error("template \"status\" rendered {0:?}: a status is \"firing\" or \"resolved\"")]
    Status(String),
    #[error("suppress failed: {0}")]
    Suppress(String),
}

impl RecordError {
    /// The stage that failed, as written to the `alertsvc.dlq.stage` header.
    pub fn stage(&self) -> &'static str {
        match self {
            RecordError::JsonField { .. } => "decode",
            RecordError::Filter(_) => "filter",
            RecordError::JoinKey { .. } => "join",
            RecordError::Render { .. }
            | RecordError::Empty(_)
            | RecordError::BlocksJson(_)
            | RecordError::Status(_) => "render",
            RecordError::BlockKit(_) => "validate",
            RecordError::Suppress(_) => "suppress",
        }
    }
}

/// What a pipeline decided for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Emit(SlackMessage),
    Filtered,
    /// The pipeline's `suppress` expression held after the joins.
    Suppressed,
    JoinMiss {
        join: String,
        table: String,
    },
    Reject(RecordError),
}

struct CompiledJoin {
    name: String,
    table: String,
    key: JoinKey,
    kind: JoinKind,
    /// Whether a later CEL join key or `suppress` reads this join's value,
    /// so it must be handed to CEL (converting it costs; templates get it
    /// regardless).
    needed_by_cel: bool,
    /// Whether a CEL program that runs on every record reads it (a later
    /// key that [`CompiledJoin::deferred`] does not cover, or `suppress`):
    /// it is handed to CEL as soon as it is joined; otherwise only once a
    /// key falls back to CEL.
    needed_eagerly: bool,
    /// Whether this join's key is a [`join_key::KeyPath`] on `key`,
    /// `alert_id` or a join: what it reads is handed to CEL only when the
    /// path does not give a string and CEL computes the key.
    deferred: bool,
}

pub struct Pipeline {
    pub name: String,
    pub input: String,
    pub output: String,
    json_fields: Vec<String>,
    cel_env: Arc<CelEnv>,
    filter: Option<Program>,
    /// The filter compiled for [`fast_filter`], when it is in the subset.
    fast_filter: Option<FastFilter>,
    joins: Vec<CompiledJoin>,
    /// The joins' names in order, shared by every record's template context.
    join_names: Arc<[String]>,
    suppress: Option<Suppress>,
    /// What the filter, the CEL join keys and `suppress` read of each
    /// variable: all CEL is handed of a record.
    cel_reads: Reads,
    /// What the CEL join keys and `suppress` read: all CEL is handed once
    /// the fast filter let a record through.
    rest_reads: Reads,
    /// What the CEL join keys not [`CompiledJoin::deferred`] and `suppress`
    /// read: what CEL is handed first once the fast filter let a record
    /// through; the rest of `rest_reads` when a deferred key needs CEL.
    eager_reads: Reads,
    /// Whether a program that runs on every record reads `alert_id`.
    alert_id_eager: bool,
    templates: Environment<'static>,
    /// [`ONE_LINE_TEMPLATES`] compiled for the evaluator, where they are
    /// in its subset (`None`: rendered by minijinja).
    one_lines: [Option<OneLine>; 4],
    /// The blocks template compiled for the evaluator, where it is in its
    /// blocks subset (`None`: rendered by minijinja).
    blocks_fast: Option<OneLine>,
    /// The blocks template's source length: its render's expected size.
    blocks_size_hint: usize,
    /// The blocks template's Block Kit plans, by skeleton.
    blocks_plans: Plans,
    vars: JinjaValue,
    /// Whether `message.status` is set; without it every message fires.
    has_status: bool,
    updates: UpdateMode,
    recurrence: RecurrenceMode,
    resolved_unposted: ResolvedUnposted,
    /// The group window in milliseconds when `group_key` is set; 0: the
    /// pipeline does not group.
    group_window_ms: i64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .finish()
    }
}

impl Pipeline {
    /// Compiles filter, join keys and templates; errors name the config key.
    pub fn compile(
        name: &str,
        settings: &PipelineSettings,
        config_dir: &Path,
    ) -> Result<Pipeline, ConfigError> {
        let key = |k: &str| format!("enrich.pipelines.{name}.{k}");
        let cel_env = Arc::new(CelEnv::stdlib());
        let compile_cel = |path: String, source: &str| {
            cel_env
                .compile(source)
                .map_err(|e| ConfigError::invalid(path, format!("invalid CEL expression: {e}")))
        };
        let filter = settings
            .filter
            .as_deref()
            .map(|f| compile_cel(key("filter"), f))
            .transpose()?;
        let mut templates = template_environment();
        let message = &settings.message;
        let blocks_source = match message.blocks_source(name)? {
            BlocksSource::File(file) => {
                let path = resolve_path(config_dir, file);
                std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid(
                        key("message.blocks_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
            }
            BlocksSource::Inline(inline) => inline.to_owned(),
        };
        let mut sources = vec![
            ("alert_id", message.alert_id.clone()),
            ("channel", message.channel.clone()),
            (TEXT_TEMPLATE, message.text.clone()),
            (BLOCKS_TEMPLATE, blocks_source),
        ];
        if let Some(status) = &message.status {
            sources.push((STATUS_TEMPLATE, status.clone()));
        }
        let group_window_ms = settings
            .group_window_ms()
            .map_err(|(k, reason)| ConfigError::invalid(key(k), reason))?;
        if let Some(group_key) = &settings.group_key {
            sources.push((GROUP_KEY_TEMPLATE, group_key.clone()));
        }
        let mut one_lines: [Option<OneLine>; 4] = Default::default();
        let (mut blocks_fast, mut blocks_size_hint) = (None, 0);
        for (template, source) in sources {
            if template == BLOCKS_TEMPLATE {
                blocks_fast = OneLine::compile_blocks(&templates, &source);
                blocks_size_hint = source.len();
            }
            if let Some(at) = ONE_LINE_TEMPLATES.iter().position(|t| *t == template) {
                let escape = match auto_escape(template) {
                    AutoEscape::None => Some(Escape::None),
                    SLACK_TEXT_ESCAPE => Some(Escape::SlackText),
                    _ => None,
                };
                one_lines[at] = escape.and_then(|e| OneLine::compile(&templates, &source, e));
            }
            let config_key = if template == BLOCKS_TEMPLATE && message.blocks_file.is_some() {
                key("message.blocks_file")
            } else if template == GROUP_KEY_TEMPLATE {
                key(GROUP_KEY_TEMPLATE)
            } else {
                key(&format!("message.{template}"))
            };
            templates
                .add_template(template, interned::intern(&source))
                .map_err(|e| {
                    ConfigError::invalid(config_key, format!("invalid template: {e:#}"))
                })?;
        }

        // Key templates join the message templates' environment: the same
        // filters, strictness and context.
        let mut joins = Vec::with_capacity(settings.joins.len());
        for (i, join) in settings.joins.iter().enumerate() {
            joins.push(CompiledJoin {
                name: join.name.clone(),
                table: join.table.clone(),
                key: join_key::compile(name, i, join, &cel_env, &mut templates)?,
                kind: join.kind,
                needed_by_cel: false,
                needed_eagerly: false,
                deferred: false,
            });
        }
        for i in 0..joins.len() {
            joins[i].deferred = joins[i].key.path.as_ref().is_some_and(|path| {
                path.root == "key"
                    || path.root == ALERT_ID
                    || joins[..i].iter().any(|j| j.name == path.root)
            });
        }
        let alert_id_reads = templates
            .get_template(ALERT_ID)
            .map(|t| t.undeclared_variables(false))
            .unwrap_or_default();
        let order: Vec<_> = joins
            .iter()
            .zip(&settings.joins)
            .map(|(j, s)| (j.name.as_str(), &j.key, s.key_template.is_some()))
            .collect();
        join_key::check_order(name, &order, &alert_id_reads)?;
        let suppress = settings
            .suppress
            .as_deref()
            .map(|source| Suppress::compile(name, source, &cel_env))
            .transpose()?;
        for i in 0..joins.len() {
            let name = joins[i].name.clone();
            let read_by = |later: &CompiledJoin| {
                matches!(later.key.expr, KeyExpr::Cel(_)) && later.key.reads(&name)
            };
            let by_suppress = suppress.as_ref().is_some_and(|s| s.reads(&name));
            joins[i].needed_by_cel = joins[i + 1..].iter().any(read_by) || by_suppress;
            joins[i].needed_eagerly =
                joins[i + 1..].iter().any(|j| !j.deferred && read_by(j)) || by_suppress;
        }
        let alert_id_eager = suppress.as_ref().is_some_and(|s| s.reads(ALERT_ID))
            || joins
                .iter()
                .any(|j| !j.deferred && j.key.cel_program().is_some() && j.key.reads(ALERT_ID));

        Ok(Pipeline {
            name: name.to_owned(),
            input: settings.input.clone(),
            output: settings.output.clone(),
            json_fields: settings.json_fields.clone(),
            cel_env,
            // suppress reads the same record as the filter: it must see
            // every field it names, not only the filter's.
            cel_reads: Reads::of(
                filter
                    .iter()
                    .chain(joins.iter().filter_map(|j| j.key.cel_program()))
                    .chain(suppress.iter().map(Suppress::program)),
            ),
            rest_reads: Reads::of(
                joins
                    .iter()
                    .filter_map(|j| j.key.cel_program())
                    .chain(suppress.iter().map(Suppress::program)),
            ),
            eager_reads: Reads::of(
                joins
                    .iter()
                    .filter(|j| !j.deferred)
                    .filter_map(|j| j.key.cel_program())
                    .chain(suppress.iter().map(Suppress::program)),
            ),
            alert_id_eager,
            fast_filter: filter
                .as_ref()
                .and_then(|f| FastFilter::compile(f.expression())),
            filter,
            join_names: joins.iter().map(|j| j.name.clone()).collect(),
            joins,
            suppress,
            templates,
            one_lines,
            blocks_fast,
            blocks_size_hint,
            blocks_plans: Plans::new(),
            vars: JinjaValue::from_serialize(&settings.vars),
            has_status: message.status.is_some(),
            updates: settings.updates,
            recurrence: settings.recurrence,
            resolved_unposted: settings.resolved_unposted,
            group_window_ms,
        })
    }

    /// The evaluator of a one-line template, when it has one.
    fn one_line(&self, name: &str) -> Option<&OneLine> {
        let at = ONE_LINE_TEMPLATES.iter().position(|t| *t == name)?;
        self.one_lines[at].as_ref()
    }

    /// Tables this pipeline joins against.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.joins.iter().map(|j| j.table.as_str())
    }

    /// Applies the pipeline to one decoded record.
    pub fn apply(&self, source: &Source<'_>, event: &Json, tables: &dyn TableLookup) -> Verdict {
        self.apply_at(source, event, tables, suppress::now_millis())
    }

    /// [`Pipeline::apply`] with `now` (epoch milliseconds) for `suppress`.
    pub fn apply_at(
        &self,
        source: &Source<'_>,
        event: &Json,
        tables: &dyn TableLookup,
        now_ms: i64,
    ) -> Verdict {
        match self.try_apply(source, event, tables, now_ms, false) {
            Ok(verdict) => verdict,
            Err(e) => Verdict::Reject(e),
        }
    }
}

/// `truncate(n)`: at most `n` characters, ending in `…` when cut, so long
/// free-text fields cannot push a block over Slack's limits. Where the value
/// will be Slack-escaped, characters count as escaped (`<` is `&lt;`, four),
/// because Slack's limits apply to the text it receives.
fn truncate_chars(state: &minijinja::State, text: String, max: usize) -> String {
    let escaped =
        state.auto_escape() == SLACK_JSON_ESCAPE || state.auto_escape() == SLACK_TEXT_ESCAPE;
    truncate_text(text, max, escaped)
}

/// [`truncate_chars`] once the escape mode is known (`escaped`: values
/// are Slack-escaped); the evaluator's `truncate` too.
fn truncate_text(text: String, max: usize, escaped: bool) -> String {
    let width = |c: char| if escaped { markup::escaped_width(c) } else { 1 };
    let total: usize = text.chars().map(width).sum();
    if total <= max {
        return text;
    }
    let budget = max.saturating_sub(1);
    let mut used = 0;
    let mut cut: String = text
        .chars()
        .take_while(|&c| {
            used += width(c);
            used <= budget
        })
        .collect();
    cut.push('…');
    cut
}

/// Writes interpolated values according to the template's escape mode (see
/// [`SLACK_JSON_ESCAPE`]): `|safe` values verbatim, `Markup` without Slack
/// escaping, anything else Slack-escaped. In a recorded render (the
/// blocks', see [`holes`]) a value escaped as JSON string content is noted
/// as a hole; any other makes the render's holes unknown.
fn slack_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &JinjaValue,
) -> Result<(), minijinja::Error> {
    // The mode is compared once (a custom mode compares by its name).
    let json = match state.auto_escape() {
        SLACK_JSON_ESCAPE => Some(true),
        SLACK_TEXT_ESCAPE => Some(false),
        _ => None,
    };
    let Some(start) = holes::start() else {
        return write_value(out, state, value, json);
    };
    if json != Some(true) || value.is_safe() {
        holes::unknown();
        return write_value(out, state, value, json);
    }
    write_value(out, state, value, json)?;
    holes::hole(start);
    Ok(())
}

/// [`slack_formatter`]'s writing; `json`: whether the mode is the JSON
/// one, `None` for a mode that is neither of ours.
fn write_value(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &JinjaValue,
    json: Option<bool>,
) -> Result<(), minijinja::Error> {
    let Some(json) = json else {
        return minijinja::escape_formatter(out, state, value);
    };
    let io_error = |_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed");
    if value.is_safe() {
        return out.write_str(&value.to_string()).map_err(io_error);
    }
    // Most values are plain strings with nothing to escape: written as
    // they are (what both escapes below would write), in one pass over them.
    if let Some(text) = value.as_str() {
        if !needs_escape(text, json) {
            return out.write_str(text).map_err(io_error);
        }
    }
    let owned;
    let slack_text = match markup::as_markup(value) {
        Some(trusted) => std::borrow::Cow::Borrowed(trusted),
        None => match value.as_str() {
            Some(text) => markup::escape(text),
            None => {
                owned = value.to_string();
                markup::escape(&owned)
            }
        },
    };
    if !json {
        return out.write_str(&slack_text).map_err(io_error);
    }
    crate::slack::blockkit::write_json_string_content(out, &slack_text).map_err(io_error)
}

/// Whether [`slack_formatter`] would change `text`: Slack's `&`, `<`, `>`,
/// and where it is JSON string content also `"`, the backslash and control
/// characters.
fn needs_escape(text: &str, json: bool) -> bool {
    let mask = if json { SLACK | JSON } else { SLACK };
    text.bytes()
        .any(|byte| ESCAPED_BY[usize::from(byte)] & mask != 0)
}

const SLACK: u8 = 1;
const JSON: u8 = 2;

/// For each byte, which escapes change it ([`SLACK`], [`JSON`]).
static ESCAPED_BY: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = JSON;
        byte += 1;
    }
    table[b'"' as usize] = JSON;
    table[b'\\' as usize] = JSON;
    table[b'&' as usize] = SLACK;
    table[b'<' as usize] = SLACK;
    table[b'>' as usize] = SLACK;
    table
};

mod cel_paths;
mod context;
mod fast_filter;
mod jinja_json;
mod oneline;

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod projection_tests;
#[cfg(test)]
mod tests;
