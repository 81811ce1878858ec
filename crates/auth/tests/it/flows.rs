use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::flows::{
    AdminUser, LogoutScope, PasswordGrant, RecoverRequest, RefreshGrant, SignupOutcome, SignupRequest, UserUpdate,
    VerifyRequest,
};
use auth::{Auth, AuthConfig, AuthError, Client, EnvStore, HashCost};
use platform::{Clock, Config, OsEntropy, Platform};
use protocol::EnvId;
use protocol::auth::AuthSettingsPatch;
use serde_json::json;
use store::{Blobs, Db};
use time::OffsetDateTime;

struct TestClock(Mutex<OffsetDateTime>);

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

/// The platform of one test and its env's database: on SQLite in a temp dir, or (with
/// `VIBEBASE_TEST_DATABASE_URL`) on PostgreSQL in a schema of its own, where the env gets a database of
/// its own through appdb, dropped when the test ends.
struct EnvDb {
    db: EnvStore,
    dbs: appdb::AppDbs,
    env: EnvId,
}

impl EnvDb {
    async fn drop_database(self) {
        drop(self.db);
        self.dbs.drop_env(&self.env).await.unwrap();
    }
}

fn unique(prefix: &str) -> String {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let tail: String = (0..12).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect();
    format!("{prefix}{tail}")
}

async fn setup() -> (Auth, EnvDb, EnvId, Arc<TestClock>) {
    let dir = tempfile::tempdir().unwrap();
    let meta = match std::env::var("VIBEBASE_TEST_DATABASE_URL") {
        Ok(url) => {
            let schema = unique("auth_it_");
            let admin = Db::connect_postgres(&url).await.unwrap();
            let s = schema.clone();
            admin.tx(move |c| c.batch(&format!("CREATE SCHEMA {s}"))).await.unwrap();
            let sep = if url.contains('?') { '&' } else { '?' };
            Db::connect_postgres(&format!("{url}{sep}options=-csearch_path%3D{schema}")).await.unwrap()
        }
        Err(_) => Db::open_sqlite(&dir.path().join("platform.db")).unwrap(),
    };
    store::schema::migrate(&meta).await.unwrap();
    let blobs = Blobs::local(&dir.path().join("objects")).unwrap();
    let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
    let config = Config::new(dir.path().to_path_buf(), "http://127.0.0.1:8787".into());
    std::mem::forget(dir);
    let platform =
        Platform::new(config, meta, blobs, "test-admin-key-0123456789abcdef", clock.clone(), Arc::new(OsEntropy));
    let dbs = appdb::AppDbs::new(platform.clone());
    dbs.register_schema(auth::schema_hook());
    let auth = Auth::new(platform, AuthConfig { smtp: None, hash_cost: HashCost { memory_kib: 256, iterations: 1 } });
    let env = EnvId::parse(&unique("shop")).unwrap();
    let env_db = EnvDb { db: EnvStore::new(dbs.clone(), env.clone()), dbs, env: env.clone() };
    (auth, env_db, env, clock)
}

fn client() -> Client {
    Client { ip: "127.0.0.1".into() }
}

fn session(outcome: SignupOutcome) -> serde_json::Value {
    match outcome {
        SignupOutcome::Session(s) => s,
        SignupOutcome::User(u) => panic!("expected a session, got {u}"),
    }
}

