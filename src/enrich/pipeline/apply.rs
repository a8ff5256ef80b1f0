//! Applying a compiled [`Pipeline`] to one record: filter, joins,
//! `suppress`, render, Block Kit check. Split from the pipeline's compiler
//! so each stays readable.

use std::ops::Range;
use std::sync::Arc;

use cel::{Context as CelContext, Value as CelValue};
use minijinja::Value as JinjaValue;
use serde_json::Value as Json;

use super::cel_paths::{self, ProjectError, Reads};
use super::context::RenderContext;
use super::holes;
use super::jinja_json;
use super::join_key::{self, KeyExpr, ALERT_ID};
use super::suppress::{Suppress, NOW};
use super::{
    CompiledJoin, Pipeline, RecordError, Source, TableLookup, Verdict, BLOCKS_TEMPLATE,
    GROUP_KEY_TEMPLATE, STATUS_TEMPLATE, TEXT_TEMPLATE,
};
use crate::avro::Scalar;
use crate::config::JoinKind;
use crate::messages::{AlertStatus, SlackMessage};
use crate::slack::blockkit::{self, RenderedError};

/// What a pipeline's filter says of a record before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefilter {
    Filtered,
    /// Apply the rest with [`Pipeline::apply_passed`].
    Passed,
    /// Decode the record and [`Pipeline::apply`] it.
    Undecided,
}

