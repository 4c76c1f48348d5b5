//! Silences: label matchers with a start, an end, an author and a comment,
//! in Alertmanager API v2's JSON shape. An active silence mutes the alerts
//! it matches for webhook receivers. This module checks a silence from the
//! API and answers whether one matches; it keeps nothing itself (the store
//! is [`super::store::NotifyStore`]).

use super::alert::{LabelMap, rfc3339};
use super::matcher::{MatchOp, Matcher};
use serde_json::{Value as Json, json};

/// One silence.
#[derive(Debug, Clone)]
pub struct Silence {
    /// Random id (UUID form).
    pub id: String,
    /// Matchers; all must match.
    pub matchers: Vec<Matcher>,
    /// Start (ms).
    pub starts_at: i64,
    /// End (ms).
    pub ends_at: i64,
    /// Who made it.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Last change (ms).
    pub updated_at: i64,
}

impl Silence {
    /// `pending`, `active` or `expired` at `now` (ms).
    pub fn state(&self, now: i64) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }

    /// Whether it mutes an alert with `labels` at `now`.
    pub fn mutes(&self, labels: &LabelMap, now: i64) -> bool {
        self.state(now) == "active" && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The API's JSON.
    pub fn to_json(&self, now: i64) -> Json {
        json!({
            "id": self.id,
            "matchers": self.matchers.iter().map(matcher_json).collect::<Vec<_>>(),
            "startsAt": rfc3339(Some(self.starts_at)),
            "endsAt": rfc3339(Some(self.ends_at)),
            "updatedAt": rfc3339(Some(self.updated_at)),
            "createdBy": self.created_by,
            "comment": self.comment,
            "status": {"state": self.state(now)},
        })
    }
}

/// `{"name","value","isRegex","isEqual"}`.
pub fn matcher_json(m: &Matcher) -> Json {
    json!({"name": m.name, "value": m.value, "isRegex": m.is_regex(), "isEqual": m.is_equal()})
}

/// A matcher from its API JSON.
pub fn matcher_from_json(v: &Json) -> Result<Matcher, String> {
    let name = v["name"].as_str().ok_or("`name` must be a string")?;
    let value = v["value"].as_str().ok_or("`value` must be a string")?;
    let flag = |k: &str, default: bool| match v.get(k) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("`{k}` must be true or false")),
    };
    let op = match (flag("isRegex", false)?, flag("isEqual", true)?) {
        (false, true) => MatchOp::Equal,
        (false, false) => MatchOp::NotEqual,
        (true, true) => MatchOp::Regex,
        (true, false) => MatchOp::NotRegex,
    };
    Matcher::new(name, op, value)
}

/// A time from the API: RFC 3339, or Unix seconds as a number.
fn time_field(v: &Json, field: &str) -> Result<Option<i64>, String> {
    match v.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})")),
        Some(Json::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e11)
            .map(|f| Some((f * 1000.0) as i64))
            .ok_or_else(|| format!("{n} is not a Unix time in seconds")),
        Some(_) => Err("must be an RFC 3339 string".into()),
    }
}

/// A silence from a `POST /api/v1/silences` body at `now` (ms), or the
/// field and reason it is refused for.
pub fn silence_from_json(body: &Json, id: String, now: i64) -> Result<Silence, (String, String)> {
    let bad = |field: &str, reason: String| (field.to_string(), reason);
    if !body.is_object() {
        return Err(bad("body", "must be a JSON object".into()));
    }
    let ms = body["matchers"]
        .as_array()
        .ok_or_else(|| bad("matchers", "must be a list of matchers".into()))?;
    if ms.is_empty() {
        return Err(bad("matchers", "must list at least one matcher".into()));
    }
    let mut matchers = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        matchers.push(matcher_from_json(m).map_err(|e| bad(&format!("matchers[{i}]"), e))?);
    }
    if matchers.iter().all(|m| m.matches(&LabelMap::new())) {
        return Err(bad(
            "matchers",
            "would match every alert (at least one must need a non-empty value)".into(),
        ));
    }
    let starts_at = time_field(body, "startsAt")
        .map_err(|e| bad("startsAt", e))?
        .unwrap_or(now)
        .max(now);
    let ends_at = time_field(body, "endsAt")
        .map_err(|e| bad("endsAt", e))?
        .ok_or_else(|| bad("endsAt", "is required".into()))?;
    if ends_at <= starts_at {
        return Err(bad(
            "endsAt",
            "must be after startsAt (and after now)".into(),
        ));
    }
    let text = |field: &str| match body.get(field) {
        Some(Json::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(bad(field, "is required (a non-empty string)".into())),
    };
    Ok(Silence {
        id,
        matchers,
        starts_at,
        ends_at,
        created_by: text("createdBy")?,
        comment: text("comment")?,
        updated_at: now,
    })
}

/// A random id in UUID version 4 form.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    for x in b.iter_mut() {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn body(v: Json) -> Result<Silence, (String, String)> {
        silence_from_json(&v, "id".into(), NOW)
    }

    #[test]
    fn a_silence_mutes_matching_alerts_while_active() {
        let s = body(json!({
            "matchers": [{"name": "instance", "value": "web-.*", "isRegex": true},
                         {"name": "severity", "value": "info", "isEqual": false}],
            "endsAt": "2023-11-14T23:13:20Z",
            "createdBy": "ops", "comment": "deploy"
        }))
        .unwrap();
        assert_eq!(s.starts_at, NOW);
        let l: LabelMap = [
            ("instance".into(), "web-1".into()),
            ("severity".into(), "page".into()),
        ]
        .into();
        assert!(s.mutes(&l, NOW));
        assert!(!s.mutes(&l, s.ends_at), "expired");
        let mut other = l.clone();
        other.insert("severity".into(), "info".into());
        assert!(!s.mutes(&other, NOW));
        let j = s.to_json(NOW);
        assert_eq!(j["status"]["state"], "active");
        assert_eq!(j["matchers"][1]["isEqual"], false);
        assert_eq!(j["matchers"][0]["isRegex"], true);
    }

    #[test]
    fn bad_silences_name_the_field() {
        let ok = json!({"matchers": [{"name": "a", "value": "b"}], "endsAt": "2030-01-01T00:00:00Z",
                        "createdBy": "me", "comment": "c"});
        assert!(body(ok.clone()).is_ok());
        for (patch, field) in [
            (json!({"matchers": []}), "matchers"),
            (json!({"matchers": "a=b"}), "matchers"),
            (
                json!({"matchers": [{"name": "a", "value": "(", "isRegex": true}]}),
                "matchers[0]",
            ),
            (
                json!({"matchers": [{"name": "a", "value": ""}]}),
                "matchers",
            ),
            (
                json!({"matchers": [{"name": "1x", "value": "b"}]}),
                "matchers[0]",
            ),
            (json!({"endsAt": "tomorrow"}), "endsAt"),
            (json!({"endsAt": "2001-01-01T00:00:00Z"}), "endsAt"),
            (json!({"endsAt": null}), "endsAt"),
            (json!({"createdBy": ""}), "createdBy"),
            (json!({"comment": 5}), "comment"),
        ] {
            let mut b = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                b[k] = v.clone();
            }
            let (f, reason) = body(b).unwrap_err();
            assert_eq!(f, field, "{patch}: {reason}");
        }
    }

    #[test]
    fn ids_look_like_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id());
    }
}
