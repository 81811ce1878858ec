//! Cron schedules with several platform instances on one store: each due time fires exactly once.

use std::time::Duration;

use protocol::EnvId;
use protocol::functions::SetScheduleRequest;

use crate::harness::Harness;

fn archive(files: &[(&str, &str)]) -> bytes::Bytes {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = std::process::Command::new("tar").arg("-C").arg(dir.path()).args(["-czf", "-", "."]).output().unwrap();
    assert!(out.status.success());
    out.stdout.into()
}

#[tokio::test]
async fn a_schedule_fires_once_per_due_time_across_instances() {
    let h = Harness::new().await;
    let Ok(sandboxes) = h.sandboxes.clone() else {
        panic!("functions need sandboxes: {:?}", h.sandboxes.err());
    };
    h.create_env("cron-env").await;
    let env = EnvId::parse("cron-env").unwrap();
    let actor = platform::Actor { name: "test".to_owned(), request_id: String::new() };
    // Two more instances on the same store (the router's own registry makes three).
    let config = functions::FunctionsConfig::default();
    let a = functions::Functions::new(h.platform.clone(), sandboxes.clone(), config.clone());
    let b = functions::Functions::new(h.platform.clone(), sandboxes.clone(), config);
    let code = "exports.main = async (event, context) => ({ trigger: context.trigger, at: event.scheduled_at });";
    a.deploy(&actor, &env, "tick", archive(&[("index.js", code)]), functions::DeployOptions::default()).await.unwrap();
    let bad = a.set_schedule(&actor, &env, "tick", SetScheduleRequest { schedule: Some("61 * * * *".into()) }).await;
    assert!(matches!(bad, Err(functions::FunctionError::Invalid { code: "invalid_schedule", .. })), "{bad:?}");
    let rec =
        a.set_schedule(&actor, &env, "tick", SetScheduleRequest { schedule: Some("* * * * *".into()) }).await.unwrap();
    assert_eq!(rec.schedule.as_deref(), Some("* * * * *"));
    assert_eq!(a.fire_due().await + b.fire_due().await, 0, "not due yet");
    let scheduled = |f: functions::Functions, env: EnvId| async move {
        let logs = f.logs(&env, "tick", 0, i64::MAX, 100).await.unwrap();
        logs.into_iter().filter(|l| l.trigger == "schedule").collect::<Vec<_>>()
    };
    for round in 1..=2 {
        h.clock.advance(Duration::from_secs(61));
        let (x, y) = tokio::join!(a.fire_due(), b.fire_due());
        assert!(x + y <= 1, "round {round}: fired {x} + {y}");
        // Wait for the invocation (whichever instance claimed it) to be logged.
        let mut seen = Vec::new();
        for _ in 0..300 {
            seen = scheduled(a.clone(), env.clone()).await;
            if seen.len() >= round {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A little longer: a second firing would show up now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = if seen.len() == round { scheduled(a.clone(), env.clone()).await } else { seen };
        assert_eq!(seen.len(), round, "round {round}: {seen:?}");
        assert!(seen.iter().all(|l| l.outcome == protocol::functions::InvocationOutcome::Ok), "{seen:?}");
    }
    a.set_schedule(&actor, &env, "tick", SetScheduleRequest { schedule: None }).await.unwrap();
    h.clock.advance(Duration::from_secs(120));
    assert_eq!(a.fire_due().await + b.fire_due().await, 0, "a removed schedule never fires");
    sandboxes.kill_all().await;
}
