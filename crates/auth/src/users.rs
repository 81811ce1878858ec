//! Rows of `auth.users` and their GoTrue JSON form.

use serde_json::{Value as Json, json};
use store::{Conn, Row, Value};

use crate::error::Result;
use crate::sql::render;

/// One user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub aud: String,
    pub role: String,
    pub email: Option<String>,
    pub encrypted_password: Option<String>,
    pub email_confirmed_at: Option<String>,
    pub confirmation_sent_at: Option<String>,
    pub recovery_sent_at: Option<String>,
    pub last_sign_in_at: Option<String>,
    pub app_metadata: Json,
    pub user_metadata: Json,
    pub is_anonymous: bool,
    pub banned_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) const COLUMNS: &str = "id::text, aud, role, email, encrypted_password, auth.vb_ts(email_confirmed_at), \
    auth.vb_ts(confirmation_sent_at), auth.vb_ts(recovery_sent_at), auth.vb_ts(last_sign_in_at), \
    raw_app_meta_data::text, raw_user_meta_data::text, is_anonymous, auth.vb_ts(banned_until), \
    auth.vb_ts(created_at), auth.vb_ts(updated_at)";

impl User {
    fn from_row(r: &Row) -> Result<Self> {
        let meta = |i| -> Result<Json> { Ok(serde_json::from_str(&r.text(i)?).unwrap_or_else(|_| json!({}))) };
        Ok(Self {
            id: r.text(0)?,
            aud: r.text(1)?,
            role: r.text(2)?,
            email: r.opt_text(3)?,
            encrypted_password: r.opt_text(4)?,
            email_confirmed_at: r.opt_text(5)?,
            confirmation_sent_at: r.opt_text(6)?,
            recovery_sent_at: r.opt_text(7)?,
            last_sign_in_at: r.opt_text(8)?,
            app_metadata: meta(9)?,
            user_metadata: meta(10)?,
            is_anonymous: r.int(11)? != 0,
            banned_until: r.opt_text(12)?,
            created_at: r.text(13)?,
            updated_at: r.text(14)?,
        })
    }

    /// The user as GoTrue renders it.
    pub fn to_json(&self) -> Json {
        let mut o = json!({
            "id": self.id,
            "aud": self.aud,
            "role": self.role,
            "email": self.email.clone().unwrap_or_default(),
            "phone": "",
            "app_metadata": self.app_metadata,
            "user_metadata": self.user_metadata,
            "identities": self.identities(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "is_anonymous": self.is_anonymous,
        });
        if let Some(m) = o.as_object_mut() {
            let mut opt = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), json!(v));
                }
            };
            opt("email_confirmed_at", &self.email_confirmed_at);
            opt("confirmed_at", &self.email_confirmed_at);
            opt("confirmation_sent_at", &self.confirmation_sent_at);
            opt("recovery_sent_at", &self.recovery_sent_at);
            opt("last_sign_in_at", &self.last_sign_in_at);
            opt("banned_until", &self.banned_until);
        }
        o
    }

    /// The email identity GoTrue lists for an email user (none for anonymous users).
    fn identities(&self) -> Json {
        let Some(email) = &self.email else { return json!([]) };
        json!([{
            "identity_id": self.id,
            "id": self.id,
            "user_id": self.id,
            "identity_data": {
                "email": email,
                "email_verified": self.email_confirmed_at.is_some(),
                "phone_verified": false,
                "sub": self.id,
            },
            "provider": "email",
            "last_sign_in_at": self.last_sign_in_at.clone().unwrap_or_else(|| self.created_at.clone()),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "email": email,
        }])
    }
}

/// Loads users by a condition on `auth.users` (PostgreSQL form, `$N` parameters).
pub(crate) fn select(c: &mut dyn Conn, condition: &str, params: &[Value]) -> Result<Vec<User>> {
    let q = format!("SELECT {COLUMNS} FROM auth.users WHERE {condition}");
    c.query(&render(c.dialect(), &q), params)?.iter().map(User::from_row).collect()
}

pub(crate) fn by_id(c: &mut dyn Conn, id: &str) -> Result<Option<User>> {
    if !is_uuid(id) {
        return Ok(None);
    }
    Ok(select(c, "id = $1::text::uuid", &[id.into()])?.into_iter().next())
}

pub(crate) fn by_email(c: &mut dyn Conn, email: &str) -> Result<Option<User>> {
    Ok(select(c, "lower(email) = lower($1::text)", &[email.into()])?.into_iter().next())
}

/// Runs a statement written in PostgreSQL form.
pub(crate) fn exec(c: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<u64> {
    let q = render(c.dialect(), sql).into_owned();
    Ok(c.execute(&q, params)?)
}

/// Runs a query written in PostgreSQL form.
pub(crate) fn query(c: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let q = render(c.dialect(), sql).into_owned();
    Ok(c.query(&q, params)?)
}

/// Whether `s` is a UUID in its canonical text form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    use rand::{RngCore as _, SeedableRng as _};
    let mut b = [0u8; 16];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = new_uuid();
        assert!(is_uuid(&u), "{u}");
        assert_eq!(&u[14..15], "4");
        assert!(!is_uuid("not-a-uuid"));
        assert!(!is_uuid("00000000-0000-0000-0000-00000000000g"));
    }
}
