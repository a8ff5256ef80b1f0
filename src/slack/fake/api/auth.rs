//! `auth.test`.

use super::*;

/// `auth.test`: who the token is; notify's probe while Slack seems away.
pub(super) async fn auth_test(_: Gated) -> Response {
    slack_ok(
        json!({"ok": true, "url": "https://alertsvc-fake.slack.com/", "team": "alertsvc",
                    "user": "alertsvc", "team_id": "T0ALERTSVC", "user_id": "U0ALERTSVC",
                    "bot_id": "B0ALERTSVC"}),
    )
}