#[tokio::test]
async fn flows_on_the_env_database() {
    let (auth, env_db, env, clock) = setup().await;
    let db = &env_db.db;
    let req = |email: &str| SignupRequest {
        email: Some(email.into()),
        password: Some("password-123".into()),
        data: Some(json!({"n": 1})),
        ..Default::default()
    };

    let s = session(auth.signup(&env, db, req("ann@example.com"), &client()).await.unwrap());
    let access = s["access_token"].as_str().unwrap().to_owned();
    let claims = auth.verify_access_token(&env, &access).await.unwrap().claims;
    assert_eq!(claims.sub, s["user"]["id"].as_str().unwrap());
    assert!(matches!(
        auth.signup(&env, db, req("ANN@example.com"), &client()).await,
        Err(AuthError::UserAlreadyExists)
    ));
    let user = auth.get_user(&env, db, Some(&access)).await.unwrap();
    assert_eq!(user["user_metadata"], json!({"n": 1}));
    assert_eq!(user["created_at"].as_str().unwrap().len(), "2026-01-01T00:00:00.000000Z".len(), "{user}");

    // Password grant and refresh rotation with reuse detection.
    let p = auth
        .password_grant(
            &env,
            db,
            PasswordGrant { email: Some("ann@example.com".into()), password: Some("password-123".into()) },
            &client(),
        )
        .await
        .unwrap();
    let first = p["refresh_token"].as_str().unwrap().to_owned();
    let r = auth.refresh_grant(&env, db, RefreshGrant { refresh_token: Some(first.clone()) }, &client()).await.unwrap();
    let second = r["refresh_token"].as_str().unwrap().to_owned();
    clock.advance(Duration::from_secs(3));
    let again =
        auth.refresh_grant(&env, db, RefreshGrant { refresh_token: Some(first.clone()) }, &client()).await.unwrap();
    assert_eq!(again["refresh_token"], second.as_str());
    clock.advance(Duration::from_secs(10));
    let reuse = auth.refresh_grant(&env, db, RefreshGrant { refresh_token: Some(first) }, &client()).await;
    assert!(matches!(reuse, Err(AuthError::RefreshTokenAlreadyUsed)), "{reuse:?}");
    let after = auth.refresh_grant(&env, db, RefreshGrant { refresh_token: Some(second) }, &client()).await;
    assert!(matches!(after, Err(AuthError::RefreshTokenAlreadyUsed)), "{after:?}");

    // Update, logout.
    let u = auth
        .update_user(
            &env,
            db,
            Some(&access),
            UserUpdate { email: None, password: Some("password-456".into()), data: Some(json!({"n": null, "m": 2})) },
        )
        .await
        .unwrap();
    assert_eq!(u["user_metadata"], json!({"m": 2}));
    auth.logout(&env, db, Some(&access), LogoutScope::Global).await.unwrap();
    assert!(matches!(auth.get_user(&env, db, Some(&access)).await, Err(AuthError::SessionNotFound)));

    // Recovery through the outbox.
    auth.recover(&env, db, RecoverRequest { email: Some("ann@example.com".into()), ..Default::default() }, &client())
        .await
        .unwrap();
    let mail = auth.outbox(db, 10).await.unwrap().remove(0);
    let code = mail.body.rsplit("code: ").next().unwrap().trim().to_owned();
    let verify = VerifyRequest {
        kind: Some("recovery".into()),
        token: Some(code),
        email: Some("ann@example.com".into()),
        ..Default::default()
    };
    let (v, _) = auth.verify(&env, db, &verify, false, &client()).await.unwrap();
    let auth::flows::Verified::Session(v) = v else { panic!("a session") };
    assert!(v["access_token"].is_string());

    // Anonymous sign-in, once enabled.
    let actor = platform::Actor { name: "test".into(), request_id: "r1".into() };
    auth.update_settings(&actor, &env, AuthSettingsPatch { anonymous_sign_ins: Some(true), ..Default::default() })
        .await
        .unwrap();
    let anon = session(auth.signup(&env, db, SignupRequest::default(), &client()).await.unwrap());
    assert_eq!(anon["user"]["is_anonymous"], true);

    // Admin: create, list, ban, delete.
    let created = auth
        .admin_create(
            &env,
            db,
            AdminUser {
                email: Some("bob@example.com".into()),
                password: Some("password-123".into()),
                email_confirm: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let bob = created["id"].as_str().unwrap().to_owned();
    let (list, total) = auth.admin_list(db, 1, 10).await.unwrap();
    assert_eq!((list.len(), total), (3, 3));
    let banned = auth
        .admin_update(&env, db, &bob, AdminUser { ban_duration: Some("1h".into()), ..Default::default() })
        .await
        .unwrap();
    assert!(banned["banned_until"].is_string());
    let grant = PasswordGrant { email: Some("bob@example.com".into()), password: Some("password-123".into()) };
    assert!(matches!(auth.password_grant(&env, db, grant, &client()).await, Err(AuthError::UserBanned)));

    // App tables can reference auth.users; deleting a user cascades.
    let fk_table = match db.dialect() {
        store::Dialect::Postgres => {
            "CREATE TABLE public.todos (id bigserial PRIMARY KEY, user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE, title text)"
        }
        store::Dialect::Sqlite => {
            "CREATE TABLE todos (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL REFERENCES \"auth.users\" (id) ON DELETE CASCADE, title TEXT)"
        }
    };
    let cast = if db.dialect() == store::Dialect::Postgres { "$1::text::uuid" } else { "$1" };
    let (b, sql) = (bob.clone(), format!("INSERT INTO todos (user_id, title) VALUES ({cast}, 'x')"));
    db.tx(move |c| {
        c.batch(fk_table)?;
        Ok(c.execute(&sql, &[b.as_str().into()])?)
    })
    .await
    .unwrap();
    auth.admin_delete(&env, db, &bob).await.unwrap();
    let left = db
        .tx(|c| Ok(c.query_opt("SELECT CAST(COUNT(*) AS BIGINT) FROM todos", &[])?))
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(left, 0);
    assert!(matches!(auth.admin_get(db, &bob).await, Err(AuthError::UserNotFound)));

    env_db.drop_database().await;
}

/// Tabs refreshing the same token at once (on PostgreSQL, really in parallel): one rotates it, the
/// others get its successor; nobody is taken for a replay.
#[tokio::test]
async fn concurrent_refreshes_of_one_token_all_succeed() {
    let (auth, env_db, env, clock) = setup().await;
    let db = env_db.db.clone();
    let req = SignupRequest {
        email: Some("ann@example.com".into()),
        password: Some("password-123".into()),
        ..Default::default()
    };
    let s = session(auth.signup(&env, &db, req, &client()).await.unwrap());
    let token = s["refresh_token"].as_str().unwrap().to_owned();
    clock.advance(Duration::from_secs(60));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (auth, db, env, token) = (auth.clone(), db.clone(), env.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            auth.refresh_grant(&env, &db, RefreshGrant { refresh_token: Some(token) }, &client()).await
        }));
    }
    let mut successors = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        successors.insert(r["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(successors.len(), 1, "{successors:?}");
    let next = successors.into_iter().next().unwrap();
    auth.refresh_grant(&env, &db, RefreshGrant { refresh_token: Some(next) }, &client()).await.unwrap();
    drop(db);
    env_db.drop_database().await;
}
