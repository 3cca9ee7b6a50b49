//! # faulty: hello with injected faults, for testing what sits in front
//!
//! Replies like `hello` (`{"request": ..., "server": "host:port"}`), except
//! as its environment says:
//!
//! | variable | effect |
//! |---|---|
//! | `MP_DELAY_MS` | sleep this many milliseconds before answering |
//! | `MP_DELAY_SHARD` | only delay when `MP_SHARD` is this shard |
//! | `MP_DELAY_FILE` | only delay while this file exists (a test turns the slowness on and off while the process runs) |
//! | `MP_FAIL_CODE` | answer with this gRPC status instead: a number (`14`) or a name (`UNAVAILABLE`) |
//! | `MP_FAIL_MESSAGE` | the status message (default `injected failure`) |
//! | `MP_FAIL_SHARD` | only fail when `MP_SHARD` is this shard |
//! | `MP_TAG` | add `"tag": VALUE` to the reply, to tell processes apart (e.g. the replicas of a shard, which share host and port on different IPs) |
//!
//! The delay comes first, then the failure, so a slow failure is
//! `MP_DELAY_MS=500 MP_FAIL_CODE=UNAVAILABLE`. A knob set to something
//! unusable stops the process at start with a message saying so.

use mp_sdk::{Code, Error, Handler, Reply, Request};
use serde_json::json;
use std::time::Duration;

/// The faults to inject, read once at start.
#[derive(Debug, Default)]
struct Faulty {
    delay: Option<Duration>,
    /// Delay only while this file exists.
    delay_file: Option<std::path::PathBuf>,
    fail: Option<(Code, String)>,
    tag: Option<String>,
}

impl Faulty {
    fn from_env() -> Result<Faulty, String> {
        let shard = mp_sdk::env().shard;
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        // A knob limited to one shard is off on every other shard.
        let on_this_shard = |name: &str| -> Result<bool, String> {
            match var(name) {
                None => Ok(true),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map(|s| s == shard)
                    .map_err(|_| format!("{name}={v:?} is not a shard number")),
            }
        };
        let mut faulty = Faulty::default();
        if let Some(v) = var("MP_DELAY_MS") {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("MP_DELAY_MS={v:?} is not a number of milliseconds"))?;
            if on_this_shard("MP_DELAY_SHARD")? {
                faulty.delay = Some(Duration::from_millis(ms));
            }
        }
        faulty.delay_file = var("MP_DELAY_FILE").map(Into::into);
        faulty.tag = var("MP_TAG");
        if let Some(v) = var("MP_FAIL_CODE") {
            let code = parse_code(&v).ok_or_else(|| {
                format!("MP_FAIL_CODE={v:?} is not a gRPC status code (1-16 or a name such as UNAVAILABLE)")
            })?;
            let message = var("MP_FAIL_MESSAGE").unwrap_or_else(|| "injected failure".into());
            if on_this_shard("MP_FAIL_SHARD")? {
                faulty.fail = Some((code, message));
            }
        }
        Ok(faulty)
    }
}

impl Handler for Faulty {
    async fn handle(&self, request: Request) -> mp_sdk::Result<Reply> {
        if let Some(delay) = self.delay {
            // Looked at per call: the test creates or removes it at run time.
            let on = self.delay_file.as_ref().is_none_or(|f| f.exists());
            if on {
                tokio::time::sleep(delay).await;
            }
        }
        if let Some((code, message)) = &self.fail {
            return Err(Error::new(*code, message.clone()));
        }
        let env = mp_sdk::env();
        let body = request.body.as_ref().map(|b| b.to_json()).transpose()?;
        let mut reply = json!({
            "request": body.unwrap_or_default(),
            "server": format!("{}:{}", env.hostname, env.port.unwrap_or_default()),
        });
        if let Some(tag) = &self.tag {
            reply["tag"] = json!(tag);
        }
        mp_sdk::reply_json(&reply)
    }
}

/// A status code from its number or its name, in any case, with or without
/// underscores: `14`, `UNAVAILABLE`, `Unavailable`, `invalid_argument`.
fn parse_code(s: &str) -> Option<Code> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=16).contains(&n).then(|| Code::from_i32(n));
    }
    let wanted = s.replace('_', "").to_ascii_lowercase();
    (1..=16)
        .map(Code::from_i32)
        .find(|c| format!("{c:?}").to_ascii_lowercase() == wanted)
}

#[tokio::main]
async fn main() -> Result<(), mp_sdk::ServeError> {
    mp_sdk::init_tracing();
    let faulty = match Faulty::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("faulty: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(?faulty.delay, ?faulty.delay_file, ?faulty.fail, "faults to inject");
    mp_sdk::serve(faulty).await
}
