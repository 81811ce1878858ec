//! Outgoing mail: a small SMTP client (RFC 5321: EHLO, MAIL, RCPT, DATA, QUIT; plain TCP, no AUTH or
//! STARTTLS: point it at a local relay) and the message the auth service sends.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Where mail goes: an SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `host:port` of the relay.
    pub addr: String,
    /// The envelope and header sender.
    pub from: String,
}

impl SmtpConfig {
    /// Parses `smtp://host[:port]` (port 25 by default).
    pub fn from_url(url: &str, from: &str) -> Result<Self, MailError> {
        let rest = url.strip_prefix("smtp://").ok_or(MailError::BadUrl)?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains(['/', '@', '?', '#']) {
            return Err(MailError::BadUrl);
        }
        let addr = if host_port.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host_port.to_owned()
        } else {
            format!("{host_port}:25")
        };
        if !plain_address(from) {
            return Err(MailError::BadAddress);
        }
        Ok(Self { addr, from: from.to_owned() })
    }
}

/// One message.
#[derive(Debug, Clone)]
pub struct Message {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// What can go wrong sending mail.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The SMTP URL is not `smtp://host[:port]`.
    #[error("expected smtp://host[:port]")]
    BadUrl,
    /// An address has characters that cannot go in an SMTP command or header.
    #[error("invalid mail address")]
    BadAddress,
    /// The relay could not be reached or the connection broke.
    #[error("smtp connection: {0}")]
    Io(#[from] std::io::Error),
    /// The relay answered with an unexpected reply.
    #[error("smtp server replied {0}")]
    Rejected(String),
    /// The exchange took longer than the timeout.
    #[error("smtp timed out")]
    Timeout,
}

/// An address safe to put into `MAIL FROM:<…>`, `RCPT TO:<…>` and a header.
fn plain_address(a: &str) -> bool {
    !a.is_empty() && a.len() <= 254 && a.contains('@') && !a.chars().any(|c| c.is_control() || "<> ,;\"".contains(c))
}

/// Sends `message` through the relay.
pub async fn send(config: &SmtpConfig, message: &Message, message_id: &str, date: &str) -> Result<(), MailError> {
    if !plain_address(&message.to) {
        return Err(MailError::BadAddress);
    }
    tokio::time::timeout(Duration::from_secs(15), exchange(config, message, message_id, date))
        .await
        .map_err(|_| MailError::Timeout)?
}

async fn exchange(config: &SmtpConfig, message: &Message, message_id: &str, date: &str) -> Result<(), MailError> {
    let stream = TcpStream::connect(&config.addr).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    expect(&mut read, 220).await?;
    let domain = config.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    command(&mut write, &mut read, &format!("EHLO {domain}\r\n"), 250).await?;
    command(&mut write, &mut read, &format!("MAIL FROM:<{}>\r\n", config.from), 250).await?;
    command(&mut write, &mut read, &format!("RCPT TO:<{}>\r\n", message.to), 250).await?;
    command(&mut write, &mut read, "DATA\r\n", 354).await?;
    let subject: String = message.subject.chars().filter(|c| !c.is_control()).collect();
    let mut data = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{message_id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        config.from, message.to
    );
    for line in message.body.lines() {
        // Dot-stuffing (RFC 5321 4.5.2).
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    command(&mut write, &mut read, &data, 250).await?;
    command(&mut write, &mut read, "QUIT\r\n", 221).await?;
    Ok(())
}

async fn command(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    text: &str,
    want: u16,
) -> Result<(), MailError> {
    write.write_all(text.as_bytes()).await?;
    write.flush().await?;
    expect(read, want).await
}

/// Reads one (possibly multi-line) reply and checks its code (any 2xx where 250 is asked for).
async fn expect(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, want: u16) -> Result<(), MailError> {
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Err(MailError::Rejected("connection closed".into()));
        }
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| MailError::Rejected(line.clone()))?;
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        let ok = if want == 250 { (200..300).contains(&code) } else { code == want };
        return if ok { Ok(()) } else { Err(MailError::Rejected(line.trim_end().to_owned())) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_addresses() {
        assert_eq!(
            SmtpConfig::from_url("smtp://127.0.0.1:2525", "a@b.c").map(|c| c.addr).ok(),
            Some("127.0.0.1:2525".into())
        );
        assert_eq!(
            SmtpConfig::from_url("smtp://mail.local", "a@b.c").map(|c| c.addr).ok(),
            Some("mail.local:25".into())
        );
        assert!(SmtpConfig::from_url("http://x", "a@b.c").is_err());
        assert!(SmtpConfig::from_url("smtp://u:p@x", "a@b.c").is_err());
        assert!(!plain_address("a@b.c>\r\nRCPT TO:<x@y"));
    }
}