impl Pipeline {
    /// The filter on the top-level fields of a record's validated Avro
    /// datum ([`crate::avro::Codec::scan`]), so a filtered record is never
    /// decoded. Undecided when the filter is not in the fast subset or
    /// would fail (the record then fails as it always did).
    pub fn prefilter(&self, source: &Source<'_>, fields: &[(&str, Scalar<'_>)]) -> Prefilter {
        if self.filter.is_none() {
            return Prefilter::Passed;
        }
        match self
            .fast_filter
            .as_ref()
            .and_then(|f| f.eval_scan(source, fields, &self.json_fields))
        {
            Some(true) => Prefilter::Passed,
            Some(false) => Prefilter::Filtered,
            None => Prefilter::Undecided,
        }
    }

    /// [`Pipeline::apply`] for a record [`Pipeline::prefilter`] passed:
    /// everything after the filter.
    pub fn apply_passed(
        &self,
        source: &Source<'_>,
        event: &Json,
        tables: &dyn TableLookup,
    ) -> Verdict {
        match self.try_apply(source, event, tables, super::suppress::now_millis(), true) {
            Ok(verdict) => verdict,
            Err(e) => Verdict::Reject(e),
        }
    }

    /// `filter_passed`: the filter already let the record through.
    pub(super) fn try_apply(
        &self,
        source: &Source<'_>,
        event: &Json,
        tables: &dyn TableLookup,
        now_ms: i64,
        filter_passed: bool,
    ) -> Result<Verdict, RecordError> {
        // CEL gets only what its programs (filter, CEL join keys, suppress)
        // read, see [`cel_paths`]; the templates get the whole event, parsed
        // once the record passed the filter. The fast filter reads the
        // event itself; only what it cannot decide goes to the interpreter.
        let mut cel = CelContext::with_env(self.cel_env.clone());
        // Whether CEL has everything `rest_reads` names (else the deferred
        // keys' variables are handed over when one falls back to CEL).
        let mut cel_complete = false;
        let fast = match (&self.fast_filter, filter_passed) {
            (_, true) => Some(true),
            (Some(fast), false) => fast.eval_json(source, event, &self.json_fields),
            (None, false) => None,
        };
        match fast {
            Some(false) => return Ok(Verdict::Filtered),
            Some(true) => {
                if !self.joins.is_empty() || self.suppress.is_some() {
                    // A malformed JSON field fails the record in
                    // `parse_json_fields` right after (the same field first,
                    // the same reason): checked here only when CEL reads the
                    // event, which parses what it reads.
                    let json_fields: &[String] = match self.eager_reads.get("event") {
                        Some(_) => &self.json_fields,
                        None => &[],
                    };
                    bind_record(&mut cel, &self.eager_reads, json_fields, source, event)?;
                }
            }
            None => {
                if self.filter.is_some() || !self.joins.is_empty() || self.suppress.is_some() {
                    bind_record(&mut cel, &self.cel_reads, &self.json_fields, source, event)?;
                }
                cel_complete = true;
                if let Some(filter) = &self.filter {
                    match filter.execute(&cel) {
                        Ok(CelValue::Bool(true)) => {}
                        Ok(CelValue::Bool(false)) => return Ok(Verdict::Filtered),
                        Ok(other) => {
                            return Err(RecordError::Filter(format!(
                                "returned {other:?}, not a boolean"
                            )))
                        }
                        Err(e) => return Err(RecordError::Filter(e.to_string())),
                    }
                }
            }
        }
        let raw_event = event;
        let event = Arc::new(self.parse_json_fields(event)?);

        let mut joined: Vec<(&str, Option<Arc<Json>>)> = Vec::with_capacity(self.joins.len());
        // The templates' context, built when a key or `suppress` first needs
        // it and kept current as joins complete: one build per record.
        let mut context: Option<Arc<RenderContext>> = None;
        // Rendered once, when a key or `suppress` first reads it.
        let mut alert_id: Option<String> = None;
        for join in &self.joins {
            let key_error = |reason: String| RecordError::JoinKey {
                join: join.name.clone(),
                reason,
            };
            if join.key.reads_alert_id() && alert_id.is_none() {
                let context =
                    context.get_or_insert_with(|| self.template_context(source, &event, &joined));
                // A failing alert_id template is a render error, wherever
                // it is first needed.
                let id = self.render_one(ALERT_ID, context)?;
                if self.alert_id_eager || cel_complete {
                    cel.add_variable_from_value(ALERT_ID, id.clone());
                }
                alert_id = Some(id);
            }
            let lookup_key = match &join.key.expr {
                KeyExpr::Cel(program) => match path_key(&join.key, source, &joined, &alert_id) {
                    Some(text) => Some(text),
                    None => {
                        if !cel_complete {
                            self.complete_cel(&mut cel, source, raw_event, &joined, &alert_id)?;
                            cel_complete = true;
                        }
                        join_key::cel_key_text(
                            program
                                .execute(&cel)
                                .map_err(|e| key_error(e.to_string()))?,
                        )
                        .map_err(key_error)?
                    }
                },
                KeyExpr::Template(template) => {
                    let context = context
                        .get_or_insert_with(|| self.template_context(source, &event, &joined));
                    // Key templates alone see `alert_id`: the message
                    // templates keep the context they always had.
                    context.set_alert_id(alert_id.as_deref());
                    let rendered = self.render_template(template, &context.value());
                    context.set_alert_id(None);
                    join_key::template_key_text(&rendered.map_err(|e| key_error(e.to_string()))?)
                }
            };
            let found = lookup_key.and_then(|k| tables.lookup(&join.table, &k));
            if found.is_none() && join.kind == JoinKind::Inner {
                return Ok(Verdict::JoinMiss {
                    join: join.name.clone(),
                    table: join.table.clone(),
                });
            }
            if join.needed_by_cel && (join.needed_eagerly || cel_complete) {
                self.bind_join(&mut cel, join, &found)?;
            }
            if let Some(context) = &mut context {
                context.push_join(jinja_row(&found));
            }
            joined.push((join.name.as_str(), found));
        }
        let mut context = context.unwrap_or_else(|| self.template_context(source, &event, &joined));

        let mut status = None;
        if let Some(suppress) = &self.suppress {
            let (suppressed, rendered) =
                self.suppress(suppress, &mut cel, &context, alert_id.is_some(), now_ms)?;
            if suppressed {
                return Ok(Verdict::Suppressed);
            }
            status = rendered;
        }

        // The status comes first: every other template may read it (a
        // green header once resolved), and none may change it.
        let status = match status {
            Some(status) => status,
            None => self.render_status(&context)?,
        };
        context.set_status(status.as_str());
        // A key's alert id is the message's: check_order refused every key
        // whose alert id would read what was not known yet.
        self.render(source, &context, status, alert_id)
            .map(Verdict::Emit)
    }

    /// Hands CEL what the deferred keys read and it was not given yet (see
    /// [`CompiledJoin::deferred`]): the record as `rest_reads` names it,
    /// the joins so far, `alert_id`.
    fn complete_cel(
        &self,
        cel: &mut CelContext,
        source: &Source<'_>,
        event: &Json,
        joined: &[(&str, Option<Arc<Json>>)],
        alert_id: &Option<String>,
    ) -> Result<(), RecordError> {
        bind_record(cel, &self.rest_reads, &self.json_fields, source, event)?;
        for (join, (_, found)) in self.joins.iter().zip(joined) {
            if join.needed_by_cel && !join.needed_eagerly {
                self.bind_join(cel, join, found)?;
            }
        }
        if let (Some(id), false) = (alert_id, self.alert_id_eager) {
            cel.add_variable_from_value(ALERT_ID, id.clone());
        }
        Ok(())
    }

    /// Hands CEL a join's row, projected to what CEL reads of it.
    fn bind_join(
        &self,
        cel: &mut CelContext,
        join: &CompiledJoin,
        found: &Option<Arc<Json>>,
    ) -> Result<(), RecordError> {
        let value = match (found, self.cel_reads.get(&join.name)) {
            (Some(v), Some(reads)) => {
                cel_paths::project(v, reads).map_err(|reason| RecordError::JoinKey {
                    join: join.name.clone(),
                    reason,
                })?
            }
            _ => CelValue::Null,
        };
        cel.add_variable_from_value(join.name.clone(), value);
        Ok(())
    }

    /// Binds what `suppress` reads that the joins did not (`now`,
    /// `alert_id` unless bound, `status`) and evaluates it; returns its
    /// decision and the status if it was rendered for it.
    fn suppress(
        &self,
        suppress: &Suppress,
        cel: &mut CelContext,
        context: &Arc<RenderContext>,
        alert_id_bound: bool,
        now_ms: i64,
    ) -> Result<(bool, Option<AlertStatus>), RecordError> {
        if suppress.reads(NOW) {
            cel.add_variable_from_value(NOW, now_ms);
        }
        if suppress.reads(ALERT_ID) && !alert_id_bound {
            let id = self.render_one(ALERT_ID, context)?;
            cel.add_variable_from_value(ALERT_ID, id);
        }
        let mut status = None;
        if suppress.reads(STATUS_TEMPLATE) {
            let rendered = self.render_status(context)?;
            cel.add_variable_from_value(STATUS_TEMPLATE, rendered.as_str());
            status = Some(rendered);
        }
        Ok((suppress.decide(cel)?, status))
    }

    fn parse_json_fields(&self, event: &Json) -> Result<Json, RecordError> {
        let mut event = event.clone();
        for field in &self.json_fields {
            if let Some(slot) = event.get_mut(field.as_str()) {
                if let Json::String(text) = slot {
                    let parsed =
                        serde_json::from_str(text).map_err(|e| RecordError::JsonField {
                            field: field.clone(),
                            reason: e.to_string(),
                        })?;
                    *slot = parsed;
                }
            }
        }
        Ok(event)
    }

    /// Renders the message; `context` is the templates' whole context,
    /// `status` included; `alert_id` if a join key rendered it already.
    /// Block Kit limits are checked on the rendered text (no tree is
    /// built); the blocks leave in canonical compact form.
    fn render(
        &self,
        source: &Source<'_>,
        context: &Arc<RenderContext>,
        status: AlertStatus,
        alert_id: Option<String>,
    ) -> Result<SlackMessage, RecordError> {
        let alert_id = match alert_id {
            Some(id) => id,
            None => self.render_one(ALERT_ID, context)?,
        };
        let channel_id = self.render_one("channel", context)?;
        let text = self.render_one(TEXT_TEMPLATE, context)?;
        let blocks = self.render_blocks_of(&text, context)?;
        let group_key = if self.group_window_ms > 0 {
            let rendered = self.render_template(GROUP_KEY_TEMPLATE, &context.value())?;
            Some(rendered.trim().to_owned()).filter(|k| !k.is_empty())
        } else {
            None
        };
        Ok(SlackMessage {
            alert_id,
            channel_id,
            text,
            blocks,
            created_at: source.timestamp_ms,
            pipeline: self.name.clone(),
            source_topic: source.topic.to_owned(),
            source_partition: source.partition,
            source_offset: source.offset,
            status,
            updates: self.updates,
            recurrence: self.recurrence,
            resolved_unposted: self.resolved_unposted,
            group_window_ms: if group_key.is_some() {
                self.group_window_ms
            } else {
                0
            },
            group_key,
        })
    }

    /// The templates' context before `status`: the record, the joins so
    /// far, the pipeline's constants.
    pub(super) fn template_context(
        &self,
        source: &Source<'_>,
        event: &Arc<Json>,
        joined: &[(&str, Option<Arc<Json>>)],
    ) -> Arc<RenderContext> {
        let key = match source.key {
            None => JinjaValue::from(()),
            Some(Json::String(text)) => JinjaValue::from(text.as_str()),
            Some(other) => JinjaValue::from_serialize(other),
        };
        let mut context = RenderContext::new(
            [
                key,
                jinja_json::lazy(event.clone()),
                JinjaValue::from(source.topic),
                JinjaValue::from(source.partition),
                JinjaValue::from(source.offset),
                JinjaValue::from(source.timestamp_ms),
                JinjaValue::from(self.name.as_str()),
                self.vars.clone(),
            ],
            self.join_names.clone(),
        );
        for (_, value) in joined {
            context.push_join(jinja_row(value));
        }
        context
    }

    /// `message.status`, or `firing` for a pipeline without one.
    fn render_status(&self, context: &Arc<RenderContext>) -> Result<AlertStatus, RecordError> {
        if !self.has_status {
            return Ok(AlertStatus::Firing);
        }
        let rendered = self.render_one(STATUS_TEMPLATE, context)?;
        AlertStatus::parse(&rendered).ok_or(RecordError::Status(rendered))
    }

    /// [`Pipeline::render_blocks`] of the record's context: through the
    /// evaluator when it answers (the same text and holes as minijinja's
    /// render, see [`super::oneline`]), minijinja otherwise.
    pub(super) fn render_blocks_of(
        &self,
        text: &str,
        context: &Arc<RenderContext>,
    ) -> Result<String, RecordError> {
        let fast = self
            .blocks_fast
            .as_ref()
            .and_then(|t| t.render_blocks(context, self.blocks_size_hint));
        match fast {
            Some(rendered) => self.check_blocks(text, &rendered.text, rendered.holes.as_deref()),
            None => self.render_blocks(text, &context.value()),
        }
    }

    /// The blocks rendered by minijinja, checked with `text` and in
    /// canonical form: through the skeleton's plan when the render's holes
    /// are known.
    pub(super) fn render_blocks(
        &self,
        text: &str,
        context: &JinjaValue,
    ) -> Result<String, RecordError> {
        let fail = render_failed(BLOCKS_TEMPLATE);
        let template = self.templates.get_template(BLOCKS_TEMPLATE).map_err(fail)?;
        holes::render(
            &template,
            context,
            template.source().len(),
            |blocks, holes| self.check_blocks(text, blocks, holes),
        )
        .map_err(fail)?
    }

    /// The Block Kit check of rendered blocks: through the skeleton's plan
    /// when the render's holes are known, in full otherwise.
    fn check_blocks(
        &self,
        text: &str,
        blocks: &str,
        holes: Option<&[Range<usize>]>,
    ) -> Result<String, RecordError> {
        let checked = match holes {
            Some(holes) => self.blocks_plans.check(text, blocks, holes),
            None => blockkit::check_rendered(text, blocks),
        };
        checked.map_err(|e| match e {
            RenderedError::Json(reason) => RecordError::BlocksJson(reason),
            RenderedError::BlockKit(e) => RecordError::BlockKit(e),
        })
    }

    pub(super) fn render_template(
        &self,
        name: &str,
        context: &JinjaValue,
    ) -> Result<String, RecordError> {
        let fail = render_failed(name);
        self.templates
            .get_template(name)
            .map_err(fail)?
            .render(context)
            .map_err(fail)
    }

    /// Renders a one-line template; surrounding whitespace is not content.
    /// Its evaluator answers when it can, minijinja otherwise.
    fn render_one(&self, name: &str, context: &Arc<RenderContext>) -> Result<String, RecordError> {
        let fast = self.one_line(name).and_then(|t| t.render(context));
        let rendered = match fast {
            Some(rendered) => rendered,
            None => self.render_template(name, &context.value())?,
        };
        let trimmed = rendered.trim();
        if trimmed.is_empty() {
            return Err(RecordError::Empty(name.to_owned()));
        }
        if trimmed.len() == rendered.len() {
            return Ok(rendered);
        }
        Ok(trimmed.to_owned())
    }
}

