//! `vibebase demo`: one prompt to a deployed full-stack app, from nothing. It creates an env, turns its
//! sign-up confirmation mail off (a fresh platform has no mail server), starts an agent session on the
//! built-in replay model and sends the demo prompt, then follows the run (reconnecting with
//! `Last-Event-ID` across a restart of the server) and prints the site's URL.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::json;

use super::session::{EventStream, Printer, Style, run_end};
use super::{Client, Connection, Failure, Reply, progress, s};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The new env's id (default: `demo-` and a random suffix).
    #[arg(long)]
    env: Option<String>,
    /// The session's id (default: generated).
    #[arg(long)]
    session: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

pub(super) async fn run(args: DemoArgs) -> Result<Option<ExitCode>, Failure> {
    let admin = Client::new(args.conn.clone())?;
    let env_id = args.env.unwrap_or_else(|| format!("demo-{}", random_suffix()));
    let Reply::Json(env) = admin.call(Method::POST, "/v1/envs", Some(json!({"id": env_id}))).await? else {
        return Err(Failure::new(1, "the server did not describe the new env"));
    };
    let secret = s(&env["keys"]["secret"]).to_owned();
    let site = s(&env["urls"]["site"]).to_owned();
    progress(&format!("env {env_id} created; its site will be {site}"));
    // The env's own key from here on, as an app builder would use it.
    let c = Client::new(Connection { key: Some(secret.clone()), ..args.conn })?;
    let settings = json!({"email_confirmation": false});
    c.call(Method::PUT, &format!("/v1/envs/{env_id}/auth/settings"), Some(settings)).await?;
    let body = json!({"id": args.session, "title": "demo", "model": agent::demo::MODEL});
    let Reply::Json(session) = c.call(Method::POST, &format!("/v1/envs/{env_id}/sessions"), Some(body)).await? else {
        return Err(Failure::new(1, "the server did not describe the new session"));
    };
    let id = s(&session["id"]).to_owned();
    progress(&format!("session {id}: {}", agent::demo::PROMPT));
    let base = format!("/v1/envs/{env_id}/sessions/{id}");
    let message = json!({"content": agent::demo::PROMPT});
    let Reply::Json(run) = c.call(Method::POST, &format!("{base}/messages"), Some(message)).await? else {
        return Err(Failure::new(1, "the server did not describe the run it started"));
    };
    let after = run["after_seq"].as_i64().ok_or_else(|| Failure::new(1, "the run has no after_seq"))?;
    let mut stream = EventStream::new(&c, format!("{base}/events"), after, true);
    let mut printer = Printer::new(c.conn.json, Style::Answer);
    while let Some((_, event)) = stream.next().await? {
        printer.print(&event);
        if let Some(end) = run_end(&event) {
            end?;
            let summary = json!({"env": env_id, "session": id, "site": site, "secret_key": secret});
            if c.conn.json {
                println!("{summary}");
            } else {
                println!("\nYour app is live at {site}");
                println!("env:     {env_id} (its secret key, shown once: {secret})");
                println!("session: {id} (go on with `vibebase session send --env {env_id} {id} '…'`)");
            }
            return Ok(None);
        }
    }
    Err(Failure::new(7, "the event stream ended before the run did"))
}

/// Eight lowercase letters and digits, from the clock and the process id (an id in use is refused by
/// the server, never reused).
fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut n = nanos ^ (u128::from(std::process::id()) << 64);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u128) as usize];
            n /= ALPHABET.len() as u128;
            char::from(c)
        })
        .collect()
}
