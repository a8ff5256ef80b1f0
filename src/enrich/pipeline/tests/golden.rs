//! The shipped pipeline's output, byte for byte: every message field and
//! the Avro record enrich writes, for fixtures that reach each branch of
//! the templates, escaping, `truncate`, the helpers and the Block Kit
//! check. Rendering may be made faster; it may not change a byte.
//!
//! `golden_messages.txt` was written by the code before the rendering
//! work (commit 889c131). After a deliberate change of output, rewrite it
//! with `ALERTSVC_BLESS_GOLDEN=1 cargo test --lib golden` and review the
//! diff.

use futures::executor::block_on;

use super::*;
use crate::avro::build_codecs;

const GOLDEN: &str = include_str!("golden_messages.txt");

fn settings() -> Settings {
    Settings::load(&Sources::files_only(config_dir())).unwrap()
}

fn data_event(data: Json, time: Json) -> Json {
    json!({"eventId": "e1", "eventType": "connector-failure", "source": "t", "time": time,
           "data": data.to_string()})
}

/// (name, key, event, tables) of every case.
fn cases() -> Vec<(&'static str, Json, Json, Tables)> {
    let mut odd = tables();
    odd.0.insert(
        ("csdr_assignment".into(), "org-<&>".into()),
        Arc::new(
            json!({"org_id": "org-<&>", "org_name": "A & B <!here> \"Q\" \\ \u{1} ü 🚀",
                        "csdr_name": "", "csdr_email": "x\t<y>@example.com",
                        "account_name": null, "updated_at": 0}),
        ),
    );
    odd.0.insert(
        ("slack_users".into(), "x\t<y>@example.com".into()),
        Arc::new(json!({"email": "x", "slack_user_id": "u-not-an-id>",
                        "display_name": null, "team_id": null})),
    );
    let labels = |old: &str, new: Option<&str>| match new {
        Some(new) => json!({"connector_old_status": old, "connector_new_status": new}),
        None => json!({"connector_old_status": old}),
    };
    let long_reason = format!("{}<&>{}", "r".repeat(2790), "tail ".repeat(40));
    let exact_reason = "é".repeat(2800);
    vec![
        (
            "firing, direct message",
            json!("org-1"),
            event("Provisioning"),
            tables(),
        ),
        (
            "firing, fallback channel, null names",
            json!("org-2"),
            event("Provisioning"),
            tables(),
        ),
        (
            "resolved",
            json!("org-1"),
            data_event(
                json!({"env_id": "env-9", "connector_id": "lcc-42", "connector_name": "orders-sink",
                       "failure_reason": "", "labels": labels("Failed", Some("Running"))}),
                json!(1_764_166_920_000_i64),
            ),
            tables(),
        ),
        (
            "resolved, fallback, time not a date",
            json!("org-2"),
            data_event(
                json!({"env_id": "env-9", "connector_id": "lcc-42",
                       "labels": labels("Failed", Some("Running"))}),
                json!(-1),
            ),
            tables(),
        ),
        (
            "no new status, missing optional fields, odd scalars",
            json!("org-1"),
            data_event(
                json!({"env_id": 42, "connector_id": "lcc-<1>", "connector_name": null,
                       "connector_type": true, "labels": labels("Provisioning", None),
                       "extra": {"nested": [1, 2.5, "x"]}}),
                json!(7),
            ),
            tables(),
        ),
        (
            "markup in data, escapes, unicode, controls",
            json!("org-<&>"),
            data_event(
                json!({"env_id": "env \"9\" \\ \n\r\t\u{8}\u{c}\u{1f}", "connector_id": "c&d",
                       "connector_name": "<!channel> & <@U1> *b* `c` 🚀 ü",
                       "connector_type": 1.5, "failure_reason": "line1\nline2 </script> \u{2028}",
                       "labels": labels("Provisioning", Some("Failed"))}),
                json!(7),
            ),
            odd,
        ),
        (
            "truncated failure reason",
            json!("org-1"),
            data_event(
                json!({"env_id": "e", "connector_id": "c", "failure_reason": long_reason,
                       "labels": labels("Provisioning", Some("Failed"))}),
                json!(7),
            ),
            tables(),
        ),
        (
            "failure reason at the limit",
            json!("org-1"),
            data_event(
                json!({"env_id": "e", "connector_id": "c", "failure_reason": exact_reason,
                       "labels": labels("Provisioning", Some("Failed"))}),
                json!(7),
            ),
            tables(),
        ),
        (
            "a field over Slack's limit",
            json!("org-long"),
            event("Provisioning"),
            {
                let mut t = tables();
                t.0.extend(odd_long());
                t
            },
        ),
        ("filtered", json!("org-1"), event("Running"), tables()),
        (
            "join miss",
            json!("org-404"),
            event("Provisioning"),
            tables(),
        ),
        (
            "data not JSON",
            json!("org-1"),
            json!({"eventId": "e1", "eventType": "x", "source": "t", "time": 7, "data": "{"}),
            tables(),
        ),
    ]
}

fn odd_long() -> Vec<((String, String), Arc<Json>)> {
    vec![(
        ("csdr_assignment".into(), "org-long".into()),
        Arc::new(json!({"org_id": "org-long", "org_name": "N".repeat(2100),
                        "csdr_name": "Ada", "csdr_email": "ada@example.com",
                        "account_name": null, "updated_at": 0})),
    )]
}

/// Every case's verdict: for a message each field and the record's bytes.
fn render_all() -> String {
    let settings = settings();
    let codecs = build_codecs(&config_dir(), &settings).unwrap();
    let output = &codecs["slack_messages"];
    let p = reference_pipeline();
    let mut out = String::new();
    for (name, key, event, tables) in cases() {
        out.push_str(&format!("## {name}\n"));
        match p.apply_at(&source(&key), &event, &tables, 1_800_000_000_000) {
            Verdict::Emit(m) => {
                let bytes = block_on(output.encode_record(&m, 0)).unwrap();
                out.push_str(&format!(
                    "alert_id: {}\nchannel_id: {}\ntext: {}\nstatus: {:?}\nblocks: {}\navro: ",
                    m.alert_id, m.channel_id, m.text, m.status, m.blocks
                ));
                for byte in bytes {
                    out.push_str(&format!("{byte:02x}"));
                }
                out.push('\n');
            }
            other => out.push_str(&format!("{other:?}\n")),
        }
    }
    out
}

#[test]
fn the_shipped_pipeline_renders_its_fixtures_byte_for_byte_as_before() {
    let rendered = render_all();
    if std::env::var_os("ALERTSVC_BLESS_GOLDEN").is_some() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/enrich/pipeline/tests/golden_messages.txt");
        std::fs::write(path, &rendered).unwrap();
        return;
    }
    // Line by line first, so a failure names the case.
    for (i, (got, want)) in rendered.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(got, want, "line {}", i + 1);
    }
    assert_eq!(rendered, GOLDEN);
}