/// A CEL key that selects a string from `key`, `alert_id` or an earlier
/// join's row, read from the JSON CEL's variable is bound from (see
/// [`join_key::KeyPath`]); `None`: CEL computes it.
fn path_key(
    key: &join_key::JoinKey,
    source: &Source<'_>,
    joined: &[(&str, Option<Arc<Json>>)],
    alert_id: &Option<String>,
) -> Option<String> {
    let path = key.path.as_ref()?;
    let root = match path.root.as_str() {
        ALERT_ID => return alert_id.clone().filter(|_| path.is_root()),
        "key" => source.key?,
        // A later join of the same name hides an earlier one, as a CEL
        // variable bound again does.
        name => joined
            .iter()
            .rev()
            .find(|(join, _)| *join == name)?
            .1
            .as_deref()?,
    };
    path.string_in(root).map(str::to_owned)
}

/// A joined row as templates see it (read lazily): `none` for no row.
fn jinja_row(row: &Option<Arc<Json>>) -> JinjaValue {
    match row {
        Some(row) => jinja_json::lazy(row.clone()),
        None => JinjaValue::from(()),
    }
}

/// Binds `key`, `topic` and `event` for CEL, each projected to what
/// `reads` says the programs read of it.
pub(super) fn bind_record(
    cel: &mut CelContext,
    reads: &Reads,
    json_fields: &[String],
    source: &Source<'_>,
    event: &Json,
) -> Result<(), RecordError> {
    let key = match source.key {
        None => Some(CelValue::Null),
        Some(key) => match reads.get("key") {
            Some(reads) => Some(cel_paths::project(key, reads).map_err(RecordError::Filter)?),
            None => None,
        },
    };
    if let Some(key) = key {
        cel.add_variable_from_value("key", key);
    }
    // A variable no program names is never looked up.
    if reads.get("topic").is_some() {
        cel.add_variable_from_value("topic", source.topic.to_owned());
    }
    let event =
        cel_paths::project_event(event, reads.get("event"), json_fields).map_err(|e| match e {
            ProjectError::JsonField { field, reason } => RecordError::JsonField { field, reason },
            ProjectError::Value(reason) => RecordError::Filter(reason),
        })?;
    if let Some(event) = event {
        cel.add_variable_from_value("event", event);
    }
    Ok(())
}

/// A template's render error, naming the template.
fn render_failed(template: &str) -> impl Fn(minijinja::Error) -> RecordError + Copy + '_ {
    move |e| RecordError::Render {
        template: template.to_owned(),
        reason: format!("{e:#}"),
    }
}
